"""The DVC stage scripts (pipeline/*.py) as `dvc repro` runs them: each in its own python, with
the command line of its stage in dvc.yaml, in a temporary copy of the repository layout
(pipeline/ + a tiny params.yaml: 40 demo images of 48 px, random:0 at --image-size 32, a 16-wide
head, 2 epochs), without DVC itself.

Covers prepare's outputs, extract's resume / replace of a left-over partial file, train and
evaluate, that evaluate writes the same metrics/summary.json bytes from the same inputs, and that
its report holds exactly the configured splits. tests/test_dvc_workflow.py runs them under DVC."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import REPO, subprocess_env

# each stage in its own python, as `dvc repro` runs them: minutes in all (`-m slow`)
pytestmark = pytest.mark.slow

N_IMAGES = 40


def _params() -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(dataset="demo", root="", splits=[1, 2])
    p["data"]["demo"] = {"n_images": N_IMAGES, "image_size": 48}
    p["backbone"].update(weights="random:0", image_size=32, flip=False, views=0, precision="auto")
    p["extract_run"].update(batch_size=8, workers=0, device="cpu")
    p["model"].update(feature_dim=16, hidden_dim=16, regressor_dim=8)
    p["train"].update(epochs=2, batch_size=8, device="cpu")
    p["evaluate"]["attention_figures"] = 2
    return p


def _command(stage: str, item: str | None = None) -> list[str]:
    """The stage's `cmd` in dvc.yaml with ${data.dataset} = demo (and ${item} = the split)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    spec = stages[stage]["do"] if "foreach" in stages[stage] else stages[stage]
    cmd = spec["cmd"].replace("${data.dataset}", "demo")
    if item is not None:
        cmd = cmd.replace("${item}", item)
    assert "${" not in cmd, cmd
    argv = shlex.split(cmd)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def _stage(proj: Path, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run pipeline/<script> as its stage in dvc.yaml does (`args`: the split of train.py)."""
    argv = _command(script.removesuffix(".py"), *args)
    assert argv[1] == f"pipeline/{script}"
    p = subprocess.run(argv, cwd=proj, env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    if check:
        assert p.returncode == 0, f"{script}: {p.stdout}\n{p.stderr}"
    return p


_SUMMARY = re.compile(
    r"extract: (?P<out>\S+): (?:extracted (?P<extracted>\d+) images in \d+\.\d s \(.*\), "
    r"(?P<already>\d+) already there, \d+ skipped now, \d+ failed in total; "
    r"(?P<state>complete|INCOMPLETE)|already complete \((?P<all>\d+) images\); nothing to do)"
    r"(?: \((?P<dropped>\d+) images no longer listed, [^)]*\))?$")


def _summary(p: subprocess.CompletedProcess) -> dict:
    """The numbers of the line pipeline/extract.py ends with: `amnet-cache extract`'s summary
    line (amnet.cli.cache.extract_report), led by `extract: `."""
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("extract: ")][-1]
    m = _SUMMARY.fullmatch(line)
    assert m, line
    if m["all"]:
        return {"out": m["out"], "extracted": 0, "already": int(m["all"]), "complete": True,
                "dropped": int(m["dropped"] or 0)}
    return {"out": m["out"], "extracted": int(m["extracted"]), "already": int(m["already"]),
            "complete": m["state"] == "complete", "dropped": int(m["dropped"] or 0)}


def _features(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("features", "done")} | {
            "weights_id": f.attrs["weights_id"], "complete": bool(f.attrs["complete"])}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """prepare + extract, once for the module; tests copy it before changing anything."""
    proj = tmp_path_factory.mktemp("pipeline") / "proj"
    proj.mkdir()
    shutil.copytree(REPO / "pipeline", proj / "pipeline")
    (proj / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    _stage(proj, "prepare.py")
    _stage(proj, "extract.py")
    return proj


def _copy(project: Path, tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    shutil.copytree(project, proj, symlinks=True)
    return proj


def _items(proj: Path) -> list[tuple[str, Path]]:
    """The (name, path) list pipeline/extract.py extracts, built the same way."""
    from amnet.data import images_root
    from amnet.data.listfiles import read_name_list
    dataset = proj / "data" / "demo"
    return [(n, images_root(dataset) / n) for n, _ in read_name_list(dataset / "images.txt")]


# ---- prepare ---------------------------------------------------------------------------------

def test_prepare_writes_splits_names_and_record(project):
    from amnet.data.listfiles import read_split
    data = project / "data" / "demo"
    record = json.loads((data / "prepare.json").read_text())
    assert record["kind"] == "demo" and record["splits"] == [1, 2] and record["seed"] == 2018
    names = (data / "images.txt").read_text().splitlines()
    assert names == sorted(names) and len(names) == N_IMAGES
    for k in (1, 2):
        parts = {p: read_split(data / "splits" / f"{p}_{k}.txt") for p in ("train", "val", "test")}
        used = [n for items in parts.values() for n, _ in items]
        assert sorted(used) == names  # images.txt: every image the splits use, once
        counts = record["counts"][str(k)]
        assert [counts[p] for p in ("train", "val", "test")] == [len(parts[p]) for p in parts]
        assert counts["train"] == 28 and counts["test"] == 8  # params: 10% val, 20% test
    assert (data / "images" / names[0]).is_file()


def test_prepare_bad_params_is_one_line(project, tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(project / "pipeline", proj / "pipeline")
    params = _params()
    params["data"].update(dataset="lamem", root="")
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    p = _stage(proj, "prepare.py", check=False)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("prepare: ")
    assert "data.root is empty" in p.stderr and not (proj / "data" / "lamem").exists()


# ---- extract ---------------------------------------------------------------------------------

def test_extract_writes_the_complete_cache(project):
    out = project / "data" / "features" / "demo.h5"
    assert out.is_file() and not (project / "data" / "features" / "demo.partial.h5").exists()
    from amnet.cache.reader import FeatureCache
    with FeatureCache(out) as c:
        assert c.complete and c.names == [n for n, _ in _items(project)]
        assert c.grid == (2, 2) and c.attrs["weights_id"] == "random:0"
        assert c.attrs["image_size"] == 32 and not c.has_flip and c.views == 0
        assert c.attrs["source"] == "data/demo"


def _partial(proj: Path, batches: int, backbone, **settings) -> Path:
    """A left-over of a run stopped after `batches` batches: data/features/demo.partial.h5."""
    from amnet.extract.run import extract
    doc = yaml.safe_load((proj / "params.yaml").read_text())
    params = doc["backbone"]
    kw = dict(weights=params["weights"], image_size=params["image_size"], flip=params["flip"],
              views=params["views"], precision=params["precision"], device="cpu",
              batch_size=doc["extract_run"]["batch_size"], progress=False, source="data/demo")
    kw.update(settings)

    def stop(b, _):
        if b == batches:
            raise KeyboardInterrupt

    partial = proj / "data" / "features" / "demo.partial.h5"
    with pytest.raises(KeyboardInterrupt):
        extract(_items(proj), partial, on_batch=stop, backbone=backbone(kw["weights"],
                                                                         kw["precision"]), **kw)
    return partial


def test_extract_resumes_a_partial_file_made_with_the_same_params(project, tmp_path, backbones):
    proj = _copy(project, tmp_path)
    ref = _features(proj / "data" / "features" / "demo.h5")
    (proj / "data" / "features" / "demo.h5").unlink()
    partial = _partial(proj, 2, backbones)
    assert _features(partial)["done"].sum() == 16
    p = _stage(proj, "extract.py")
    s = _summary(p)
    assert s["already"] == 16 and s["extracted"] == N_IMAGES - 16 and s["complete"]
    assert "not resuming" not in p.stderr and not partial.exists()
    got = _features(proj / "data" / "features" / "demo.h5")
    # whole batches kept: the resumed run's batches are the uninterrupted run's, same bytes
    assert got["features"].tobytes() == ref["features"].tobytes() and got["done"].all()


@pytest.mark.parametrize("other", [{"weights": "random:1"}, {"image_size": 48}])
def test_extract_replaces_a_partial_file_made_with_other_params(project, tmp_path, backbones,
                                                                other):
    proj = _copy(project, tmp_path)
    ref = _features(proj / "data" / "features" / "demo.h5")
    (proj / "data" / "features" / "demo.h5").unlink()
    partial = _partial(proj, 1, backbones, **other)
    p = _stage(proj, "extract.py")
    assert f"extract: not resuming {Path('data/features/demo.partial.h5')}" in p.stderr
    assert "other settings" in p.stderr
    s = _summary(p)
    assert s["already"] == 0 and s["extracted"] == N_IMAGES and s["complete"]
    got = _features(proj / "data" / "features" / "demo.h5")
    assert got["weights_id"] == "random:0" and got["complete"] and not partial.exists()
    assert got["features"].tobytes() == ref["features"].tobytes()


def test_extract_resumes_a_complete_partial_file_without_work(project, tmp_path):
    """Killed between the last write and the rename: the next run only renames."""
    proj = _copy(project, tmp_path)
    cache = proj / "data" / "features" / "demo.h5"
    cache.rename(cache.with_name("demo.partial.h5"))
    s = _summary(_stage(proj, "extract.py"))
    assert s["already"] == N_IMAGES and s["extracted"] == 0 and s["complete"] and cache.is_file()


def test_extract_resumes_when_the_list_lost_names_not_yet_extracted(project, tmp_path,
                                                                    backbones):
    """images.txt lost names the partial file holds no features of: resumed, not replaced."""
    proj = _copy(project, tmp_path)
    ref = _features(proj / "data" / "features" / "demo.h5")
    (proj / "data" / "features" / "demo.h5").unlink()
    partial = _partial(proj, 2, backbones)  # the first 16 rows extracted
    listing = proj / "data" / "demo" / "images.txt"
    lines = listing.read_text().splitlines(keepends=True)
    listing.write_text("".join(lines[:20] + lines[21:]))  # drop name 20 (not extracted)
    p = _stage(proj, "extract.py")
    s = _summary(p)
    assert "not resuming" not in p.stderr and not partial.exists()
    assert s["already"] == 16 and s["dropped"] == 1 and s["extracted"] == N_IMAGES - 17
    got = _features(proj / "data" / "features" / "demo.h5")
    keep = [k for k in range(N_IMAGES) if k != 20]
    assert got["features"].tobytes() == ref["features"][keep].tobytes() and got["done"].all()


_ORPHAN = """\
import os, runpy, sys, time
import amnet.extract.run as E
ready, go = sys.argv[1], sys.argv[2]
extract = E.extract


def paused(*args, **kw):
    def hook(batches, extracted):
        if batches == 1:  # one batch written: wait, as a slow run would
            open(ready, "w").close()
            while not os.path.exists(go):
                time.sleep(0.05)
    return extract(*args, on_batch=hook, **kw)


E.extract = paused  # pipeline/extract.py imports it from here
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_extract_leaves_an_orphaned_run_alone(project, tmp_path):
    """issue 11, defect 2: `dvc` killed during extract leaves its child running; the next
    `dvc repro` must stop with one line naming it, not recreate the file under it; the orphan
    then finishes and renames its own file into place, byte-identical."""
    import os
    import socket
    import time
    proj = _copy(project, tmp_path)
    cache = proj / "data" / "features" / "demo.h5"
    ref = _features(cache)
    cache.unlink()  # as dvc does before it runs the stage
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    ready, go = tmp_path / "ready", tmp_path / "go"
    orphan = subprocess.Popen([sys.executable, str(script), str(ready), str(go),
                               *_command("extract")[1:]], cwd=proj, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert orphan.poll() is None and time.monotonic() < deadline, orphan.communicate()
            time.sleep(0.1)
        partial = proj / "data" / "features" / "demo.partial.h5"
        before = partial.stat().st_mtime_ns, partial.stat().st_ino
        p = _stage(proj, "extract.py", check=False)  # the rerun `dvc repro` starts
        assert p.returncode == 1
        assert p.stderr.count("\n") == 1, p.stderr
        line = p.stderr.strip()
        assert line.startswith(f"extract: {Path('data/features/demo.partial.h5')}: being written "
                               f"by pid {orphan.pid} on {socket.gethostname()} (since "), line
        assert line.endswith(f"); wait for it to finish (--wait SECONDS) or stop it "
                             f"(kill {orphan.pid}), then rerun"), line
        assert (partial.stat().st_mtime_ns, partial.stat().st_ino) == before  # untouched
        assert not cache.exists()
    finally:
        go.touch()
        out, err = orphan.communicate(timeout=300)
    assert orphan.returncode == 0, err
    s = _summary(subprocess.CompletedProcess([], 0, out, err))
    assert s["already"] == 0 and s["extracted"] == N_IMAGES and s["complete"]
    got = _features(cache)
    assert got["features"].tobytes() == ref["features"].tobytes() and got["done"].all()
    assert not partial.exists() and not os.path.exists(str(partial) + ".lock")


def test_extract_salvages_a_truncated_partial_file(project, tmp_path):
    """A damaged (truncated) partial file is neither reported as in use nor thrown away: its
    complete rows are kept (amnet-cache repair) and the rest extracted, to the same bytes."""
    proj = _copy(project, tmp_path)
    cache = proj / "data" / "features" / "demo.h5"
    ref = _features(cache)
    data = cache.read_bytes()
    cache.unlink()
    partial = cache.with_name("demo.partial.h5")
    partial.write_bytes(data[:int(len(data) * 0.7)])
    p = _stage(proj, "extract.py")
    s = _summary(p)
    assert "truncated" in p.stderr and "in use" not in p.stderr
    assert 0 < s["already"] < N_IMAGES and s["extracted"] == N_IMAGES - s["already"]
    assert f"extract: kept {s['already']} of {N_IMAGES} rows of " in p.stderr
    got = _features(cache)
    assert got["complete"] and got["features"].tobytes() == ref["features"].tobytes()


# ---- train + evaluate ------------------------------------------------------------------------

TRAIN_STDERR: dict[str, str] = {}   # what each train@k of `trained` wrote to stderr


@pytest.fixture(scope="module")
def trained(project, tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("trained") / "proj"
    shutil.copytree(project, proj, symlinks=True)
    for k in ("1", "2"):
        TRAIN_STDERR[k] = _stage(proj, "train.py", k).stderr
    return proj


def test_train_stage_logs_one_line_per_epoch_with_loss_val_rho_and_eta(trained):
    """issue 19: train@k was silent for ~90 s. Not on a terminal (a log, CI), its stderr holds
    one line per epoch -- loss, val rho, val MSE, the epoch's time and the run's ETA -- and no
    progress bar (no carriage returns)."""
    import re
    err = TRAIN_STDERR["1"]
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    num = r"(-?\d+\.\d+|nan)"
    assert len(lines) == 2, err
    assert re.fullmatch(rf"epoch 1/2  loss {num}  val rho {num}  val mse {num}  "
                        rf"\(\d+\.\d s, ETA \d+ s\)", lines[0]), lines[0]
    assert re.fullmatch(rf"epoch 2/2  loss {num}  val rho {num}  val mse {num}  \(\d+\.\d s\)",
                        lines[1]), lines[1]
    assert len(err.splitlines()) <= 6, err    # and little else: device, caveats


def _run_option_argv(command, *configs) -> list[str]:
    """The command line of `command`'s settings options that gives each the value it has in
    `configs` (the settings dataclasses of a params file)."""
    from amnet.cli._options import SettingOption
    by_cls = {type(c): c for c in configs}
    argv: list[str] = []
    for opt in command.params:
        if not isinstance(opt, SettingOption):
            continue
        value = getattr(by_cls[opt.setting_cls], opt.field)
        if opt.is_flag:
            argv += [opt.opts[0]] if value else opt.secondary_opts[:1]
        else:
            argv += [opt.opts[0], str(value)]
    return argv


def test_train_stage_computes_what_amnet_train_computes(trained, tmp_path):
    """issue 19, one path per operation: `python pipeline/train.py K ...` (settings from
    params.yaml) and `amnet train` given those settings as options train the same head: the same
    metrics, history (but the wall times) and predictions, and the same per-epoch log lines."""
    from amnet.cli.train import train_cmd
    from amnet.cli.params import load_params
    from amnet.head.gather import SPLIT_KEYS

    p = load_params(trained / "params.yaml")
    out = tmp_path / "cli"
    splits = Path("data/demo/splits")
    argv = [sys.executable, "-c", "from amnet.cli import main; main()", "train",
            "--cache", "data/features/demo.h5", "--train", str(splits / "train_1.txt"),
            "--val", str(splits / "val_1.txt"), "--test", str(splits / "test_1.txt"),
            "--out", str(out), *_run_option_argv(train_cmd, p.model, p.train)]
    r = subprocess.run(argv, cwd=trained, env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    stage = json.loads((trained / "train" / "1" / "metrics.json").read_text())
    cli = json.loads((out / "metrics.json").read_text())
    assert {k: cli[k] for k in SPLIT_KEYS} == {k: stage[k] for k in SPLIT_KEYS}
    assert (out / "predictions.csv").read_bytes() == \
        (trained / "train" / "1" / "predictions.csv").read_bytes()
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_csv(out / "history.csv")) == drop(_csv(trained / "train" / "1" / "history.csv"))
    epochs = lambda err: [ln.split("  (")[0] for ln in err.splitlines()  # noqa: E731
                          if ln.startswith("epoch ")]
    assert epochs(r.stderr) == epochs(TRAIN_STDERR["1"]) and len(epochs(r.stderr)) == 2


def test_stage_scripts_parse_nothing_themselves():
    """issue 19: each pipeline/<stage>.py runs its click command (amnet/cli/stages.py); the
    options a stage shares with a CLI verb are that verb's very options."""
    from amnet.cli import stages
    from amnet.cli.cache import cache_extract
    from amnet.cli.train import train_cmd
    for script in sorted((REPO / "pipeline").glob("*.py")):
        text = script.read_text()
        assert "argparse" not in text and "sys.argv" not in text, script.name
        assert f"run({script.stem}_stage)" in text, script.name

    def option(command, name):
        return next(o for o in command.params if o.name == name)
    for stage, verb, name in ((stages.train_stage, train_cmd, "cache"),
                              (stages.train_stage, train_cmd, "wait"),
                              (stages.extract_stage, cache_extract, "wait")):
        a, b = option(stage, name), option(verb, name)
        assert (a.opts, a.help, a.default, repr(a.type)) == (b.opts, b.help, b.default,
                                                             repr(b.type)), name
    r = subprocess.run([sys.executable, "pipeline/train.py", "--help"], cwd=REPO,
                       env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("Usage: pipeline/train.py [OPTIONS] SPLIT")
    assert "--wait SECONDS" in r.stdout and "--params" in r.stdout


def test_evaluate_summary_is_reproducible_to_the_byte(trained):
    _stage(trained, "evaluate.py")
    summary = trained / "metrics" / "summary.json"
    first = summary.read_bytes()
    figures = sorted(p.name for p in (trained / "metrics" / "attention").iterdir())
    _stage(trained, "evaluate.py")
    assert summary.read_bytes() == first
    assert sorted(p.name for p in (trained / "metrics" / "attention").iterdir()) == figures
    assert len(figures) == 2
    # and what it holds: mean and sample sd over the per-split metrics, computed apart
    s = json.loads(first)
    per = [json.loads((trained / "metrics" / "splits" / f"{k}.json").read_text()) for k in (1, 2)]
    assert s["splits"] == [1, 2] and s["n_splits"] == 2
    # what `dvc metrics show` prints of it: the numbers a reader compares (issue 19)
    assert sorted(s) == ["mse", "n_splits", "rho", "splits"]
    for key in ("rho", "mse"):
        vals = [m[key] for m in per]
        assert s[key]["values"] == vals
        assert s[key]["mean"] == pytest.approx((vals[0] + vals[1]) / 2, rel=1e-12)
        assert s[key]["sd"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5, rel=1e-12)
    assert "human_rho" not in s  # the demo records no human consistency


def test_evaluate_draws_its_figures_as_predict_does(trained, tmp_path):
    """issue 24: evaluate's figures go through `amnet predict`'s code (report.write_predictions),
    its cache-provenance check included: a cache of other features is refused in one line,
    where its own loop scored it silently."""
    from amnet.extract.run import extract
    proj = _copy(trained, tmp_path)
    p = _stage(proj, "evaluate.py")
    assert p.stdout.strip().splitlines()[-1] == (
        f"evaluate: 2 attention figures of split 1 -> {Path('metrics/attention')}")
    other = proj / "data" / "features" / "demo.h5"
    other.unlink()
    extract(_items(proj), other, weights="random:1", image_size=32, device="cpu",
            batch_size=8, progress=False)
    p = _stage(proj, "evaluate.py", check=False)
    assert p.returncode == 1
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith(f"evaluate: feature cache {Path('data/features/demo.h5')}"), line
    assert "random:1" in line and line.endswith("score it with a head trained on this cache"), line


def test_evaluate_changes_when_a_split_metric_changes(trained, tmp_path):
    """Not a constant file: other inputs, other bytes."""
    proj = _copy(trained, tmp_path)
    _stage(proj, "evaluate.py")
    before = (proj / "metrics" / "summary.json").read_bytes()
    m = proj / "train" / "2" / "metrics.json"   # train@2's run record
    d = json.loads(m.read_text())
    d["rho"] = d["rho"] + 0.125
    m.write_text(json.dumps(d))
    _stage(proj, "evaluate.py")
    after = json.loads((proj / "metrics" / "summary.json").read_text())
    assert (proj / "metrics" / "summary.json").read_bytes() != before
    assert after["rho"]["values"][1] == d["rho"]
    assert json.loads((proj / "metrics" / "splits" / "2.json").read_text())["rho"] == d["rho"]


def _csv(path: Path) -> list[dict[str, str]]:
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_reports_exactly_the_configured_splits(trained, tmp_path):
    """The report is rebuilt from data.splits: the train stages' records, copied and merged, and
    nothing of a split no longer configured (its record may still lie in train/)."""
    proj = _copy(trained, tmp_path)
    _stage(proj, "evaluate.py")
    metrics = proj / "metrics"
    assert sorted(p.name for p in (metrics / "splits").iterdir()) == ["1.json", "2.json"]
    for k in (1, 2):   # what a reader compares of train@k's record (the rest stays there)
        from amnet.head.gather import SPLIT_KEYS
        record = json.loads((proj / "train" / str(k) / "metrics.json").read_text())
        assert json.loads((metrics / "splits" / f"{k}.json").read_text()) == {
            key: record[key] for key in SPLIT_KEYS}
    history = _csv(metrics / "history.csv")
    assert list(history[0]) == ["split", "epoch", "train_loss", "val_rho", "val_mse", "lr",
                                "seconds"]
    assert [(r["split"], r["epoch"]) for r in history] == [("1", "1"), ("1", "2"), ("2", "1"),
                                                           ("2", "2")]
    own = _csv(proj / "train" / "2" / "history.csv")
    assert [{k: v for k, v in r.items() if k != "split"} for r in history[2:]] == own
    predictions = _csv(metrics / "predictions.csv")
    assert len(predictions) == 16 and list(predictions[0])[:4] == ["split", "name", "gt", "pred"]

    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"]["splits"] = [2]                      # split 1 dropped; train/1 stays
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _stage(proj, "evaluate.py")
    assert sorted(p.name for p in (metrics / "splits").iterdir()) == ["2.json"]
    assert {r["split"] for r in _csv(metrics / "history.csv")} == {"2"}
    assert {r["split"] for r in _csv(metrics / "predictions.csv")} == {"2"}
    s = json.loads((metrics / "summary.json").read_text())
    assert s["splits"] == [2] and s["n_splits"] == 1


def test_evaluate_names_a_split_that_was_not_trained(trained, tmp_path):
    proj = _copy(trained, tmp_path)
    _stage(proj, "evaluate.py")
    before = {p: p.read_bytes() for p in (proj / "metrics").rglob("*") if p.is_file()}
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"]["splits"] = [1, 3]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = _stage(proj, "evaluate.py", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (f"evaluate: {Path('train/3/metrics.json')} not found: split 3 has "
                                "not been trained (run `dvc repro train@3`)")
    assert {p: p.read_bytes() for p in (proj / "metrics").rglob("*") if p.is_file()} == before


def test_train_and_evaluate_warn_about_small_test_sets(trained, tmp_path):
    """40 images give 8-image test splits: their rho means little, and the stages say so
    (amnet.core.caveats), without failing."""
    from amnet.core.caveats import small_test

    proj = _copy(trained, tmp_path)
    sizes = [(json.loads((proj / "train" / str(k) / "metrics.json").read_text())["n"],
              f"split {k}") for k in (1, 2)]
    assert min(sizes)[0] < 30
    p = _stage(proj, "evaluate.py")
    assert f"evaluate: {small_test(*min(sizes))}" in p.stderr.splitlines()
    p = _stage(proj, "train.py", "1")
    assert small_test(sizes[0][0], "data/demo/splits/test_1.txt") in p.stderr.splitlines()


# ---- params.yaml checked at stage start ------------------------------------------------------

@pytest.mark.parametrize("script,args,section,key", [
    ("train.py", ("1",), "train", "epoch"),          # `dvc exp run -S +train.epoch=3`
    ("extract.py", (), "backbone", "workers"),       # a knob in the tracked section
])
def test_unknown_params_key_stops_the_stage_with_one_line(project, tmp_path, script, args,
                                                          section, key):
    from amnet.cli.params import section_keys
    proj = _copy(project, tmp_path)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params[section][key] = 3
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = sorted(p.relative_to(proj) for p in proj.rglob("*"))
    p = _stage(proj, script, *args, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    stage = script.removesuffix(".py") + ("@1" if args else "")
    assert len(lines) == 1 and lines[0].startswith(
        f"{stage}: params.yaml: unknown key {section}.{key} "
        f"(valid: {', '.join(sorted(section_keys(section)))})"), p.stderr
    assert sorted(p.relative_to(proj) for p in proj.rglob("*")) == before  # nothing written
