"""`efldet demo --quick`: the whole pipeline (data, two trainings, evaluation, table, plots, predictions)."""

from __future__ import annotations

import json

from PIL import Image

from efldet.cli import main


def test_quick_demo_writes_the_table_and_the_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["focal", "efl"]
    for metrics in results.values():
        assert {"AP", "AP50", "AP75", "APr", "APc", "APf"} <= set(metrics)
        assert all(-1.0 <= value <= 1.0 for value in metrics.values())
    table = (out / "results.md").read_text()
    assert "| focal |" in table and "| efl |" in table
    assert "| focal |" in capsys.readouterr().out
    for name in ("ap_by_group.png", "margins.png", "gradient_ratio.png", "fig3a_efl_without_weighting.png",
                 "fig3b_efl_with_weighting.png", "fig5_efl_derivative.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG", name
    margins = (out / "margins.csv").read_text().splitlines()
    assert margins[0].startswith("category_id") and "margin_efl" in margins[0] and len(margins) == 1 + 8
    assert len(list((out / "predictions").glob("*.png"))) == 6
    assert (out / "efl" / "last.pt").is_file() and (out / "focal" / "eval" / "eval.json").is_file()
