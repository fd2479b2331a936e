"""The `dvc plots` templates (.dvc/plots/by_split_*.json): the scatter's axis labels stay apart.

With vega-lite's defaults the scatter of predicted against true scores drew a tick every 0.05 over
[0.40, 1.00] at 360 px, and the flush end labels ran into their neighbours ("0.400.45",
"0.951.00" in Chromium). The template asks for about 6 ticks (a 0.1 step over scores in [0, 1]),
two decimals, and drops any label that still overlaps ("greedy"); DVC must pass these on into
the spec it renders.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

TEMPLATES = REPO / ".dvc" / "plots"
SCATTER_AXIS = {"tickCount": 6, "format": ".2f", "labelOverlap": "greedy"}


def _template(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


def test_scatter_axes_have_few_ticks_and_drop_overlapping_labels() -> None:
    spec = _template("by_split_scatter")
    for channel in ("x", "y"):
        enc = spec["encoding"][channel]
        assert enc["axis"] == SCATTER_AXIS, channel
        assert enc["scale"] == {"zero": False}, channel   # the scores' range, not [0, max]
    # 6 ticks over the demo's [0.40, 1.00] are 0.1 apart: 6 intervals, each wider than a "0.40"
    # label (~22 px at vega's 10 px font) with room to spare
    intervals = round((1.00 - 0.40) / 0.1)
    assert spec["width"] / intervals >= 50 and spec["height"] == spec["width"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_dvc_renders_the_scatter_with_the_templates_axes() -> None:
    """`dvc plots show --json` in this checkout (the committed metrics/predictions.csv)."""
    p = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json",
                        "metrics/predictions.csv"], cwd=REPO, capture_output=True, text=True,
                       env=subprocess_env(DVC_NO_ANALYTICS="1"), timeout=300)
    if p.returncode != 0 and "not a git repository" in p.stderr + p.stdout:
        pytest.skip("not a git checkout: dvc cannot read the plots")
    assert p.returncode == 0, p.stderr
    (chart,) = json.loads(p.stdout)["data"]["metrics/predictions.csv"]
    enc = chart["content"]["encoding"]
    assert enc["x"]["axis"] == enc["y"]["axis"] == SCATTER_AXIS
    assert (enc["x"]["field"], enc["y"]["field"]) == ("gt", "pred")
