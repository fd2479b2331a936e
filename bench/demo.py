"""The demo's figures in the README: its scores, rendered from the committed report of the last
`dvc repro`, and its run time per CPU kind, measured from a fresh clone.

Scores. `pipeline/evaluate.py` (the `evaluate` stage) writes `metrics/summary.json` (mean ± sd over
the splits) and `metrics/splits/<k>.json` (each split's test metrics, sizes and epochs);
`params.yaml` holds the head's widths. From those files this renders the demo row of the README's
results table and the Quick start's sentence on the committed run.

Time. `--time` clones this repository's HEAD into a temporary folder (uncommitted changes are not
in it: the run says so), runs `dvc repro` there with the clone's own amnet (PYTHONPATH) and no DVC
cache, as a newcomer's first run after the set-up command, and records the wall time of the whole
and of each stage, the load average before and after, the precision `auto` chose, the test rho,
the commit and the CPU (bench/record.py) in docs/bench/demo.json, one run per CPU label. Run it
on a quiet machine: the table shows the load. The same clone then measures what attention buys
(issue 22, item 7): the share of split 1's test attention that lands on the target disk, and the
paper's no-attention ablation (`model.use_attention=false`, a second `dvc repro` that retrains
only the heads), whose scores the README's results table shows beside the committed run's
(`--no-ablation` skips it). `--set KEY=VALUE` (dotted params.yaml keys) makes a
reduced run, which goes to another folder (`--results-dir`), never to the committed file.
`--adopt` then copies the clone's `dvc.lock` and `metrics/` (the report DVC keeps in git) into
this checkout: the run of the committed code, so the lock matches HEAD and one run gives both the
time and the committed results (refused with uncommitted changes or `--set`).

The README's `bench:demo` block and params.yaml's `demo time:` comment lines are rendered from
docs/bench/demo.json; `tests/test_readme_numbers.py` checks the README, the block and params.yaml
against the same rendering.

    python bench/demo.py                    # render scores and times from the committed files
    python bench/demo.py --time             # time `dvc repro` of the defaults (minutes), then render
    python bench/demo.py --time --set data.demo.n_images=200 --set train.epochs=2 \
        --results-dir /tmp/demo-check       # a reduced run, to try the script
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import record  # noqa: E402

SUMMARY = ROOT / "metrics" / "summary.json"
ROW_START = "| demo (`dvc repro`, this repo) |"
ABLATION_ROW_START = "| demo, no attention (`-S model.use_attention=false`) |"
ABLATION = "model.use_attention=false"
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
    rho = stat(summary, "rho")
    made_it = [r for r in results().get("runs", []) if r.get("ablation")
               and not r.get("overrides") and abs(r.get("rho", -9) - rho[0]) < 1e-9]
    return {"rho": rho, "mse": stat(summary, "mse"), "ablation_run": (made_it or [None])[-1],
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


def ablation_row(d: dict) -> str:
    """The results table's row of the no-attention ablation, from the run that made the committed
    report (docs/bench/demo.json: the run whose commit and test rho are metrics/'s)."""
    run = d.get("ablation_run")
    if not run:
        return (f"{ABLATION_ROW_START} same | same | AMNet with uniform attention | not measured: "
                "`python bench/demo.py --time --adopt` | | |")
    a = run["ablation"]
    att = run.get("attention_on_target")
    where = (f"; attention's share on the target: {att['attention']:.0%} of the mass on "
             f"{att['cells']:.0%} of the cells" if att else "")
    return (f"{ABLATION_ROW_START} same | same | AMNet with uniform attention | "
            f"**{a['rho'][0]:.3f} ± {a['rho'][1]:.3f}** | "
            f"{a['mse'][0]:.4f} ± {a['mse'][1]:.4f} | "
            f"docs/bench/demo.json ({run['machine']['cpu']}, `{run['commit'][:7]}`{where}) |")


def sentence(d: dict) -> str:
    """The Quick start's sentence on the committed run."""
    return f"The committed `metrics/` and `dvc.lock` (test rho {rho_text(d)})"


def render_readme(text: str, d: dict) -> str:
    lines = text.split("\n")
    hits = [i for i, ln in enumerate(lines) if ln.startswith(ROW_START)]
    if len(hits) != 1:
        raise ValueError(f"README: {len(hits)} demo rows (want 1)")
    lines[hits[0]] = row(d)
    hits = [i for i, ln in enumerate(lines) if ln.startswith(ABLATION_ROW_START)]
    if len(hits) != 1:
        raise ValueError(f"README: {len(hits)} demo ablation rows (want 1)")
    lines[hits[0]] = ablation_row(d)
    text = "\n".join(lines)
    if len(SENTENCE.findall(text)) != 1:
        raise ValueError("README: the Quick start's sentence on the committed run is not there")
    return SENTENCE.sub(lambda _: sentence(d), text)


# ---- the run time: `dvc repro` of the demo from a fresh clone ----------------------------------

NAME = "demo"                              # docs/bench/demo.json, the README's bench:demo block
PARAMS = ROOT / "params.yaml"
PARAMS_LINE = "#   demo time: "           # params.yaml's rendered comment lines start so
STAGE = re.compile(r"Running stage '([^']+)'")


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def set_param(params: dict, assignment: str) -> None:
    """`a.b.c=VALUE` (VALUE read as YAML, as `dvc exp run -S` does) into the nested dict."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.epochs=2")
    *path, last = key.split(".")
    node = params
    for k in path:
        node = node.setdefault(k, {})
    node[last] = yaml.safe_load(value)


def _stage_seconds(proc: subprocess.Popen, t0: float) -> dict[str, float]:
    """Echo `dvc repro`'s output and time each stage, from its "Running stage" line to the next
    (or to the end)."""
    stages: dict[str, float] = {}
    current, start = None, t0
    for line in proc.stdout:
        sys.stdout.write(line)
        m = STAGE.search(line)
        if m:
            now = time.perf_counter()
            if current:
                stages[current] = round(now - start, 1)
            current, start = m.group(1), now
    proc.wait()
    if current:
        stages[current] = round(time.perf_counter() - start, 1)
    return stages


def _outcome(clone: Path, params: dict) -> dict:
    """What the run chose and scored: the trunk's precision (the cache's attributes), the head's
    (a split's metrics) and the test rho (metrics/summary.json)."""
    import h5py
    data = params["data"]
    with h5py.File(clone / "data" / "features" / f"{data['dataset']}.h5", "r") as f:
        trunk = f.attrs.get("precision")
    trunk = trunk.decode() if isinstance(trunk, bytes) else str(trunk)
    split = json.loads((clone / "metrics" / "splits" / f"{data['splits'][0]}.json").read_text())
    summary = json.loads((clone / "metrics" / "summary.json").read_text())
    return {"precision": {"trunk": trunk, "head": split.get("precision")},
            "rho": stat(summary, "rho")[0]}


def attention_on_target(clone: Path, params: dict) -> dict:
    """Where split 1's head looks on its test images: the mean share of the attention (all steps)
    on the grid cells the target disk touches, and those cells' share of the grid (what uniform
    attention would put there). The target of each image: data/demo/objects.csv."""
    import csv

    import numpy as np

    from amnet.cache.reader import FeatureCache
    from amnet.data.listfiles import read_split, split_path
    from amnet.predict.predictor import Predictor
    data = clone / "data" / params["data"]["dataset"]
    k = params["data"]["splits"][0]
    names = [n for n, _ in read_split(split_path(data, "test", k))]
    with open(data / "objects.csv", newline="") as f:
        targets = {r["name"]: r for r in csv.DictReader(f)}
    predictor = Predictor.from_checkpoint(clone / "models" / f"{k}.pt", device="cpu")
    with FeatureCache(clone / "data" / "features" / f"{params['data']['dataset']}.h5") as cache:
        attention = predictor.predict_features(cache.load(names)).attention.mean(1)  # [B, g, g]
    g = attention.shape[-1]
    cell = params["data"]["demo"]["image_size"] / g
    centres = (np.arange(g) + 0.5) * cell
    mass, cells = [], []
    for a, name in zip(attention, names):
        t = targets[name]
        dist = np.hypot(centres[None, :] - float(t["cx"]), centres[:, None] - float(t["cy"]))
        on = dist <= float(t["radius"]) + cell / 2   # [y, x]: cells the disk touches
        mass.append(float(a[on].sum()))
        cells.append(float(on.mean()))
    return {"split": k, "images": len(names), "attention": float(np.mean(mass)),
            "cells": float(np.mean(cells))}


def _repro(clone: Path, env: dict) -> tuple[float, dict[str, float]]:
    """`dvc repro` in the clone: (wall seconds, seconds per stage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=clone, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages = _stage_seconds(proc, t0)
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro failed (exit {proc.returncode}) in {clone}")
    return round(time.perf_counter() - t0, 1), stages


def _ablation(clone: Path, env: dict, params: dict) -> dict:
    """The no-attention ablation of the same clone: `model.use_attention=false`, `dvc repro`
    again (prepare and extract are unchanged, so only the heads retrain); its test scores.
    `params` (the clone's, as the first repro ran them) is left as it was."""
    params = copy.deepcopy(params)
    set_param(params, ABLATION)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds, stages = _repro(clone, env)
    summary = json.loads((clone / "metrics" / "summary.json").read_text())
    return {"set": ABLATION, "rho": list(stat(summary, "rho")), "mse": list(stat(summary, "mse")),
            "rho_per_split": summary.get("rho", {}).get("values"), "seconds": seconds,
            "stages": stages}


def time_demo(overrides: list[str], adopt: bool = False, ablation: bool = True) -> dict:
    """`dvc repro` of HEAD's demo (with `overrides`) in a fresh clone: the run's record. `adopt`:
    copy the clone's dvc.lock and metrics/ into this checkout afterwards."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    if adopt and (dirty or overrides):
        raise SystemExit("--adopt takes the lock and report of HEAD's own demo: commit your "
                         "changes first, and drop --set")
    if dirty:
        print(f"note: uncommitted changes are not in the clone; timing commit {commit[:12]}",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="amnet-demo-") as tmp:
        clone = Path(tmp) / "amnet"
        _git("clone", "-q", "--no-hardlinks", str(ROOT), str(clone), cwd=Path(tmp))
        _git("checkout", "-q", "--detach", commit, cwd=clone)
        params = yaml.safe_load((clone / "params.yaml").read_text())
        for assignment in overrides:
            set_param(params, assignment)
        if overrides:
            (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # the clone's amnet, this python's dvc and stage scripts; no analytics
        env = {**os.environ, "PYTHONPATH": str(clone), "DVC_NO_ANALYTICS": "1",
               "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                        os.environ.get("PATH", "")])}
        load_before = [round(x, 2) for x in os.getloadavg()]
        seconds, stages = _repro(clone, env)
        if adopt:
            import shutil
            shutil.copy2(clone / "dvc.lock", ROOT / "dvc.lock")
            shutil.rmtree(ROOT / "metrics", ignore_errors=True)
            shutil.copytree(clone / "metrics", ROOT / "metrics")
        demo = params["data"]["demo"]
        run = {"seconds": seconds, "stages": stages, "commit": commit, "dirty": dirty,
               "overrides": list(overrides), "load_avg_before_1_5_15_min": load_before,
               "demo": {"n_images": demo["n_images"], "splits": params["data"]["splits"],
                        "epochs": params["train"]["epochs"]},
               **_outcome(clone, params)}
        run["attention_on_target"] = attention_on_target(clone, params)
        if ablation and params.get("model", {}).get("use_attention", True):
            run["ablation"] = _ablation(clone, env, params)
        return run


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _what(run: dict) -> str:
    d = run["demo"]
    splits = len(d["splits"])
    return (f"{d['n_images']:,} images, {splits} split{'s' if splits > 1 else ''} x "
            f"{d['epochs']} epochs" + (" (reduced: `--set`)" if run.get("overrides") else ""))


def render(res: dict) -> str:
    """The README's bench:demo block: one row per recorded run (CPU label)."""
    runs = res.get("runs", [])
    if not runs:
        return ("No run recorded yet: `python bench/demo.py --time`, on a quiet machine, times "
                "`dvc repro` of the defaults in a fresh clone and writes "
                "[docs/bench/demo.json](docs/bench/demo.json) and this table.\n")
    lines = ["From [docs/bench/demo.json](docs/bench/demo.json) (`python bench/demo.py --time`: "
             "`dvc repro` in a fresh clone of the commit named, no DVC cache; the `pip install` "
             "before it not counted), one run per CPU kind:", "",
             "| CPU | date, commit | demo | load before / 15-min at the end | `dvc repro` | "
             "prepare | extract | train, each split | evaluate | `auto` chose | test rho |",
             "|---|---|---|---|---:|---:|---:|---|---:|---|---:|"]
    for r in runs:
        st = r["stages"]
        train = " / ".join(duration(v) for k, v in st.items() if k.startswith("train@")) or "–"
        before, after = r["load_avg_before_1_5_15_min"], r["machine"]["load_avg_1_5_15_min"]
        pick = f"{r['precision']['trunk']} trunk, {r['precision']['head']} head"
        lines.append(
            f"| {r['machine']['cpu']} | {r['date']}, `{r['commit'][:7]}`"
            + (" + uncommitted" if r.get("dirty") else "") + f" | {_what(r)} | "
            f"{before[0]:.1f} / {after[2]:.1f} | **{duration(r['seconds'])}** | "
            + " | ".join(duration(st[k]) if k in st else "–" for k in ("prepare", "extract"))
            + f" | {train} | " + (duration(st["evaluate"]) if "evaluate" in st else "–")
            + f" | {pick} | {r['rho']:.3f} |")
    lines += ["", "The run itself keeps the cores busy: a load near their count at the end is "
              "its own; more than that, or a load before it, is another job's."]
    return "\n".join(lines) + "\n"


def params_lines(res: dict) -> list[str]:
    """params.yaml's `demo time:` comment lines (one per recorded run)."""
    runs = res.get("runs", [])
    if not runs:
        return [f"{PARAMS_LINE}not measured yet"]
    return [f"{PARAMS_LINE}{duration(r['seconds'])} on {r['machine']['cpu']}, {r['date']} "
            f"({_what(r)}; docs/bench/demo.json)" for r in runs]


def render_params(text: str, res: dict) -> str:
    """params.yaml with its `demo time:` lines (a run of consecutive lines) rendered."""
    lines = text.split("\n")
    hits = [i for i, ln in enumerate(lines) if ln.startswith(PARAMS_LINE)]
    if not hits or hits != list(range(hits[0], hits[0] + len(hits))):
        raise ValueError(f"params.yaml: no run of consecutive {PARAMS_LINE.strip()!r} lines")
    lines[hits[0]:hits[-1] + 1] = params_lines(res)
    return "\n".join(lines)


def results() -> dict:
    return record.load(NAME) if record.path(NAME).is_file() else {"runs": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", action="store_true",
                    help="time `dvc repro` of the demo in a fresh clone of HEAD (minutes)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml value for the timed run (repeatable): a reduced demo")
    ap.add_argument("--adopt", action="store_true",
                    help="with --time: copy the run's dvc.lock and metrics/ into this checkout")
    ap.add_argument("--no-ablation", dest="ablation", action="store_false",
                    help="with --time: skip the no-attention ablation (a second repro of the "
                         "heads)")
    ap.add_argument("--results-dir", type=Path,
                    help="write demo.json here instead of docs/bench/ (and render nothing)")
    ap.add_argument("--render", action="store_true",
                    help="render only, from the committed files (also the default)")
    args = ap.parse_args()
    if args.overrides and args.results_dir is None:
        raise SystemExit("--set makes a reduced demo, whose time is not the demo's: write it "
                         "elsewhere with --results-dir DIR")
    if args.time:
        if args.results_dir is not None:
            record.RESULTS = args.results_dir
        out = record.save_run(NAME, time_demo(args.overrides, args.adopt, args.ablation))
        print(f"wrote {out}")
        if args.results_dir is not None:
            print(render(record.load(NAME)))
            return
    from amnet.core.atomic import atomic_write_text
    d = load()
    atomic_write_text(record.README, render_readme(record.README.read_text(), d))
    print(row(d))
    print(ablation_row(d))
    print(sentence(d))
    res = results()
    record.publish(NAME, render(res))
    atomic_write_text(PARAMS, render_params(PARAMS.read_text(), res))
    print("\n".join(params_lines(res)))


if __name__ == "__main__":
    main()
