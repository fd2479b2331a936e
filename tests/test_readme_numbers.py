"""Every measured number in the README comes from a committed result file (issue 19, item 5).

- the performance tables (README and docs/*.md) sit in `<!-- bench:NAME:start/end -->` blocks
  that must equal what `python bench/NAME.py --render` makes of docs/bench/NAME.json;
- every docs/bench/*.json names the CPU (model name and bf16 capability), the date, the versions
  and the command that made it, and that command's script exists;
- the demo's figures (results row, Quick start) equal metrics/summary.json, which `dvc repro`'s
  evaluate stage wrote;
- the LNSIM table's mean ± sd equal those of docs/lnsim-results.json's splits, and the
  reliability totals those of docs/faults-results.jsonl;
- no throughput or run time is typed into the README outside a rendered block.
"""
from __future__ import annotations

import importlib
import json
import math
import re
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import record  # noqa: E402

README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- bench:([\w-]+):start -->")
CAPABILITIES = ("AMX", "AVX512-BF16", "AVX512, no native bf16", "AVX2 only", "no AVX2")


def _text() -> str:
    return README.read_text()


def _blocks() -> list[str]:
    return BLOCK.findall(_text())


def _results() -> list[Path]:
    return sorted((ROOT / "docs" / "bench").glob("*.json"))


def test_the_performance_tables_are_rendered_blocks() -> None:
    assert {"extract", "precision", "train", "export"} <= set(_blocks())
    for name in _blocks():
        assert (ROOT / "bench" / f"{name}.py").is_file(), f"bench:{name}: no bench/{name}.py"
        assert record.path(name).is_file(), f"bench:{name}: no docs/bench/{name}.json committed"


BLOCKS = [(page, name) for page in record.pages() for name in BLOCK.findall(page.read_text())]


@pytest.mark.parametrize("page,name", BLOCKS, ids=[f"{p.name}:{n}" for p, n in BLOCKS])
def test_block_equals_its_rendered_json(page: Path, name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    want = record.for_page(module.render(record.load(name)), page).strip("\n")
    got = record.block(page.read_text(), name)
    assert got == want, (f"{page.name}'s bench:{name} block differs from docs/bench/{name}.json; "
                         f"run `python bench/{name}.py --render`")


@pytest.mark.parametrize("path", _results(), ids=lambda p: p.name)
def test_every_result_file_is_labelled(path: Path) -> None:
    data = json.loads(path.read_text())
    for run in data.get("runs", [data]):
        m = run["machine"]
        assert m["model"] and m["model"] in m["cpu"], f"{path.name}: no CPU model name"
        assert any(c in m["cpu"] for c in CAPABILITIES), f"{path.name}: no bf16 capability"
        assert {"amx", "avx512_bf16", "avx2", "native_bf16"} <= set(m)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", run["date"])
        assert {"python", "torch", "amnet"} <= set(run["versions"])
        script = re.search(r"(?:^|\s)python (bench/\w+\.py)", run["command"])
        assert script and (ROOT / script.group(1)).is_file(), f"{path.name}: {run['command']!r}"


def test_demo_figures_equal_metrics_summary() -> None:
    from bench import demo

    d = demo.load()
    text = _text()
    assert demo.render_readme(text, d) == text, "run `python bench/demo.py`"
    # and, spelled out, against metrics/summary.json itself
    summary = json.loads((ROOT / "metrics" / "summary.json").read_text())
    rho, mse = demo.stat(summary, "rho"), demo.stat(summary, "mse")
    row = next(ln for ln in text.splitlines() if ln.startswith(demo.ROW_START))
    assert f"**{rho[0]:.3f} ± {rho[1]:.3f}**" in row and f"{mse[0]:.4f} ± {mse[1]:.4f}" in row
    assert f"(test rho {rho[0]:.3f} ± {rho[1]:.3f})" in text
    # the prose's rounded figure
    said = re.search(r"the demo already\s+reaches rho (\d\.\d+)", text)
    assert said and float(said.group(1)) == round(rho[0], len(said.group(1)) - 2)


def test_demo_attention_against_no_attention_from_the_committed_run() -> None:
    """Issue 22, item 7: the README's ablation row comes from the run (docs/bench/demo.json) that
    wrote the committed metrics/, and that run shows attention ahead, looking at the target."""
    from bench import demo

    run = demo.load()["ablation_run"]
    assert run, "no run in docs/bench/demo.json made metrics/ with its ablation: " \
                "`python bench/demo.py --time --adopt`"
    a = run["ablation"]
    assert a["set"] == "model.use_attention=false" and len(a["rho_per_split"]) == 2
    summary = json.loads((ROOT / "metrics" / "summary.json").read_text())
    assert run["rho"] == demo.stat(summary, "rho")[0]
    assert run["rho"] > a["rho"][0] + 0.05, (run["rho"], a["rho"])   # a clear margin
    on = run["attention_on_target"]
    assert on["attention"] > 3 * on["cells"], on   # the maps sit on the target
    row = next(ln for ln in _text().splitlines() if ln.startswith(demo.ABLATION_ROW_START))
    assert f"**{a['rho'][0]:.3f} ± {a['rho'][1]:.3f}**" in row and run["commit"][:7] in row


def test_demo_ablation_row_without_a_run() -> None:
    from bench import demo
    assert "not measured: `python bench/demo.py --time --adopt`" in demo.ablation_row({})
    run = _demo_run(ablation={"rho": [0.7, 0.02], "mse": [0.0071, 0.0004]},
                    attention_on_target={"attention": 0.41, "cells": 0.07})
    assert demo.ablation_row({"ablation_run": run}) == (
        f"{demo.ABLATION_ROW_START} same | same | AMNet with uniform attention | "
        "**0.700 ± 0.020** "
        "| 0.0071 ± 0.0004 | docs/bench/demo.json (AMD EPYC 9B14 (2 cores, AVX512-BF16), "
        "`0123456`; attention's share on the target: 41% of the mass on 7% of the cells) |")


def test_demo_ablation_sets_the_switch_in_the_clone_only(tmp_path, monkeypatch) -> None:
    """`_ablation` writes use_attention=false into the clone's params.yaml, reads the rerun's
    summary, and leaves the caller's params (the first run's) as they were. The repro itself
    (minutes of dvc) is stubbed: it only has to see the switched params."""
    import yaml
    from bench import demo

    seen = {}

    def fake_repro(clone, env):
        seen["params"] = yaml.safe_load((clone / "params.yaml").read_text())
        (clone / "metrics").mkdir()
        (clone / "metrics" / "summary.json").write_text(json.dumps(
            {"rho": {"mean": 0.6, "sd": 0.1, "values": [0.5, 0.7]},
             "mse": {"mean": 0.01, "sd": 0.0, "values": [0.01, 0.01]}}))
        return 12.5, {"train": 10.0}

    monkeypatch.setattr(demo, "_repro", fake_repro)
    params = {"model": {"use_attention": True, "hidden": 8}, "train": {"epochs": 3}}
    out = demo._ablation(tmp_path, {}, params)
    assert seen["params"]["model"] == {"use_attention": False, "hidden": 8}
    assert params["model"]["use_attention"] is True          # the caller's dict is untouched
    assert out["set"] == demo.ABLATION and out["rho"] == [0.6, 0.1]
    assert out["rho_per_split"] == [0.5, 0.7] and out["seconds"] == 12.5


def _lnsim_cell(values: list, digits: int) -> str:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def test_lnsim_table_equals_its_json() -> None:
    results = json.loads((ROOT / "docs" / "lnsim-results.json").read_text())
    text = _text()
    block = text[text.index("<!-- lnsim-table:start -->"):text.index("<!-- lnsim-table:end -->")]
    rows = [ln for ln in block.splitlines() if re.match(r"\| .*\(`[\w-]+`\) \|", ln)]
    assert rows, "no LNSIM rows in the README"
    by_key = {(r["model"], r["backbone"] or "–"): r for r in results["rows"]}
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        model = re.search(r"\(`([\w-]+)`\)", cells[0]).group(1)
        row = by_key[(model, cells[1])]
        split = row["per_split"]
        assert cells[2] == _lnsim_cell([v.get("rho") for v in split.values()], 3), ln
        assert cells[3] == _lnsim_cell([v.get("mse") for v in split.values()], 4), ln
        assert cells[7] == str(len(split)), ln
        machine = (row.get("run") or {}).get("machine") or ""
        assert cells[6] == "–" or cells[6].split(",")[0].split()[-1] in machine, ln


def test_reliability_totals_equal_their_results() -> None:
    faults = importlib.import_module("bench.faults")
    want = faults.table(faults.load(ROOT / "docs" / "faults-results.jsonl")).strip("\n")
    text = _text()
    i, j = text.index(faults.BLOCK_START), text.index(faults.BLOCK_END)
    assert text[i + len(faults.BLOCK_START):j].strip("\n") == want


def test_no_typed_throughput_or_run_time_outside_blocks() -> None:
    """Measured speeds and durations live in rendered blocks only (or the removed ones come back:
    the 'previous run' 17.3 / 40.5 img/s, a user's AVX2 timings, the demo's hand-timed minutes)."""
    text = _text()
    for name in _blocks():
        start, end = record.markers(name)
        text = text[:text.index(start)] + text[text.index(end) + len(end):]
    text = re.sub(r"<!-- (lnsim|faults)-table:start -->.*?<!-- \1-table:end -->", "", text,
                  flags=re.S)
    typed = re.findall(r"\d[\d.,]*\s*(?:img/s|images/s|samples/s|min \d+ s|\d+x (?:faster|slower)"
                       r"|minutes on a real)", text)
    assert not typed, f"hand-typed measurements outside rendered blocks: {typed}"


# ---- the demo's run time (bench/demo.py --time -> docs/bench/demo.json) --------------------------

def _demo_run(**kw) -> dict:
    run = {"machine": {"cpu": "AMD EPYC 9B14 (2 cores, AVX512-BF16)",
                       "load_avg_1_5_15_min": [2.1, 2.0, 1.7]},
           "date": "2026-12-07", "commit": "0123456789abcdef", "dirty": False, "overrides": [],
           "seconds": 754.2, "load_avg_before_1_5_15_min": [0.31, 0.5, 0.6],
           "stages": {"prepare": 6.0, "extract": 301.5, "train@1": 190.0, "train@2": 185.2,
                      "evaluate": 40.1},
           "demo": {"n_images": 2000, "splits": [1, 2], "epochs": 10},
           "precision": {"trunk": "mixed", "head": "bf16"}, "rho": 0.8986}
    return {**run, **kw}


def test_demo_time_renders_one_row_per_cpu() -> None:
    from bench import demo
    text = demo.render({"runs": [_demo_run()]})
    assert text.splitlines()[4] == (
        "| AMD EPYC 9B14 (2 cores, AVX512-BF16) | 2026-12-07, `0123456` | 2,000 images, 2 splits "
        "x 10 epochs | 0.3 / 1.7 | **12.6 min** | 6 s | 5.0 min | 3.2 min / 3.1 min | 40 s | "
        "mixed trunk, bf16 head | 0.899 |")
    reduced = demo.render({"runs": [_demo_run(overrides=["train.epochs=2"], dirty=True)]})
    assert "`0123456` + uncommitted | 2,000 images, 2 splits x 10 epochs (reduced: `--set`)" \
        in reduced
    assert demo.params_lines({"runs": [_demo_run()]}) == [
        "#   demo time: 12.6 min on AMD EPYC 9B14 (2 cores, AVX512-BF16), 2026-12-07 (2,000 "
        "images, 2 splits x 10 epochs; docs/bench/demo.json)"]
    assert demo.params_lines({"runs": []}) == ["#   demo time: not measured yet"]
    assert demo.render({"runs": []}).startswith("No run recorded yet: `python bench/demo.py "
                                                "--time`")


def test_demo_time_in_params_yaml_is_rendered() -> None:
    """params.yaml quotes docs/bench/demo.json (the README's block is checked with the others);
    the hand-typed "<= 10 minutes on 2 CPU cores" is gone."""
    from bench import demo
    params = (ROOT / "params.yaml").read_text()
    assert demo.render_params(params, demo.results()) == params, "run `python bench/demo.py`"
    assert "<= 10 minutes" not in params
    assert "demo" in _blocks()


def test_demo_time_set_and_stage_times() -> None:
    import subprocess
    import time

    from bench import demo
    params = {"data": {"demo": {"n_images": 2000}}}
    demo.set_param(params, "data.demo.n_images=200")
    demo.set_param(params, "data.splits=[1, 2]")
    assert params == {"data": {"demo": {"n_images": 200}, "splits": [1, 2]}}
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        demo.set_param(params, "train.epochs")
    # stage times: from each "Running stage" line to the next, the last to the end
    script = ("import time\nfor s in ('prepare', 'extract'):\n"
              "    print(f\"Running stage '{s}':\", flush=True); time.sleep(0.3)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    stages = demo._stage_seconds(proc, time.perf_counter())
    assert list(stages) == ["prepare", "extract"] and all(0.2 < v < 5 for v in stages.values())


def test_lamem_cost_model_follows_its_formula() -> None:
    """The README's LaMem cost model (bench:scale block, checked against its rendering above) is
    the stated formula over docs/bench/scale.json's rows, recomputed here from the raw rows."""
    from bench import scale_model

    res = record.load("scale")
    rows = res["rows"]
    ext = max((r for r in rows if r["stage"] == "extract"), key=lambda r: r["n"])
    train = max((r for r in rows if r["stage"] == "train"), key=lambda r: r["n"])
    assert {"stage", "n", "seconds", "peak_rss_mb", "cache_gb"} <= set(train) and train["feeding"]
    s_item = train["steps_s"] / (train["steps"] * train["batch"])
    split = train["setup_s"] + 54 * 45_000 * s_item
    m = scale_model.model(res)
    assert m["extract_s"] == pytest.approx(60_000 * ext["seconds"] / ext["n"])
    assert m["disk_b"] == pytest.approx(60_000 * train["cache_gb"] * 1e9 / train["n"])
    assert m["all_s"] == pytest.approx(5 * split)
    block = record.block(_text(), "scale")
    assert f"*{scale_model._hours(5 * split)}*" in block
    assert f"*{60_000 * train['cache_gb'] / train['n']:.1f} GB*" in block
    assert "No GPU" in _text()[_text().index(record.markers("scale")[1]):][:600]
