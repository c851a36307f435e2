"""`efldet plot-loss` and the curves behind it (Fig. 3 and Fig. 5)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from efldet.cli import main
from efldet.losses.plots import efl_curve, efl_derivative


def test_plot_loss_writes_the_three_figures(tmp_path):
    assert main(["plot-loss", "--out", str(tmp_path / "figs"), "--gammas", "2", "6"]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["fig3a_efl_without_weighting.png", "fig3b_efl_with_weighting.png", "fig5_efl_derivative.png"]
    for name in names:
        with Image.open(tmp_path / "figs" / name) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_plot_loss_rejects_bad_gamma_b_with_exit_code_2(tmp_path, capsys):
    assert main(["plot-loss", "--out", str(tmp_path), "--gamma-b", "0"]) == 2
    assert "--gamma-b" in capsys.readouterr().err


def test_curves_match_closed_forms():
    x_t = np.array([0.0])
    # p_t = 0.5: loss = (gamma_j / gamma_b) 0.5^gamma_j log 2; derivative = (gamma_j / gamma_b) 0.5^gamma_j (-gamma_j
    # 0.5 log 2 - 0.5).
    assert efl_curve(x_t, 6.0, 2.0, weighting=True)[0] == pytest.approx(3 * 0.5**6 * math.log(2))
    assert efl_curve(x_t, 6.0, 2.0, weighting=False)[0] == pytest.approx(0.5**6 * math.log(2))
    assert efl_derivative(x_t, 6.0, 2.0)[0] == pytest.approx(3 * 0.5**6 * (-6 * 0.5 * math.log(2) - 0.5))
    # The derivative is the slope of the weighted curve.
    x = np.linspace(-4, 4, 9)
    numeric = (efl_curve(x + 1e-5, 4.0, 2.0, True) - efl_curve(x - 1e-5, 4.0, 2.0, True)) / 2e-5
    np.testing.assert_allclose(efl_derivative(x, 4.0, 2.0), numeric, rtol=1e-5, atol=1e-8)


def test_python_dash_m_entry_point_shows_help():
    out = subprocess.run([sys.executable, "-m", "efldet", "--help"], capture_output=True, text=True, check=True)
    assert "plot-loss" in out.stdout
