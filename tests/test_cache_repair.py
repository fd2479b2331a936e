"""Damaged caches (issue 11, defect 3): a truncated or random-bytes `.h5` is called what it is --
never "in use by another process" -- by every command that opens one, and `amnet-cache repair`
salvages every complete row into a valid cache of the same images."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from amnet.cli import cache_cli, main
from amnet.core.errors import DamagedCacheError
from amnet.cache.repair import repair, superblock_eof
from amnet.cache.reader import FeatureCache
from amnet.extract.image_files import list_image_folder
from amnet.extract.run import extract
from conftest import error_line, sha256_of, subprocess_env
from test_train import _one_thread, synthetic, write_cache  # noqa: F401 (fixture)

N = (64, 16, 16)


def truncate_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])
    return dst


def truncated_line(path: Path) -> str:
    size = path.stat().st_size
    stored = sum(superblock_eof(path))
    return (f"{path}: truncated: {size:,} of {stored:,} bytes (an interrupted copy or download, "
            f"or a full disk?); salvage its complete rows with `amnet-cache repair {path} "
            "FIXED.h5`, or extract it again")


def random_line(path: Path) -> str:
    return (f"{path}: not an HDF5 file (no HDF5 signature; damaged, or another kind of file); "
            "extract it again")


@pytest.fixture
def damaged(tmp_path):
    """A trained head over a synthetic cache, a truncated copy and a random-bytes file."""
    cache, files = synthetic(tmp_path, n=N)
    res = CliRunner().invoke(main, [
        "train", "--cache", str(cache), "--train", str(files["train"]), "--val", str(files["val"]),
        "--test", str(files["test"]), "--out", str(tmp_path / "o"), "--epochs", "1",
        "--feature-dim", "16", "--hidden-dim", "16", "--regressor-dim", "8", "--workers", "0",
        "-q"])
    assert res.exit_code == 0, res.output
    rnd = tmp_path / "random.h5"
    rnd.write_bytes(np.random.default_rng(0).bytes(50_000))
    return {"cache": cache, "files": files, "head": tmp_path / "o" / "head.pt",
            "truncated": truncate_copy(cache, tmp_path / "cut.h5", 0.6), "random": rnd}


COMMANDS = {
    "verify": lambda d, c: (cache_cli, ["verify", c]),
    "info": lambda d, c: (cache_cli, ["info", c]),
    "merge": lambda d, c: (cache_cli, ["merge", d["tmp"] / "m.h5", c]),
    "train": lambda d, c: (main, ["train", "--cache", c, "--train", d["files"]["train"],
                                  "--out", d["tmp"] / "t", "--epochs", "1", "-q"]),
    "evaluate": lambda d, c: (main, ["evaluate", d["head"], "--cache", c, "--split",
                                     d["files"]["test"]]),
    "predict": lambda d, c: (main, ["predict", "--checkpoint", d["head"], "--cache", c,
                                    "--out", d["tmp"] / "p.csv"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_every_command_says_truncated_or_not_hdf5(damaged, tmp_path, command, kind):
    path = damaged[kind]
    before = sha256_of(path)
    group, args = COMMANDS[command]({**damaged, "tmp": tmp_path}, path)
    res = CliRunner().invoke(group, [str(a) for a in args])
    assert res.exit_code == 1
    line = error_line(res)
    assert line == (truncated_line(path) if kind == "truncated" else random_line(path))
    assert "in use" not in line and sha256_of(path) == before           # nothing touched


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_extract_resume_says_so_and_offers_overwrite(damaged, image_dir, backbones, kind):
    path = damaged[kind]
    with pytest.raises(DamagedCacheError) as e:
        extract(list_image_folder(image_dir), path, weights="random:0", image_size=32,
                device="cpu", progress=False, backbone=backbones("random:0"))
    want = truncated_line(path) if kind == "truncated" else random_line(path)
    assert str(e.value) == want + "; or pass --overwrite to start it afresh"


def test_a_lock_is_still_a_lock(damaged):
    """A file another process holds open for writing is in use -- not damaged."""
    cache = damaged["cache"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys\nf = h5py.File(sys.argv[1], 'r+')\n"
         "print('open', flush=True)\nsys.stdin.read()", str(cache)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "open"
        res = CliRunner().invoke(cache_cli, ["verify", str(cache)])
        assert res.exit_code == 1
        assert error_line(res).startswith(f"{cache}: in use by another process (an extraction "
                                          "still running?); wait for it or stop it (")
    finally:
        holder.communicate("")


# ---- repair ---------------------------------------------------------------------------------

def test_repair_saves_every_complete_row(tmp_path):
    names = [f"img{i:05d}.jpg" for i in range(200)]
    feats = np.random.default_rng(1).standard_normal((200, 64, 4, 4)).astype(np.float32)
    cache = write_cache(tmp_path / "c.h5", names, feats, feats[..., ::-1].copy())
    with h5py.File(cache, "r+") as f:       # one image failed at extraction
        f["done"][199] = False
        f["failed"]["names"].resize((1,))
        f["failed"]["reasons"].resize((1,))
        f["failed"]["names"][0], f["failed"]["reasons"][0] = names[199], "img00199.jpg: broken"
    cut = truncate_copy(cache, tmp_path / "cut.h5", 0.8)
    before = sha256_of(cut)
    res = CliRunner().invoke(cache_cli, ["repair", str(cut), str(tmp_path / "fixed.h5")])
    assert res.exit_code == 0, res.output
    fixed = tmp_path / "fixed.h5"
    with FeatureCache(fixed) as fc:
        saved = [n for n in names if n in fc]
        lost = [n for n in names[:199] if n not in fc]
        # the plain features end mid-file, their flips at the end: rows whose flip survived
        assert 100 < len(saved) < 199 and saved == names[:len(saved)]
        got = fc.load(saved).numpy()
        got_flip = fc.load(saved, flip=True).numpy()
        # the failed list is appended at the end of the file: in a complete file every image
        # not done had failed, so it stays failed, its reason gone with the tail
        assert fc.failed[names[199]] == ("failed when extracted (the reason was lost with the "
                                         "damage)")
        assert all(fc.failed[n].startswith("lost: its features did not survive in the damaged "
                                           f"{cut}") for n in lost)
        assert fc.attrs["repaired_from"] == str(cut) and fc.complete
    with h5py.File(cache, "r") as f:         # saved rows: exactly the original values
        assert np.array_equal(got, f["features"][:len(saved)])
        assert np.array_equal(got_flip, f["features_flip"][:len(saved)])
    assert res.output.strip() == (
        f"{fixed}: saved {len(saved)} of 200 rows of {cut} (truncated: {cut.stat().st_size:,} of "
        f"{cache.stat().st_size:,} bytes); {len(lost)} lost ({', '.join(lost[:3])}, ...), "
        "recorded as failed")
    assert CliRunner().invoke(cache_cli, ["verify", str(fixed)]).output.strip() == f"{fixed}: OK"
    assert sha256_of(cut) == before                                     # IN is left as it was


def test_repair_drops_nonfinite_rows(tmp_path):
    cache, _ = synthetic(tmp_path, n=(30, 5, 5))
    with h5py.File(cache, "r+") as f:
        f["features"][7, 0, 0, 0] = np.nan
    s = repair(cache, tmp_path / "fixed.h5")
    assert (s["saved"], s["lost"], s["lost_names"]) == (39, 1, ["img00007.jpg"])
    assert s["truncated"] is None
    res = CliRunner().invoke(cache_cli, ["verify", str(tmp_path / "fixed.h5")])
    assert res.exit_code == 0, res.output


def test_repaired_rows_left_to_extract_resume_to_a_full_run(tmp_path, image_dir, backbones):
    """--lost resume: extract over the repaired file redoes just the lost rows, and the result
    equals an extraction never damaged."""
    kw = dict(weights="random:0", image_size=32, device="cpu", flip=True, batch_size=4,
              progress=False, backbone=backbones("random:0"))
    items = list_image_folder(image_dir)
    full = tmp_path / "full.h5"
    extract(items, full, **kw)
    cut = truncate_copy(full, tmp_path / "cut.h5", 0.75)
    fixed = tmp_path / "fixed.h5"
    res = CliRunner().invoke(cache_cli, ["repair", str(cut), str(fixed), "--lost", "resume"])
    assert res.exit_code == 0, res.output
    s = extract(items, fixed, **kw)
    assert s["complete"] and s["already"] > 0 and s["extracted"] == 11 - s["already"]
    assert res.output.strip().endswith(
        f"; {s['extracted']} images left to extract: `amnet-cache extract IMAGES --out {fixed}` "
        "does just those")
    with FeatureCache(full) as a, FeatureCache(fixed) as b:
        assert a.names == b.names
        for flip in (False, True):
            assert np.array_equal(a.load(a.names, flip=flip).numpy(),
                                  b.load(b.names, flip=flip).numpy())


def test_repair_refuses_what_it_cannot_do(damaged, tmp_path):
    run = CliRunner().invoke
    res = run(cache_cli, ["repair", str(damaged["random"]), str(tmp_path / "x.h5")])
    assert res.exit_code == 1 and error_line(res) == (
        f"{damaged['random']}: not an HDF5 file (no HDF5 signature): nothing to salvage; "
        "extract it again")
    with h5py.File(damaged["cache"]) as f:          # names and done kept, no row whole
        first = f["features"].id.get_chunk_info_by_coord((0, 0, 0, 0)).byte_offset
    tiny = tmp_path / "tiny.h5"
    tiny.write_bytes(damaged["cache"].read_bytes()[:first + 100])
    res = run(cache_cli, ["repair", str(tiny), str(tmp_path / "x.h5")])
    assert res.exit_code == 1 and error_line(res).startswith(f"{tiny}: no complete row to salvage")
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".x.*"))
    res = run(cache_cli, ["repair", str(damaged["truncated"]), str(damaged["cache"])])
    assert res.exit_code == 1 and error_line(res) == (
        f"{damaged['cache']}: already exists; pass --overwrite to replace it")
    res = run(cache_cli, ["repair", str(damaged["truncated"]), str(damaged["truncated"])])
    assert res.exit_code == 2 and "OUT must differ from IN" in res.output


def test_old_layout_truncated_says_what_is_lost(tmp_path):
    """Files made before names/done moved to the front lose them with the tail: repair says so
    in one line instead of guessing."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:          # the previous creation order: features first
        f.attrs["format"] = "amnet-feature-cache"
        f.create_dataset("features", data=np.ones((50, 8, 4, 4), np.float16), chunks=(1, 8, 4, 4))
        f.create_dataset("names", data=np.array([f"n{i}" for i in range(50)], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("done", data=np.ones(50, bool))
    cut = truncate_copy(path, tmp_path / "cut.h5", 0.9)
    with pytest.raises(DamagedCacheError, match="no row can be salvaged|beyond repair"):
        repair(cut, tmp_path / "x.h5")


def test_superblock_eof_reads_what_hdf5_checks(tmp_path):
    cache, _ = synthetic(tmp_path, n=(10, 2, 2))
    assert superblock_eof(cache) == (0, cache.stat().st_size)
    (tmp_path / "no.h5").write_bytes(b"x" * 4096)
    assert superblock_eof(tmp_path / "no.h5") is None
    assert os.path.getsize(cache) > 0


def test_a_corrupt_chunk_index_is_one_line_and_repairable(tmp_path):
    """Bytes overwritten mid-file (here: one chunk-index node of `features`): reading the rows
    under it fails; every command says so in one line, and repair keeps the other rows."""
    names = [f"img{i:05d}.jpg" for i in range(300)]
    feats = np.random.default_rng(0).standard_normal((300, 64, 4, 4)).astype(np.float32)
    cache = write_cache(tmp_path / "c.h5", names, feats)
    data = bytearray(cache.read_bytes())
    last = data.rfind(b"TREE")                  # the last v1 B-tree node: the last rows' index
    data[last:last + 4] = b"XXXX"
    cache.write_bytes(bytes(data))
    res = CliRunner().invoke(cache_cli, ["verify", str(cache)])
    assert res.exit_code == 1 and res.output.strip() == (
        f"{cache}: features: damaged: rows do not read back (Can't synchronously read data "
        f"(wrong B-tree signature)); salvage the complete rows with `amnet-cache repair {cache} "
        "FIXED.h5`")
    split = tmp_path / "all.txt"
    split.write_text("".join(f"{n} 0.5\n" for n in names))
    res = CliRunner().invoke(main, ["train", "--cache", str(cache), "--train", str(split),
                                    "--out", str(tmp_path / "o"), "--epochs", "1", "-q"])
    assert res.exit_code == 1 and error_line(res).startswith(
        f"{cache}: damaged: the features of 'img00")
    s = repair(cache, tmp_path / "fixed.h5")
    assert 250 < s["saved"] < 300 and s["saved"] + s["lost"] == 300
    with FeatureCache(tmp_path / "fixed.h5") as fc:
        kept = [i for i, n in enumerate(names) if n in fc]
        assert np.array_equal(fc.load([names[i] for i in kept]).numpy(),
                              feats[kept].astype(np.float16))
