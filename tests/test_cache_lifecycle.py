"""Stage one's file lifecycle (issue 11, defects 2, 5, 8, 9): the writer lock of an output file
(a live writer is waited for or named, a dead one's lock is taken, a writer that lost its lock
renames nothing), resuming after the list lost names that hold no features, `--retry-failed`,
per-shard file names, and merging only whole shard sets (`--allow-partial`, `verify`).

Every refusal: exit 1, one line naming the file and what to do, and the file byte-identical.
CPU, `random:0` weights at --image-size 32; child processes hold locks for real."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from amnet.cli import cache_cli
from amnet.core import lockfile
from amnet.core.atomic import atomic_write_bytes, atomic_path
from amnet.core.errors import CacheError, LockedError, LockLostError
from amnet.cache.ops import merge, relist
from amnet.cache.reader import FeatureCache
from amnet.extract.image_files import list_image_folder
from amnet.extract.run import extract
from amnet.extract.shards import shard_path
from conftest import subprocess_env, write_image

NAMES = ["UPPER.JPEG"] + [f"img{i:02d}.jpg" for i in range(9)] + ["sub/deep.jpg"]
HOST = socket.gethostname()
KW = dict(weights="random:0", image_size=32, device="cpu", batch_size=2, workers=0,
          precision="fp32")
CLI_KW = ["--weights", "random:0", "--image-size", "32", "--device", "cpu", "--batch-size", "2",
          "--workers", "0", "--precision", "fp32"]


def run_cli(*args: str):
    return CliRunner().invoke(cache_cli, list(args), catch_exceptions=False)


def error_line(res) -> str:
    """The one line a refused command prints (exit 1, `Error: ...`)."""
    assert res.exit_code == 1, res.output
    lines = res.output.splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def rows(path) -> dict:
    """Every extracted row's bytes, by name, and the failed record."""
    with h5py.File(path, "r") as f:
        names = f["names"].asstr()[:].tolist()
        done = f["done"][:]
        out = {n: f["features"][i].tobytes() for i, n in enumerate(names) if done[i]}
        failed = dict(zip(f["failed/names"].asstr()[:], f["failed/reasons"].asstr()[:]))
    return {"rows": out, "names": names, "failed": failed}


def lib(items, out, backbones, **kw):
    return extract(items, out, progress=False, backbone=backbones("random:0", "fp32"),
                   **{**KW, **kw})


# ---- the writer lock --------------------------------------------------------------------------

_PAUSED = """\
import json, os, sys, time
from amnet.extract.run import extract
from amnet.extract.image_files import list_image_folder
root, out, ready, go, kw = sys.argv[1:5] + [json.loads(sys.argv[5])]


def hook(batches, extracted):
    if batches == 1:  # one batch written: hold on, as a slow run would
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.05)


print(json.dumps(extract(list_image_folder(root), out, on_batch=hook, progress=False, **kw)))
"""


def _start_paused(tmp_path, image_dir, out, **kw):
    """A child python extracting `image_dir` into `out`, paused after its first batch (while
    holding the lock) until `go` exists; returns (Popen, go)."""
    script, ready, go = tmp_path / "paused.py", tmp_path / "ready", tmp_path / "go"
    script.write_text(_PAUSED)
    p = subprocess.Popen([sys.executable, str(script), str(image_dir), str(out), str(ready),
                          str(go), json.dumps({**KW, **kw})], env=subprocess_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    return p, go


def _busy_pattern(path, pid: int, waited: str = "") -> str:
    return (re.escape(f"Error: {path}: being written by pid {pid} on {HOST} (since ")
            + r"[0-9T:+-]+: paused\.py .*\)" + re.escape(
                f"{waited}; wait for it to finish (--wait SECONDS) or stop it (kill {pid}), "
                "then rerun"))


@pytest.mark.slow
def test_a_live_writer_is_named_then_waited_for(image_dir, tmp_path, backbones):
    """A second extract (and a merge into the same file) of a file a live child process writes
    is refused with one line naming it, the file untouched; with --wait it waits for the child,
    then finds the file complete: the child's rows, byte for byte an uninterrupted run's."""
    out = tmp_path / "f.h5"
    child, go = _start_paused(tmp_path, image_dir, out)
    try:
        assert json.loads(lockfile.lock_path(out).read_text())["pid"] == child.pid
        before = out.read_bytes()
        res = run_cli("extract", str(image_dir), "--out", str(out), *CLI_KW)
        assert re.fullmatch(_busy_pattern(out, child.pid), error_line(res))
        res = run_cli("extract", str(image_dir), "--out", str(out), "--overwrite", *CLI_KW)
        assert re.fullmatch(_busy_pattern(out, child.pid), error_line(res))
        res = run_cli("merge", str(out), str(tmp_path / "x.h5"), "--overwrite")
        assert res.exit_code == 2  # x.h5 does not exist: click refuses first; now a real input
        lib(list_image_folder(image_dir)[:2], tmp_path / "x.h5", backbones)
        res = run_cli("merge", str(out), str(tmp_path / "x.h5"), "--overwrite", "--wait", "0.3")
        assert re.fullmatch(_busy_pattern(out, child.pid, " (waited 0.3 s)"), error_line(res))
        assert out.read_bytes() == before  # nobody touched the child's file
        threading.Timer(1.0, go.touch).start()  # the child goes on in a second
        t0 = time.monotonic()
        res = run_cli("extract", str(image_dir), "--out", str(out), "--wait", "120", *CLI_KW)
        assert res.exit_code == 0, res.output
        assert "already complete (11 images); nothing to do" in res.output
        assert time.monotonic() - t0 >= 1.0
    finally:
        go.touch()
        stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    s = json.loads(stdout)
    assert s["extracted"] == 11 and s["complete"]
    ref = lib(list_image_folder(image_dir), tmp_path / "ref.h5", backbones)["out"]
    assert rows(out) == rows(ref)
    assert not lockfile.lock_path(out).exists()


def test_a_dead_writers_lock_is_taken(image_dir, tmp_path, caplog):
    """A lock left by a process that died (killed: no release) is stale on this host: the next
    extract removes it, says so, and resumes."""
    out = tmp_path / "f.h5"
    code = ("import os, sys; from amnet.core.lockfile import acquire; acquire(sys.argv[1]); "
            "os._exit(0)")
    p = subprocess.run([sys.executable, "-c", code, str(out)], env=subprocess_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    held = json.loads(lockfile.lock_path(out).read_text())
    assert held["host"] == HOST and lockfile.holder_alive(lockfile.Holder(**held)) is False
    with caplog.at_level("WARNING", logger="amnet.lock"):
        res = run_cli("extract", str(image_dir), "--out", str(out), *CLI_KW)
    assert res.exit_code == 0, res.output
    assert [r.getMessage() for r in caplog.records] == [
        f"{lockfile.lock_path(out)}: removed a stale lock of pid {held['pid']} on {HOST} "
        f"(since {held['since']}: -c {out}), which no longer runs"]
    assert not lockfile.lock_path(out).exists() and FeatureCache(out).complete


def _write_lock(path, **fields):
    d = dict(pid=os.getpid(), host=HOST, started=lockfile._process_start(os.getpid()),
             token="t0", command="amnet-cache extract x", since="2026-01-01T00:00:00+00:00")
    d.update(fields)
    lockfile.lock_path(path).write_text(json.dumps(d))


def test_stale_and_foreign_locks(tmp_path):
    out = tmp_path / "f.h5"
    lock = lockfile.lock_path(out)
    # our own pid with another start time: the pid was reused, the writer is gone
    _write_lock(out, started=12.0)
    with lockfile.hold(out) as lk:
        assert json.loads(lock.read_text())["token"] == lk.holder.token
    assert not lock.exists()
    # another host: cannot be checked from here, so never taken; the line says how to clear it
    _write_lock(out, host="elsewhere", pid=4242)
    with pytest.raises(LockedError) as e:
        lockfile.acquire(out, wait=0.2)
    assert str(e.value) == (f"{out}: being written by pid 4242 on elsewhere (since "
                            f"2026-01-01T00:00:00+00:00: amnet-cache extract x) (waited 0.2 s); "
                            f"wait for it (--wait SECONDS), or, if no such process runs on "
                            f"elsewhere any more, delete {lock}")
    # an empty lock file: being created (young), or left by a writer killed mid-creation (old)
    lock.write_text("")
    with pytest.raises(LockedError, match=re.escape(f"{out}: {lock} is being created by another "
                                                    f"process; rerun in a few seconds")):
        lockfile.acquire(out)
    old = time.time() - 60
    os.utime(lock, (old, old))
    lockfile.acquire(out).release()
    assert not lock.exists()


def test_a_writer_that_lost_its_lock_renames_nothing(tmp_path):
    """Deleted or taken over lock: check() raises, atomic_path leaves the target as it was, and
    release() never removes the new holder's lock."""
    out = tmp_path / "f.bin"
    atomic_write_bytes(out, b"theirs")
    with lockfile.hold(out) as lk:
        with lockfile.hold(out) as again:  # re-entrant within a process
            assert again is lk
        assert lockfile.lock_path(out).exists()
        _write_lock(out, pid=777, token="other", command="amnet-cache extract y")
        with pytest.raises(LockLostError) as e:
            with atomic_path(out, check=lk.check) as tmp:
                tmp.write_bytes(b"mine")
        assert str(e.value) == (
            f"{out}: this process (pid {os.getpid()}) lost its writer lock "
            f"{lockfile.lock_path(out)} (it is now held by pid 777 on {HOST} (since "
            f"2026-01-01T00:00:00+00:00: amnet-cache extract y)); it leaves {out} as it is: "
            "rerun the command once no other process writes it")
        lockfile.lock_path(out).unlink()
        with pytest.raises(LockLostError, match=r"\(its lock file was deleted\)"):
            lk.check()
        _write_lock(out, pid=777, token="other")
    assert out.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == [
        "f.bin", "f.bin.lock"]  # no temp left; the other holder's lock kept
    assert json.loads(lockfile.lock_path(out).read_text())["token"] == "other"


# ---- resuming after the list changed; --retry-failed ------------------------------------------

@pytest.mark.slow
def test_fail_then_delete_the_bad_image_resumes(image_dir, tmp_path, backbones):
    """--on-error fail stops at a bad image; deleting it and re-running resumes: every kept row
    byte-identical, only the missing ones extracted. Dropping an extracted image is refused."""
    bad = write_image(image_dir / "img04b.jpg", "truncated")  # 6th in sorted order
    out = tmp_path / "f.h5"
    args = ["extract", str(image_dir), "--out", str(out), *CLI_KW]
    res = run_cli(*args)
    assert "img04b.jpg" in error_line(res) and "kept in" in res.output
    kept = rows(out)
    # all before the bad file, and its batch-mate img05
    assert list(kept["rows"]) == NAMES[:7] and len(kept["names"]) == 12
    bad.unlink()
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1].endswith(
        "complete (1 images no longer listed, none extracted, dropped from the file; every "
        "extracted row kept)")
    assert "extracted 4 images" in res.output and "7 already there" in res.output
    got = rows(out)
    assert got["names"] == NAMES and list(got["rows"]) == NAMES and FeatureCache(out).complete
    assert all(got["rows"][n] == b for n, b in kept["rows"].items())  # nothing lost
    assert run_cli("verify", str(out)).exit_code == 0
    # an extracted image no longer listed: refused, the file untouched
    before = out.read_bytes()
    (image_dir / "img00.jpg").unlink()
    res = run_cli(*args)
    assert error_line(res) == (
        f"Error: {out}: made for another image list (11 names vs 10: 1 extracted images are not "
        "listed now, e.g. ['img00.jpg']); pass --overwrite to replace it (their features are "
        "dropped), or list them again")
    write_image(image_dir / "img00.jpg", seed=0)
    write_image(image_dir / "zz_new.jpg")
    res = run_cli(*args)
    assert error_line(res) == (
        f"Error: {out}: made for another image list (11 names vs 12: 1 new names, e.g. "
        "['zz_new.jpg']); extract them into another file and `amnet-cache merge` the two, or "
        "pass --overwrite to replace it")
    assert out.read_bytes() == before


def test_relist_keeps_the_file_when_it_fails(image_dir, tmp_path, backbones, monkeypatch):
    """The rewrite for a shorter list is atomic: an error half way leaves the old file."""
    out = tmp_path / "f.h5"
    items = list_image_folder(image_dir)
    with pytest.raises(KeyboardInterrupt):
        lib(items, out, backbones,
            on_batch=lambda b, e: (_ for _ in ()).throw(KeyboardInterrupt) if b == 2 else None)
    before = out.read_bytes()
    import amnet.cache.ops as ops

    def broken(*a, **k):
        raise OSError("disk on fire")
    monkeypatch.setattr(ops, "copy_rows", broken)
    with pytest.raises(OSError, match="disk on fire"):
        lib(items[:-1], out, backbones)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "images") == ["f.h5"]
    monkeypatch.undo()
    s = relist(out, [n for n, _ in items[:-1]])
    assert s == {"kept": 4, "dropped": 1}
    with pytest.raises(ValueError, match="holds features of dropped names"):
        relist(out, [n for n, _ in items[1:-1]])


@pytest.mark.slow
def test_retry_failed(image_dir, tmp_path, backbones):
    """--on-error skip records a bad image; once fixed, --retry-failed extracts it (and a still
    bad one is recorded again); without the flag nothing is retried."""
    bad = write_image(image_dir / "img04b.jpg", "truncated")
    out = tmp_path / "f.h5"
    args = ["extract", str(image_dir), "--out", str(out), "--on-error", "skip", *CLI_KW]
    res = run_cli(*args)
    assert res.exit_code == 0 and "1 failed in total; complete" in res.output
    first = rows(out)
    assert list(first["failed"]) == ["img04b.jpg"]
    write_image(bad, seed=4)  # fixed
    res = run_cli(*args)
    assert "already complete (11 images); nothing to do" in res.output
    assert rows(out) == first
    res = run_cli(*args, "--retry-failed")
    assert res.exit_code == 0, res.output
    assert "extracted 1 images" in res.output
    assert res.output.splitlines()[-1].endswith(
        "0 failed in total; complete (retried 1 images that had failed)")
    got = rows(out)
    assert got["failed"] == {} and set(got["rows"]) == set(first["names"])
    assert all(got["rows"][n] == b for n, b in first["rows"].items())  # nothing lost
    ref = lib([("img04b.jpg", bad)], tmp_path / "one.h5", backbones)
    assert got["rows"]["img04b.jpg"] == rows(ref["out"])["rows"]["img04b.jpg"]
    write_image(image_dir / "img05.jpg", "text")  # extracted: a retry leaves it alone
    write_image(bad, "empty")
    s = lib(list_image_folder(image_dir), out, backbones, on_error="skip", retry_failed=True)
    assert s["retried"] == 0 and s["complete"] and s["extracted"] == 0  # nothing had failed
    with h5py.File(out, "r+") as f:  # as if img04b had failed before
        i = f["names"].asstr()[:].tolist().index("img04b.jpg")
        f["done"][i] = False
        from amnet.cache.writer import append_failed
        append_failed(f, [("img04b.jpg", "earlier failure")])
    s = lib(list_image_folder(image_dir), out, backbones, on_error="skip", retry_failed=True)
    assert s["retried"] == 1 and s["skipped"] == 1 and s["complete"]
    assert "empty" in rows(out)["failed"]["img04b.jpg"]


# ---- shards: file names, whole sets -----------------------------------------------------------

def test_shard_file_names():
    assert shard_path(Path("d/feats.h5"), (1, 4)) == Path("d/feats.shard1of4.h5")
    assert shard_path(Path("d/part{i}.h5"), (1, 4)) == Path("d/part1.h5")
    assert shard_path(Path("d/p{i}-{n}.h5"), (1, 4)) == Path("d/p1-4.h5")
    assert shard_path(Path("d/p{n}.h5"), (1, 4)) == Path("d/p4.shard1of4.h5")  # never shared


def test_shards_without_placeholder_get_their_own_files_and_merge(image_dir, tmp_path, backbones):
    """`--shard I/N --out feats.h5`: each shard writes feats.shard<I>of<N>.h5 (said in the
    summary line), never feats.h5; merging 1 of 2 is refused unless --allow-partial, which
    records it and makes verify fail; merging the rest completes it, as a single run."""
    out = tmp_path / "feats.h5"
    files = []
    for i in range(2):
        res = run_cli("extract", str(image_dir), "--out", str(out), "--shard", f"{i}/2",
                      *CLI_KW, "--batch-size", "1")
        assert res.exit_code == 0, res.output
        files.append(tmp_path / f"feats.shard{i}of2.h5")
        assert res.output.splitlines()[-1].startswith(f"{files[i]}: extracted {6 - i} images")
        assert res.output.splitlines()[-1].endswith(
            f"complete (--shard {i}/2: --out has no {{i}}, so this shard's file is {files[i]})")
    assert not out.exists()
    single = lib(list_image_folder(image_dir), tmp_path / "single.h5", backbones,
                 batch_size=1)["out"]
    # one of two shards
    m = tmp_path / "m.h5"
    res = run_cli("merge", str(m), str(files[0]))
    assert error_line(res) == (f"Error: merge {m}: incomplete shard set: shard(s) 0 ({files[0]}) "
                               "of 2 given, 1 missing; add the missing shard file(s), or pass "
                               "--allow-partial to merge only these")
    assert not m.exists()
    res = run_cli("merge", str(m), str(files[0]), "--allow-partial")
    assert res.exit_code == 0, res.output
    assert res.output == (f"{m}: 6 images from 1 files (shards 0 of 2; PARTIAL: shard(s) 1 "
                          "missing) (0 failed)\n")
    res = run_cli("verify", str(m))
    assert res.exit_code == 1 and res.output == (
        f"{m}: partial merge: holds shard(s) 0 of 2 (6 of the list's 11 images), shard(s) 1 "
        f"missing; merge the missing shard file(s) with this one (amnet-cache merge NEW.h5 {m} "
        "SHARD...)\n")
    info = json.loads(run_cli("info", "--json", str(m)).output)
    assert info["merged_shards"] == [0] and info["merged_shard_count"] == 2
    # the partial merge plus the missing shard: the whole set, as a single run
    full = tmp_path / "full.h5"
    res = run_cli("merge", str(full), str(files[1]), str(m))
    assert res.exit_code == 0 and "(shards 0, 1 of 2)" in res.output, res.output
    assert rows(full) == rows(single)
    assert run_cli("verify", str(full)).output == f"{full}: OK\n"
    res = run_cli("merge", str(tmp_path / "m2.h5"), *map(str, files))
    assert res.exit_code == 0 and rows(tmp_path / "m2.h5") == rows(single)


def test_overlapping_and_foreign_shards_are_refused(image_dir, tmp_path, backbones):
    items = list_image_folder(image_dir)
    a0 = lib(items, tmp_path / "a{i}.h5", backbones, shard=(0, 2))["out"]
    copy = tmp_path / "copy.h5"
    shutil.copy(a0, copy)
    b1 = lib(items, tmp_path / "b{i}.h5", backbones, shard=(1, 3))["out"]
    m = tmp_path / "m.h5"
    with pytest.raises(CacheError) as e:
        merge(m, [a0, copy])
    assert str(e.value) == f"{copy}: shard 0/2 is also in {a0}; give each shard once"
    with pytest.raises(CacheError) as e:
        merge(m, [a0, b1], allow_partial=True)
    assert str(e.value) == (f"{b1}: a shard of another --shard run (3 shards over 11 images) "
                            f"than {a0} (2 over 11); merge one run's shards")
    assert not m.exists()
    # an existing shard file is resumed only as the same shard
    with pytest.raises(CacheError) as e:
        lib(items, tmp_path / "a{i}.h5", backbones, shard=(0, 3))
    assert str(e.value) == (f"{a0}: holds shard 0/2 of a 11-image list, not shard 0/3 of a "
                            "11-image list; choose another --out or pass --overwrite to replace "
                            "it")


def test_lock_file_is_not_left_behind(image_dir, tmp_path, backbones):
    out = tmp_path / "f.h5"
    lib(list_image_folder(image_dir), out, backbones)
    merge(tmp_path / "m.h5", [out])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "images", "m.h5"]
    np.testing.assert_array_equal(FeatureCache(out).load(NAMES), FeatureCache(tmp_path / "m.h5")
                                  .load(NAMES))
