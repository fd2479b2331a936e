"""Real multi-process extraction: `torchrun --nproc_per_node 2 --standalone` running
`amnet-cache extract --shard auto`, then `amnet-cache merge`, equal to a single run byte for byte
(fp32, one thread per process). CPU, random:0 weights, 16 generated images at 64 x 64."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from amnet.cli import cache_cli
from amnet.core.errors import CacheError
from amnet.extract.image_files import list_image_folder
from amnet.extract.run import extract
from amnet.extract.shards import auto_shard
from conftest import subprocess_env, write_image

# batch 3 over 16 images: the single run's last batch holds 1 image, each shard's (8 images)
# holds 2 -- both padded to 3 (amnet.extract.run._forward), else their rows would round differently
# (oneDNN's fp32 kernels for 1 image differ from those for 2-15; without the padding this test
# fails; --flip would double every forward and hide that)
SETTINGS = ["--weights", "random:0", "--image-size", "64", "--precision", "fp32",
            "--batch-size", "3", "--workers", "0", "--device", "cpu", "-q"]
CLI = "from amnet.cli import cache_cli; cache_cli()"
# attributes a merged file may not share with the single run: when each was written
# (`created`; `updated` is set by extract only) and what it was merged from (the files, and which
# shards of how many: merge's record of a whole shard set)
DIFFERING_ATTRS = {"created", "updated", "merged_from", "merged_shards", "merged_shard_count",
                   "merged_shard_total"}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i in range(16):
        write_image(root / f"im{i:02d}.jpg", "rgb", w=40 + 3 * i, h=56 - 2 * i, seed=i)
    return root


def _run_cli(*args: str):
    return CliRunner().invoke(cache_cli, list(args), catch_exceptions=False)


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f.attrs[k] for k in f.attrs}


@pytest.mark.slow
def test_torchrun_shards_merge_to_the_single_run(images, tmp_path, monkeypatch):
    env = subprocess_env(OMP_NUM_THREADS="1")  # torchrun would set 1 too; the single run below
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    pattern = tmp_path / "feats.{i}.h5"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "--no-python", sys.executable, "-c", CLI, "extract", str(images), "--out", str(pattern),
         "--shard", "auto", *SETTINGS],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    shards = [tmp_path / "feats.0.h5", tmp_path / "feats.1.h5"]
    for i, p in enumerate(shards):
        a = _attrs(p)
        assert (a["shard_index"], a["shard_count"], a["shard_total"], a["complete"]) == \
            (i, 2, 16, True)
        assert len(a) and _datasets(p)["features"].shape == (8, 1024, 4, 4)

    # the single run, one thread as each rank had (fp32 kernels sum in another order with more)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = _run_cli("extract", str(images), "--out", str(tmp_path / "single.h5"), *SETTINGS)
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output

    merged = tmp_path / "merged.h5"
    res = _run_cli("merge", str(merged), *map(str, shards))
    assert res.exit_code == 0 and "16 images from 2 files (shards 0, 1 of 2) (0 failed)" in res.output, res.output

    one, m = _datasets(tmp_path / "single.h5"), _datasets(merged)
    assert sorted(m) == sorted(one)
    assert {"done", "features", "names"} <= set(one), sorted(one)
    for name in one:  # byte for byte: dtype, shape and every byte (strings: every string)
        assert m[name].dtype == one[name].dtype and m[name].shape == one[name].shape, name
        if m[name].dtype == object:  # variable-length strings: names, failed/*
            assert m[name].tolist() == one[name].tolist(), name
        else:
            assert m[name].tobytes() == one[name].tobytes(), name
    assert [n.decode() for n in m["names"]] == [f"im{i:02d}.jpg" for i in range(16)]
    a1, am = _attrs(tmp_path / "single.h5"), _attrs(merged)
    differ = {k for k in a1.keys() | am.keys()
              if k not in a1 or k not in am or not np.array_equal(a1[k], am[k])}
    assert differ <= DIFFERING_ATTRS and "merged_from" in differ, differ

    # what a user checks: verify exits 0, info shows the counts and the settings
    assert _run_cli("verify", str(merged)).exit_code == 0
    info = _run_cli("info", str(merged)).output
    assert "images" in info and " 16\n" in info and "merged_from" in info


def test_shard_auto_reads_torchruns_environment(images, tmp_path, monkeypatch, backbones):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert auto_shard() == (0, 1)  # outside torchrun: one shard, the whole list
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert auto_shard() == (3, 4)
    kw = dict(weights="random:0", image_size=32, device="cpu", batch_size=4, progress=False,
              precision="fp32", backbone=backbones("random:0", "fp32"))
    s = extract(list_image_folder(images), tmp_path / "f.h5", shard="auto", **kw)
    assert s["out"] == str(tmp_path / "f.shard3of4.h5") and s["images"] == 4
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(CacheError, match=r"--shard auto: RANK='4' and WORLD_SIZE='4' in the "
                                         r"environment are not a shard"):
        auto_shard()
    res = _run_cli("extract", str(images), "--out", str(tmp_path / "g.h5"), "--shard", "auto",
                   "--weights", "random:0")
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "torchrun" in res.output
    # outside torchrun, --shard auto is the whole list; {i}/{n} become 0/1
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    s = extract(list_image_folder(images)[:2], tmp_path / "h.{i}of{n}.h5", shard="auto", **kw)
    assert s["out"] == str(tmp_path / "h.0of1.h5") and s["images"] == 2
