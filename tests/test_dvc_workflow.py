"""The pipeline under real DVC (git + `dvc repro` / `dvc exp`), at toy size: the workflows the
README documents and the DVC hygiene they rely on.

A git repository in a temporary folder holds this checkout's dvc.yaml, pipeline/, .dvc/config and
.dvc/plots/ and a tiny params.yaml (40 demo images of 48 px, random:0 at 32 px, a 16-wide head,
2 epochs, 2 splits); the stages import this checkout's amnet (PYTHONPATH). The tests run in file
order on one repository; each leaves it committed and clean, except the last.

- an ablation with `dvc exp run --temp` leaves the workspace alone; `dvc exp apply` adopts it;
  the train and evaluate stages come back from DVC's run cache, never retrained;
- a failed `dvc exp run --temp -S ...` leaves params.yaml and the outputs as they were (in the
  workspace DVC would leave the bad value in params.yaml: the README's recovery line is checked);
- `dvc plots show` writes a page that renders with no network (headless Chromium where present);
- dropping a split from data.splits leaves nothing of it in `dvc metrics show`, the plots or git.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_pipeline, subprocess_env

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

README = REPO / "README.md"
GIT_ID = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
          "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def _env() -> dict[str, str]:
    return subprocess_env(DVC_NO_ANALYTICS="1", **GIT_ID)


def run(repo: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """`git ...` or `dvc ...` (this python's dvc) in `repo`; stdout and stderr together."""
    cmd = [sys.executable, "-m", "dvc", *argv[1:]] if argv[0] == "dvc" else list(argv)
    p = subprocess.run(cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=900)
    if check:
        assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}"
    return p


def _tiny_params(splits: list[int]) -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(dataset="demo", root="", splits=splits)
    p["data"]["demo"] = {"n_images": 40, "image_size": 48}
    p["backbone"].update(weights="random:0", image_size=32, flip=False, views=0)
    p["extract_run"].update(batch_size=8, workers=0, device="cpu")
    p["model"].update(feature_dim=16, hidden_dim=16, regressor_dim=8)
    p["train"].update(epochs=2, batch_size=8, device="cpu")
    p["evaluate"]["attention_figures"] = 2
    return p


def _write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(out: str) -> list[str]:
    """The stages DVC ran (not restored nor skipped) in a command's output."""
    return re.findall(r"Running stage '([^']+)'", out)


def restored_stages(out: str) -> list[str]:
    return re.findall(r"Stage '([^']+)' is cached - skipping run", out)


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every file of the outputs and the report (models, train records, metrics)."""
    files = [p for d in ("models", "train", "metrics") for p in (repo / d).rglob("*")
             if p.is_file() and ".train-state" not in p.parts]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(files)}


def assert_clean(repo: Path) -> None:
    assert run(repo, "git", "status", "--porcelain").stdout == ""
    status = run(repo, "dvc", "status").stdout
    assert "up to date" in status, status


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A committed toy run of the whole pipeline (splits 1 and 2)."""
    r = tmp_path_factory.mktemp("dvc") / "proj"
    r.mkdir()
    copy_pipeline(r)
    shutil.copy(REPO / ".gitignore", r / ".gitignore")
    run(r, "git", "init", "-q")
    run(r, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", r / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", r / ".dvc" / "plots",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    _write_params(r, _tiny_params([1, 2]))
    out = run(r, "dvc", "repro").stdout
    assert ran_stages(out) == ["prepare", "extract", "train@1", "train@2", "evaluate"], out
    run(r, "git", "add", "-A")
    run(r, "git", "commit", "-qm", "toy run")
    assert_clean(r)
    return r


@pytest.mark.slow
def test_ablation_in_a_temp_dir_and_back_without_retraining(repo):
    before = snapshot(repo)
    out = run(repo, "dvc", "exp", "run", "--temp", "-n", "noatt",
              "-S", "model.use_attention=false").stdout
    assert ran_stages(out) == ["train@1", "train@2", "evaluate"], out  # extract untouched
    assert_clean(repo)
    assert snapshot(repo) == before                 # the workspace never saw the experiment

    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    exps = {r["name"]: r for b in shown for e in (b.get("experiments") or []) for r in e["revs"]}
    data = exps["noatt"]["data"]
    assert data["params"]["params.yaml"]["data"]["model"]["use_attention"] is False
    summary = data["metrics"]["metrics/summary.json"]["data"]
    assert summary["n_splits"] == 2 and -1 <= summary["rho"]["mean"] <= 1
    assert sorted(data["metrics"]) == ["metrics/splits/1.json", "metrics/splits/2.json",
                                       "metrics/summary.json"]
    # the README's terminal view (Experiments): in 100 columns, the summary's metrics and the
    # changed param, no column cut to "…"
    view = re.search(r"^dvc exp show --only-changed --drop '([^']+)'", README.read_text(), re.M)
    table = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--no-pager",
                            "--only-changed", "--drop", view.group(1)], cwd=repo,
                           env={**_env(), "COLUMNS": "100"}, capture_output=True, text=True,
                           timeout=300).stdout
    header = next(ln for ln in table.splitlines() if "Experiment" in ln).split()
    assert header == ["Experiment", "rho.mean", "rho.sd", "mse.mean", "mse.sd",
                      "model.use_attention"], table
    assert "…" not in table and max(map(len, table.splitlines())) <= 100, table
    assert re.search(r"\[noatt\] .* False\s*$", table, re.M), table

    out = run(repo, "dvc", "exp", "apply", "noatt").stdout   # adopt it: checked out, not run
    assert yaml.safe_load((repo / "params.yaml").read_text())["model"]["use_attention"] is False
    noatt = snapshot(repo)
    assert noatt["models/1.pt"] != before["models/1.pt"]
    assert noatt["metrics/summary.json"] != before["metrics/summary.json"]
    assert "up to date" in run(repo, "dvc", "status").stdout

    # back to the committed params: every stage restored from the run cache, nothing retrained
    run(repo, "git", "checkout", "--", "params.yaml")
    out = run(repo, "dvc", "repro").stdout
    assert ran_stages(out) == [], out
    assert restored_stages(out) == ["train@1", "train@2", "evaluate"], out
    assert_clean(repo)
    assert snapshot(repo) == before

    # the run the issue complained of: the ablation in the workspace, then back; both restored
    out = run(repo, "dvc", "exp", "run", "-S", "model.use_attention=false").stdout
    assert ran_stages(out) == [] and restored_stages(out) == ["train@1", "train@2", "evaluate"]
    assert snapshot(repo) == noatt
    run(repo, "git", "checkout", "--", "params.yaml")
    out = run(repo, "dvc", "repro").stdout
    assert ran_stages(out) == [], out
    assert_clean(repo)
    assert snapshot(repo) == before


@pytest.mark.slow
def test_failed_experiment_leaves_params_and_outputs_alone(repo):
    before = snapshot(repo)
    params = (repo / "params.yaml").read_bytes()
    p = run(repo, "dvc", "exp", "run", "--temp", "-S", "train.epochs=ten", check=False)
    assert p.returncode != 0
    assert "train@1: params.yaml: train.epochs: expected an integer, got 'ten'" in p.stdout
    assert (repo / "params.yaml").read_bytes() == params
    assert_clean(repo)
    assert snapshot(repo) == before

    # without --temp DVC leaves the bad value in params.yaml (and has removed train@1's outputs);
    # the README's recovery line puts everything back
    p = run(repo, "dvc", "exp", "run", "-S", "train.epochs=ten", check=False)
    assert p.returncode != 0
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == "ten"
    assert not (repo / "models" / "1.pt").exists()
    run(repo, "git", "checkout", "--", "params.yaml")
    run(repo, "dvc", "checkout")
    assert_clean(repo)
    assert snapshot(repo) == before


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


@pytest.mark.slow
def test_plots_page_renders_offline(repo, tmp_path):
    out = tmp_path / "plots"
    run(repo, "dvc", "plots", "show", "-o", str(out))
    page = (out / "index.html").read_text()
    assert "<script src=" not in page and "cdn." not in page   # nothing to fetch
    for lib in ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"):
        assert f"<!-- {lib} " in page                         # inline, from the template
    shown = json.loads(run(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    for name in ("metrics/history.csv", "metrics/predictions.csv"):
        (plot,) = shown[name]                                  # one chart for all the splits
        assert {row["split"] for row in plot["content"]["data"]["values"]} == {"1", "2"}
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed: the page's rendering is not checked")
    # network off (every request goes to a closed local port): the charts must still be drawn
    dom = subprocess.run(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--proxy-server=127.0.0.1:9", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=15000", "--dump-dom", (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=180).stdout
    assert dom.count('<canvas') == 2 and dom.count('class="marks"') == 2, dom[-2000:]


def test_committed_report_and_lock_name_only_configured_splits():
    """This checkout: the committed metrics/ and dvc.lock hold the configured splits only."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    splits = params["data"]["splits"]
    assert sorted(p.name for p in (REPO / "metrics" / "splits").iterdir()) == \
        sorted(f"{k}.json" for k in splits)
    assert not (REPO / "metrics" / "history").exists()
    assert not (REPO / "metrics" / "predictions").exists()
    stages = {"prepare", "extract", "evaluate", *(f"train@{k}" for k in splits)}
    locked = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert locked <= stages, f"dvc.lock entries of stages dvc.yaml lacks: {locked - stages}"


@pytest.mark.slow
def test_dropping_a_split_leaves_nothing_of_it(repo):
    """Last: data.splits [1, 2] -> [1]."""
    _write_params(repo, _tiny_params([1]))
    run(repo, "dvc", "repro")
    metrics = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    assert sorted(metrics[""]["data"]) == ["metrics/splits/1.json", "metrics/summary.json"]
    shown = json.loads(run(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    for name in ("metrics/history.csv", "metrics/predictions.csv"):
        assert {r["split"] for r in shown[name][0]["content"]["data"]["values"]} == {"1"}
    status = run(repo, "git", "status", "--porcelain").stdout.splitlines()
    assert " D metrics/splits/2.json" in status
    run(repo, "git", "add", "-A")
    tracked = run(repo, "git", "ls-files", "metrics").stdout.split()
    assert not [f for f in tracked if re.search(r"(^|/)2(\.json|\.csv|/)", f)], tracked
    assert os.listdir(repo / "metrics" / "splits") == ["1.json"]
