"""The paper's loss figures: Fig. 3 (a)/(b) (EFL vs x_t without / with the weighting factor) and Fig. 5 (Eq. 6).

x_t = (2y - 1) x and p_t = sigmoid(x_t); as in the paper, alpha_t is ignored and gamma_b = 2 by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from efldet.errors import UserInputError


def efl_curve(x_t: np.ndarray, gamma_j: float, gamma_b: float, weighting: bool) -> np.ndarray:
    """Per-sample EFL value -(w) (1 - p_t)^gamma_j log(p_t) with w = gamma_j / gamma_b if `weighting` else 1."""
    log_pt = -np.logaddexp(0.0, -x_t)                       # log sigmoid(x_t)
    one_minus_pt = np.exp(-np.logaddexp(0.0, x_t))          # sigmoid(-x_t)
    weight = gamma_j / gamma_b if weighting else 1.0
    return -weight * one_minus_pt**gamma_j * log_pt


def efl_derivative(x_t: np.ndarray, gamma_j: float, gamma_b: float) -> np.ndarray:
    """Eq. 6 for y = 1 (so d/dx = d/dx_t): (gamma_j / gamma_b) (1 - p_t)^gamma_j (gamma_j p_t log p_t + p_t - 1)."""
    log_pt = -np.logaddexp(0.0, -x_t)
    p_t = np.exp(log_pt)
    one_minus_pt = np.exp(-np.logaddexp(0.0, x_t))
    return gamma_j / gamma_b * one_minus_pt**gamma_j * (gamma_j * p_t * log_pt + p_t - 1.0)


def plot_loss_figures(out_dir: str | Path, gamma_b: float = 2.0,
                      gammas: Sequence[float] = (2.0, 4.0, 6.0, 8.0, 10.0)) -> list[Path]:
    """Write fig3a_efl_without_weighting.png, fig3b_efl_with_weighting.png and fig5_efl_derivative.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not gamma_b > 0:
        raise UserInputError(f"--gamma-b (gamma_b) must be > 0, got {gamma_b}")
    if not gammas or any(g < 0 for g in gammas):
        raise UserInputError(f"--gammas must be a non-empty list of focusing factors >= 0, got {list(gammas)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_t = np.linspace(-6.0, 6.0, 601)
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(gammas)))
    figures = [
        ("fig3a_efl_without_weighting.png", "EFL without the weighting factor (Fig. 3a)", "loss",
         lambda g: efl_curve(x_t, g, gamma_b, weighting=False)),
        ("fig3b_efl_with_weighting.png", "EFL with the weighting factor (Fig. 3b)", "loss",
         lambda g: efl_curve(x_t, g, gamma_b, weighting=True)),
        ("fig5_efl_derivative.png", "Derivative of EFL, Eq. 6 (Fig. 5)", "dEFL / dx",
         lambda g: efl_derivative(x_t, g, gamma_b)),
    ]
    paths = []
    for filename, title, ylabel, curve in figures:
        fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
        for gamma_j, color in zip(gammas, colors, strict=True):
            ax.plot(x_t, curve(gamma_j), color=color, label=f"gamma_j = {gamma_j:g}")
        ax.set_xlabel("x_t = (2y - 1) x")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}, gamma_b = {gamma_b:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
