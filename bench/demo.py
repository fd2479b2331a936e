"""The demo's figures in the README, rendered from the committed report of the last `dvc repro`.

`pipeline/evaluate.py` (the `evaluate` stage) writes `metrics/summary.json` (mean ± sd over the
splits) and `metrics/splits/<k>.json` (each split's test metrics, sizes and epochs); `params.yaml`
holds the head's widths. This script measures nothing: it renders, from those files, the demo row
of the README's results table and the Quick start's sentence on the committed run, and writes them
into README.md. `tests/test_readme_numbers.py` checks the README against the same rendering.

    dvc repro && python bench/demo.py       # after a new demo run is committed
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import record  # noqa: E402

SUMMARY = ROOT / "metrics" / "summary.json"
ROW_START = "| demo (`dvc repro`, this repo) |"
# the Quick start's sentence: "... The committed `metrics/` ... test rho X ± Y ..."
SENTENCE = re.compile(r"The committed `metrics/` and `dvc.lock` \(test rho [^)]*\)")


def stat(summary: dict, metric: str) -> tuple[float, float]:
    """(mean, sd) of a test metric over the splits, from summary.json; accepts the flat layout
    ({"rho": {"mean", "sd"}}) and one with the test metrics grouped ({"test": {"rho": ...}})."""
    for where in (summary, summary.get("test", {})):
        v = where.get(metric)
        if isinstance(v, dict) and "mean" in v:
            return float(v["mean"]), float(v.get("sd") or 0.0)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v), float(where.get(f"{metric}_sd", 0.0))
    raise KeyError(f"{SUMMARY.name}: no test {metric!r} mean")


def load(root: Path = ROOT) -> dict:
    """What the rendering needs, from metrics/ (the scores) and params.yaml (what made them:
    the split files keep only what a reader compares)."""
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    splits = sorted((root / "metrics" / "splits").glob("*.json"), key=lambda p: p.stem)
    first = json.loads(splits[0].read_text()) if splits else {}
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    model, data = params.get("model", {}), params.get("data", {})
    n, protocol = data.get("demo", {}).get("n_images"), data.get("protocol", {})
    val, test = protocol.get("val_fraction"), protocol.get("test_fraction")
    sizes = (round(n * (1 - val - test)), round(n * val), first.get("n") or round(n * test)) \
        if None not in (n, val, test) else (None, None, first.get("n"))
    return {"rho": stat(summary, "rho"), "mse": stat(summary, "mse"),
            "n_splits": summary.get("n_splits", len(splits)),
            "weights": params.get("backbone", {}).get("weights", "?"), "arch": "resnet50",
            "sizes": sizes, "epochs": params.get("train", {}).get("epochs"),
            "head": (model.get("feature_dim"), model.get("hidden_dim"), model.get("regressor_dim"))}


def rho_text(d: dict) -> str:
    return f"{d['rho'][0]:.3f} ± {d['rho'][1]:.3f}"


def row(d: dict) -> str:
    """The results table's demo row."""
    sizes = "/".join(str(n) for n in d["sizes"])
    head = "/".join(str(n) for n in d["head"])
    arch = {"resnet50": "ResNet50", "resnet152": "ResNet152"}.get(d["arch"], d["arch"])
    return (f"{ROW_START} `{d['weights']}` {arch} | {d['n_splits']} seeded splits, {sizes} | "
            f"AMNet, {head} head, {d['epochs']} epochs | **{rho_text(d)}** | "
            f"{d['mse'][0]:.4f} ± {d['mse'][1]:.4f} | `metrics/summary.json` |")


def sentence(d: dict) -> str:
    """The Quick start's sentence on the committed run."""
    return f"The committed `metrics/` and `dvc.lock` (test rho {rho_text(d)})"


def render_readme(text: str, d: dict) -> str:
    lines = text.split("\n")
    hits = [i for i, ln in enumerate(lines) if ln.startswith(ROW_START)]
    if len(hits) != 1:
        raise ValueError(f"README: {len(hits)} demo rows (want 1)")
    lines[hits[0]] = row(d)
    text = "\n".join(lines)
    if len(SENTENCE.findall(text)) != 1:
        raise ValueError("README: the Quick start's sentence on the committed run is not there")
    return SENTENCE.sub(lambda _: sentence(d), text)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    d = load()
    text = render_readme(record.README.read_text(), d)
    from amnet.core.atomic import atomic_write_text
    atomic_write_text(record.README, text)
    print(row(d))
    print(sentence(d))


if __name__ == "__main__":
    main()
