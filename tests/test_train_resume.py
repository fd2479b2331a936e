"""Resumable stage-two training and outputs published together (amnet.head.epochs, amnet.head.train_state,
amnet.head.publish): a run killed at any point, rerun, ends exactly like one never interrupted."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch

from amnet.core.atomic import temp_path

import amnet.head.epochs
import amnet.head.publish
from amnet.core.settings import AMNetConfig
from amnet.head.run import train_split
from test_train import TINY, _one_thread, quick_cfg, run, synthetic  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("head.pt", "history.csv", "predictions.csv", "metrics.json")

# a run in a separate process, so that it can be killed with SIGKILL
CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from amnet.head.model import AMNetConfig
from amnet.head.run import TrainConfig, train_split
a = json.loads(sys.argv[1])
train_split(a["cache"], a["train"], a["val"], a["test"], a["out"], AMNetConfig(**a["model"]),
            TrainConfig(**a["cfg"]))
"""


class Interrupted(Exception):
    pass


def interrupt_at_epoch(monkeypatch, epoch: int) -> None:
    """Make the next run fail as its `epoch`-th epoch starts (the state of epoch - 1 is saved)."""
    calls = {"n": 0}
    real = amnet.head.epochs.train_epoch

    def train_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise Interrupted(f"stopped at epoch {epoch}")
        return real(*args, **kwargs)
    monkeypatch.setattr(amnet.head.epochs, "train_epoch", train_epoch)


def assert_same_training(m: dict, ref: dict, a: Path, b: Path) -> None:
    """Metrics `m` (of the run in `a`) equal `ref`'s (of the run in `b`), and so do the head's
    weights, tensor for tensor (the metrics files may differ in the paths they record)."""
    for k in ("rho", "mse", "val_rho", "val_mse", "best_epoch"):
        assert m[k] == ref[k], k
    ha, hb = (torch.load(d / "head.pt", weights_only=True)["state_dict"] for d in (a, b))
    assert ha.keys() == hb.keys() and all(torch.equal(ha[k], hb[k]) for k in ha)


def stopped_after_epoch_2_of_4(tmp_path, monkeypatch) -> tuple[Path, dict[str, Path], Path]:
    """A 4-epoch run into tmp_path/o, stopped as epoch 3 starts: (cache, split files, its state)."""
    cache, files = synthetic(tmp_path, n=(96, 32, 32))
    state = tmp_path / "o" / ".train-state" / "head.pt.state"
    interrupt_at_epoch(monkeypatch, 3)
    with pytest.raises(Interrupted):
        run(tmp_path, "o", cache, files, epochs=4)
    monkeypatch.undo()
    assert torch.load(state, weights_only=True)["epoch"] == 2
    return cache, files, state


def resume_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "resumed" in r.getMessage() or "starting fresh" in r.getMessage()]


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith(".tmp") or ".tmp-" in p.name or ".staged-" in p.name
                  or p.name == ".train-state")


def assert_same_outputs(a: Path, b: Path) -> None:
    """Same bytes of metrics.json and predictions.csv, the same checkpoint (every tensor and
    every other entry), the same history but for its per-epoch seconds."""
    for name in ("metrics.json", "predictions.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ca, cb = (torch.load(d / "head.pt", weights_only=True) for d in (a, b))
    sa, sb = ca.pop("state_dict"), cb.pop("state_dict")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ca == cb
    ha, hb = (pd.read_csv(d / "history.csv") for d in (a, b))
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"),
                                  check_exact=True)


@pytest.mark.slow
def test_kill_9_mid_training_resumes_to_identical_outputs(tmp_path, caplog):
    epochs = 8                  # ~0.3 s each: the kill lands well before the last one
    cache, files = synthetic(tmp_path, n=(400, 40, 40), flip=True)
    mc, cfg = AMNetConfig(**TINY), quick_cfg(epochs=epochs, batch_size=16)
    out = tmp_path / "o"
    # the uninterrupted run, moved aside: the killed one writes to the same paths
    train_split(cache, files["train"], files["val"], files["test"], out, mc, cfg)
    shutil.move(out, tmp_path / "ref")

    args = {"cache": str(cache), **{k: str(p) for k, p in files.items()}, "out": str(out),
            "model": mc.to_dict(), "cfg": asdict(cfg)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    state = out / ".train-state" / "head.pt.state"
    with open(tmp_path / "child.err", "w") as err:
        p = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, env=env,
                             stderr=err)
        killed_at, seen, deadline = None, None, time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:
            stamp = state.stat().st_mtime_ns if state.is_file() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                if torch.load(state, weights_only=True)["epoch"] >= 2:
                    os.kill(p.pid, signal.SIGKILL)        # mid-run: epoch 3 (or later) started
                    killed_at = True
                    break
            time.sleep(0.005)
        p.wait(timeout=60)
    assert killed_at and p.returncode == -signal.SIGKILL, (tmp_path / "child.err").read_text()
    done = torch.load(state, weights_only=True)["epoch"]
    assert 2 <= done < epochs
    assert not any((out / name).exists() for name in OUTPUTS)

    caplog.clear()            # only this run's records (earlier runs log too at INFO)
    with caplog.at_level(logging.INFO, logger="amnet.train"):
        m = train_split(cache, files["train"], files["val"], files["test"], out, mc, cfg)
    assert resume_lines(caplog) == [f"resumed at epoch {done + 1} of {epochs} from {state} "
                                    f"(epochs 1-{done} done)"]
    trained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [t.split()[1] for t in trained] == [f"{e}/{epochs}" for e in range(done + 1, epochs + 1)]
    assert_same_outputs(out, tmp_path / "ref")
    assert m == json.loads((out / "metrics.json").read_text())
    assert leftovers(tmp_path) == []


def test_a_crash_while_publishing_is_redone(tmp_path, monkeypatch, caplog):
    cache, files = synthetic(tmp_path, n=(96, 32, 32))
    out = tmp_path / "o"
    run(tmp_path, "o", cache, files)
    shutil.move(out, tmp_path / "ref")
    run(tmp_path, "o", cache, files, epochs=1, lr=1e-3)      # an earlier run's outputs in place
    old_history = (out / "history.csv").read_bytes()

    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "history.csv":
            raise OSError("disk gone")
        return real(src, dst)
    monkeypatch.setattr(amnet.head.publish.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        run(tmp_path, "o", cache, files)
    monkeypatch.undo()
    # the new head went in first, but never beside the old run's metrics: those went before it
    assert not (out / "metrics.json").exists()
    new_head = torch.load(out / "head.pt", weights_only=True)["state_dict"]
    ref_head = torch.load(tmp_path / "ref" / "head.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(new_head[k], ref_head[k]) for k in ref_head)
    assert (out / "history.csv").read_bytes() == old_history
    # the staged files that were not renamed yet are removed at once; the state stays
    assert leftovers(tmp_path) == ["o/.train-state"]
    assert (out / ".train-state" / "head.pt.state").is_file()

    caplog.clear()            # only this run's records (earlier runs log too at INFO)
    with caplog.at_level(logging.INFO, logger="amnet.train"):
        run(tmp_path, "o", cache, files)
    assert resume_lines(caplog) == [f"resumed after the last epoch (2 of 2) from "
                                    f"{out / '.train-state' / 'head.pt.state'}: publishing the outputs"]
    assert not any(r.getMessage().startswith("epoch ") for r in caplog.records)   # no training
    assert_same_outputs(out, tmp_path / "ref")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("change", ["config", "split", "unreadable"])
def test_a_changed_run_starts_fresh(tmp_path, monkeypatch, caplog, change):
    cache, files, state = stopped_after_epoch_2_of_4(tmp_path, monkeypatch)
    kw = dict(epochs=4)
    if change == "config":
        kw["lr"] = 1e-3
    elif change == "split":       # one score changed: another run
        lines = files["train"].read_text().splitlines(keepends=True)
        name, score = lines[0].split()
        files["train"].write_text("".join([f"{name} {float(score) / 2:.6f}\n", *lines[1:]]))
    else:
        state.write_bytes(b"half a file")
    caplog.clear()            # only this run's records (earlier runs log too at INFO)
    with caplog.at_level(logging.INFO, logger="amnet.train"):
        m = run(tmp_path, "o", cache, files, **kw)
    (line,) = resume_lines(caplog)
    why = ("unreadable training state (" if change == "unreadable"
           else "training state of a run with other settings or inputs")
    assert line.startswith(f"{state}: {why}") and line.endswith("; starting fresh")
    trained = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert trained == ["1/4", "2/4", "3/4", "4/4"]
    ref = run(tmp_path, "ref", cache, files, **kw)                 # the same run from scratch
    assert_same_training(m, ref, tmp_path / "o", tmp_path / "ref")
    assert leftovers(tmp_path) == []


def test_the_same_split_files_named_another_way_resume(tmp_path, monkeypatch, caplog):
    """The fingerprint holds the split files' contents, not their paths: the same files copied
    elsewhere and named by a relative path resume the run; the outputs equal an uninterrupted run's."""
    cache, files, state = stopped_after_epoch_2_of_4(tmp_path, monkeypatch)
    copies = tmp_path / "elsewhere"
    copies.mkdir()
    for f in files.values():
        shutil.copy(f, copies / f.name)
    monkeypatch.chdir(tmp_path)
    moved = {part: Path("elsewhere") / f.name for part, f in files.items()}
    caplog.clear()            # only this run's records (earlier runs log too at INFO)
    with caplog.at_level(logging.INFO, logger="amnet.train"):
        run(tmp_path, "o", cache, moved, epochs=4)
    assert resume_lines(caplog) == [f"resumed at epoch 3 of 4 from {state} (epochs 1-2 done)"]
    ref = run(tmp_path, "ref", cache, files, epochs=4)
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert_same_training(m, ref, tmp_path / "o", tmp_path / "ref")
    predictions = [(tmp_path / d / "predictions.csv").read_bytes() for d in ("o", "ref")]
    assert predictions[0] == predictions[1]
    assert "elsewhere" in json.dumps(m) and "elsewhere" not in json.dumps(ref)   # provenance: the files used


def test_state_lives_beside_the_checkpoint_and_nothing_is_left(tmp_path, monkeypatch, caplog):
    """The DVC stage's layout: the state in models/.train-state/, not among the declared outputs
    (which DVC deletes before a re-run); temp files of an earlier failed run are cleaned."""
    cache, files = synthetic(tmp_path, n=(96, 32, 32))
    paths = dict(checkpoint_path=tmp_path / "models" / "1.pt",
                 history_path=tmp_path / "train" / "1" / "history.csv",
                 predictions_path=tmp_path / "train" / "1" / "predictions.csv",
                 metrics_path=tmp_path / "train" / "1" / "metrics.json")
    state = tmp_path / "models" / ".train-state" / "1.pt.state"
    for p in paths.values():  # staged outputs of amnet.head.publish
        p.parent.mkdir(parents=True, exist_ok=True)
        p.with_name(p.name + ".tmp").write_bytes(b"left by a killed run")
    state.parent.mkdir(parents=True)  # a state write (amnet.core.atomic) of a killed process 99999
    stale_state = state.with_name(temp_path(state).name.replace(f"-{os.getpid()}", "-99999"))
    stale_state.write_bytes(b"left by a killed run")

    def go(**kw):
        return train_split(cache, files["train"], files["val"], files["test"], tmp_path / "unused",
                           AMNetConfig(**TINY), quick_cfg(epochs=3, **kw), **paths)
    interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(Interrupted):
        go()
    monkeypatch.undo()
    assert state.is_file() and torch.load(state, weights_only=True)["epoch"] == 1
    assert not any(p.exists() for p in paths.values())
    assert leftovers(tmp_path) == ["models/.train-state"]         # the stale *.tmp are gone
    for p in paths.values():                                      # as `dvc repro` does
        p.unlink(missing_ok=True)
    caplog.clear()            # only this run's records (earlier runs log too at INFO)
    with caplog.at_level(logging.INFO, logger="amnet.train"):
        m = go()
    assert resume_lines(caplog) == [f"resumed at epoch 2 of 3 from {state} (epoch 1 done)"]
    assert all(p.is_file() for p in paths.values()) and m["checkpoint"] == str(paths["checkpoint_path"])
    assert leftovers(tmp_path) == [] and not (tmp_path / "unused").exists()
    ref = run(tmp_path, "ref", cache, files, epochs=3)
    assert (m["rho"], m["mse"], m["best_epoch"]) == (ref["rho"], ref["mse"], ref["best_epoch"])
