"""A full disk (issue 11, defect 6): ENOSPC while extracting, training, merging or repairing is one
line naming the file, the free space and about how much more is needed; what was done is kept
and the same command resumes; temp files of killed runs are cleaned by the next run (only those
of dead processes).

The disk is filled by injection: h5py's writes (`h5py.Dataset.__setitem__`) and torch.save raise
what they raise on a full disk -- an OSError errno 28 whose message names the file (h5py), a
RuntimeError whose context is the OSError (torch.save into a file object).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import click
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import amnet.core.diskspace
import amnet.extract.run
import amnet.head.train_state
from amnet.cli import cache_cli, main
from amnet.cli._errors import amnet_errors
from amnet.core.atomic import pid_alive, remove_stale_temps, temp_path
from amnet.core.diskspace import disk_full_cause, human_bytes
from amnet.cache.reader import FeatureCache
from amnet.extract.image_files import list_image_folder
from amnet.head.train_state import state_path
from conftest import error_line, sha256_of
from test_train import _one_thread, synthetic  # noqa: F401 (fixture)

FREE = 1_234_567          # what the full disk reports free (diskspace.free_bytes is patched)


@pytest.fixture(autouse=True)
def fixed_free_space(monkeypatch):
    monkeypatch.setattr(amnet.core.diskspace, "free_bytes", lambda path: FREE)


def h5_enospc(path) -> OSError:
    """What h5py raises when the disk is full (errno set, `filename` not)."""
    return OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: time = x, "
                   f"filename = '{path}', file descriptor = 3, errno = 28, error message = 'No "
                   "space left on device', buf = 0x1, total write size = 8192, bytes this "
                   "sub-write = 8192, offset = 8192)")


def torch_enospc(*args, **kwargs):
    """What torch.save into a file object raises when the disk is full."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def fill_disk_for_h5(monkeypatch, match: str, after: int = 0) -> dict:
    """Make h5py writes to a file whose name contains `match` fail with ENOSPC after `after`
    successful ones."""
    real = h5py.Dataset.__setitem__
    calls = {"n": 0}

    def setitem(self, key, value):
        if match in self.file.filename:
            calls["n"] += 1
            if calls["n"] > after:
                raise h5_enospc(self.file.filename)
        return real(self, key, value)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    return calls


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid)
    return p.pid


# ---- the line itself ----------------------------------------------------------------------------

def test_the_line_names_file_free_and_needed(tmp_path):
    e = amnet.core.diskspace.disk_full_error(h5_enospc(tmp_path / "f.h5"), needed=3_200_000,
                                        kept="the 4 images extracted so far are kept")
    assert str(e) == (f"{tmp_path / 'f.h5'}: no space left on device (1.2 MB free there, about "
                      "3.2 MB more needed); free some space (or write to another disk) and rerun; "
                      "the 4 images extracted so far are kept")
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    quota.filename = "/x/y.csv"
    assert str(amnet.core.diskspace.disk_full_error(quota)) == (
        "/x/y.csv: the disk quota is used up (1.2 MB free there); free some space (or write to "
        "another disk) and rerun")
    assert [human_bytes(n) for n in (0, 999, 401_408, 24e9, 3.5e12)] == \
        ["0 B", "999 B", "401 KB", "24.0 GB", "3.5 TB"]
    with pytest.raises(RuntimeError) as r:
        torch_enospc()
    assert disk_full_cause(r.value).errno == errno.ENOSPC
    assert disk_full_cause(OSError(errno.EIO, "io")) is None


def test_cli_boundary_turns_any_enospc_into_error_line(tmp_path):
    @click.command()
    @click.option("--out")
    @amnet_errors
    def cmd(out):
        with open(out, "w") as fh:             # plain Python: errno set, filename not
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as e:
                e.filename = out
                raise e from None
            fh.write("x")
    res = CliRunner().invoke(cmd, ["--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1
    assert error_line(res) == (f"{tmp_path / 'o.csv'}: no space left on device (1.2 MB free "
                               "there); free some space (or write to another disk) and rerun")


# ---- extract ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_extract_disk_full_keeps_rows_and_resumes(tmp_path, image_dir, backbones, monkeypatch):
    monkeypatch.setattr(amnet.extract.run, "load_backbone", lambda *a, **k: backbones("random:0"))
    out = tmp_path / "c.h5"
    args = ["extract", str(image_dir), "--out", str(out), "--weights", "random:0",
            "--image-size", "32", "--device", "cpu", "--batch-size", "4", "--workers", "0", "-q"]
    calls = fill_disk_for_h5(monkeypatch, "c.h5", after=2)     # batch 2's rows fail
    res = CliRunner().invoke(cache_cli, args)
    assert res.exit_code == 1 and calls["n"] == 3
    row = 1024 * 2 * 2 * 2
    assert error_line(res) == (
        f"{out}: no space left on device (1.2 MB free there, about {human_bytes(7 * row)} more "
        f"needed); free some space (or write to another disk) and rerun; the 4 images extracted "
        f"so far are kept in {out}: the rerun resumes")
    with FeatureCache(out) as fc:
        assert sum(n in fc for n in fc.names) == 4
    monkeypatch.undo()
    monkeypatch.setattr(amnet.extract.run, "load_backbone", lambda *a, **k: backbones("random:0"))
    res = CliRunner().invoke(cache_cli, args)
    assert res.exit_code == 0, res.output
    ref = tmp_path / "ref.h5"
    assert CliRunner().invoke(cache_cli, args[:3] + [str(ref)] + args[4:]).exit_code == 0
    with FeatureCache(out) as a, FeatureCache(ref) as b:
        assert a.complete and np.array_equal(a.load(a.names).numpy(), b.load(b.names).numpy())


def test_extract_cleans_a_killed_creation(tmp_path, image_dir, backbones):
    out = tmp_path / "c.h5"
    stale = temp_path(out, "creating").with_name(f".c.creating-{dead_pid()}.h5")
    stale.write_bytes(b"half a file")
    amnet.extract.run.extract(list_image_folder(image_dir), out, weights="random:0", image_size=32,
                          device="cpu", progress=False, backbone=backbones("random:0"))
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "images"]


# ---- train ------------------------------------------------------------------------------------

def train_args(cache, files, out, epochs=3):
    return ["train", "--cache", str(cache), "--train", str(files["train"]), "--val",
            str(files["val"]), "--test", str(files["test"]), "--out", str(out), "--epochs",
            str(epochs), "--batch-size", "16", "--feature-dim", "16", "--hidden-dim", "16",
            "--regressor-dim", "8", "--workers", "0", "-q"]


def test_train_disk_full_keeps_the_last_epoch_and_resumes(tmp_path, monkeypatch):
    cache, files = synthetic(tmp_path, n=(64, 16, 16))
    out = tmp_path / "o"
    real = amnet.head.train_state.torch_save
    saves = {"n": 0}

    def save(obj, path):                 # the state of epoch 2 does not fit
        saves["n"] += 1
        return torch_enospc() if saves["n"] == 2 else real(obj, path)
    monkeypatch.setattr(amnet.head.train_state, "torch_save", save)
    res = CliRunner().invoke(main, train_args(cache, files, out))
    state = state_path(out / "head.pt")
    kept = torch.load(state, weights_only=True)
    assert res.exit_code == 1 and kept["epoch"] == 1
    from amnet.head.checkpoint import save_size
    assert error_line(res) == (
        f"{state}: no space left on device (1.2 MB free there, about "
        f"{human_bytes(save_size(kept))} more needed); free some space (or write to another "
        f"disk) and rerun; the state of epoch 1 is kept in {state}: the rerun goes on from it")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [".train-state",
                                                                       ".train-state/head.pt.state"]
    monkeypatch.undo()
    assert CliRunner().invoke(main, train_args(cache, files, out)).exit_code == 0
    assert CliRunner().invoke(main, train_args(cache, files, tmp_path / "ref")).exit_code == 0
    for name in ("metrics.json", "predictions.csv"):
        a, b = (out / name).read_text(), (tmp_path / "ref" / name).read_text()
        assert a.replace(str(out), "X") == b.replace(str(tmp_path / "ref"), "X"), name


def test_train_disk_full_while_publishing_leaves_no_temps(tmp_path, monkeypatch):
    import amnet.head.run
    cache, files = synthetic(tmp_path, n=(64, 16, 16))
    out = tmp_path / "o"
    monkeypatch.setattr(amnet.head.run, "torch_save", torch_enospc)
    res = CliRunner().invoke(main, train_args(cache, files, out, epochs=1))
    state = state_path(out / "head.pt")
    assert res.exit_code == 1
    line = error_line(res)
    assert line.startswith(f"{out / 'head.pt'}: no space left on device (1.2 MB free there, about ")
    assert line.endswith(f"; free some space (or write to another disk) and rerun; training is "
                         f"done and its state kept in {state}: the rerun only writes the outputs")
    assert sorted(p.name for p in out.iterdir()) == [".train-state"]      # no head.pt.tmp
    monkeypatch.undo()
    res = CliRunner().invoke(main, train_args(cache, files, out, epochs=1))
    assert res.exit_code == 0 and (out / "head.pt").is_file() and not state.exists()


def test_train_cleans_temps_of_dead_runs_only(tmp_path):
    cache, files = synthetic(tmp_path, n=(64, 16, 16))
    out = tmp_path / "o"
    out.mkdir()
    dead, live = dead_pid(), os.getppid()
    stale = [out / f".head.staged-{dead}.pt", out / f".metrics.staged-{dead}.json",
             out / "head.pt.tmp"]                           # the last: older amnet's name
    running = out / f".history.staged-{live}.csv"           # another run, still going
    for p in stale + [running]:
        p.write_bytes(b"left behind")
    assert CliRunner().invoke(main, train_args(cache, files, out, epochs=1)).exit_code == 0
    assert not any(p.exists() for p in stale) and running.exists()


# ---- merge and repair ---------------------------------------------------------------------------

def test_merge_disk_full_touches_nothing(tmp_path, monkeypatch):
    from test_train import write_cache
    names = [f"img{i:03d}.jpg" for i in range(40)]
    feats = np.random.default_rng(0).standard_normal((40, 8, 4, 4)).astype(np.float32)
    a = write_cache(tmp_path / "a.h5", names[:20], feats[:20])
    b = write_cache(tmp_path / "b.h5", names[20:], feats[20:])
    before = sha256_of(a), sha256_of(b)
    out = tmp_path / "m.h5"
    dead = out.with_name(f".m.merging-{dead_pid()}.h5")      # a killed merge's leftover
    dead.write_bytes(b"x" * 1000)
    fill_disk_for_h5(monkeypatch, ".m.merging-")
    res = CliRunner().invoke(cache_cli, ["merge", str(out), str(a), str(b)])
    assert res.exit_code == 1
    needed = a.stat().st_size + b.stat().st_size
    assert error_line(res) == (
        f"{out}: no space left on device (1.2 MB free there, about {human_bytes(needed)} more "
        f"needed); free some space (or write to another disk) and rerun; the shards are "
        f"untouched and nothing was written to {out}")
    assert (sha256_of(a), sha256_of(b)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]   # stale one gone too
    monkeypatch.undo()
    res = CliRunner().invoke(cache_cli, ["merge", str(out), str(a), str(b)])
    assert res.exit_code == 0 and CliRunner().invoke(cache_cli, ["verify", str(out)]).exit_code == 0


def test_repair_disk_full_touches_nothing(tmp_path, monkeypatch):
    cache, _ = synthetic(tmp_path, n=(30, 5, 5))
    data = cache.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:int(len(data) * 0.7)])
    fill_disk_for_h5(monkeypatch, ".fixed.repairing-")
    out = tmp_path / "fixed.h5"
    res = CliRunner().invoke(cache_cli, ["repair", str(cut), str(out)])
    assert res.exit_code == 1
    line = error_line(res)
    assert line.startswith(f"{out}: no space left on device (1.2 MB free there, about ")
    assert line.endswith(f"; free some space (or write to another disk) and rerun; {cut} is "
                         f"untouched and nothing was written to {out}")
    assert cut.read_bytes() == data[:int(len(data) * 0.7)] and not out.exists()
    assert not list(tmp_path.glob(".fixed.*"))


def test_predict_cleans_partial_csvs_of_dead_runs(tmp_path):
    from amnet.predict.report import write_predictions
    out = tmp_path / "p.csv"
    dead = out.with_name(f".p.partial-{dead_pid()}.csv")
    live = out.with_name(f".p.partial-{os.getppid()}.csv")
    for p in (dead, live):
        p.write_text("half")

    class Nothing:                       # write_predictions needs only these of a Predictor
        checkpoint_labels, steps, image_size = [], 3, 32

        def precision_caveat(self, *args):
            return None
    write_predictions(Nothing(), [], out, progress=False)
    assert not dead.exists() and live.exists() and out.read_text().startswith("path,score")


def test_remove_stale_temps_spares_live_and_own(tmp_path):
    target = tmp_path / "x.h5"
    names = {f".x.merging-{pid}.h5": alive for pid, alive in
             ((dead_pid(), False), (os.getpid(), True), (os.getppid(), True))}
    for n in names:
        (tmp_path / n).write_bytes(b"")
    (tmp_path / ".x.merging-notapid.h5").write_bytes(b"")
    removed = remove_stale_temps(target, "merging")
    assert [p.name for p in removed] == [n for n, alive in names.items() if not alive]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [n for n, alive in names.items() if alive] + [".x.merging-notapid.h5"])
    assert json.dumps([str(p) for p in removed])      # plain paths


def test_predict_disk_full_writes_no_csv(tmp_path, monkeypatch):
    import amnet.predict.report
    from amnet.core.errors import DiskFullError

    class FullWriter:
        def __init__(self, fh):
            pass

        def writerow(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

    class Nothing:
        checkpoint_labels, steps, image_size = [], 3, 32

        def precision_caveat(self, *args):
            return None
    monkeypatch.setattr(amnet.predict.report.csv, "writer", FullWriter)
    out = tmp_path / "p.csv"
    with pytest.raises(DiskFullError) as e:
        amnet.predict.report.write_predictions(Nothing(), [], out, progress=False)
    assert str(e.value) == (f"{out}: no space left on device (1.2 MB free there); free some "
                            f"space (or write to another disk) and rerun; no CSV was written to "
                            f"{out}")
    assert list(tmp_path.iterdir()) == []
