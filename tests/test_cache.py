"""FeatureCache (reader, DataLoader workers) and `amnet-cache info` / `verify`."""
from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, Dataset

from amnet.cli import cache_cli
from amnet.core.errors import CacheError
from amnet.cache.reader import FeatureCache
from amnet.extract.image_files import list_image_folder
from amnet.extract.run import extract


@pytest.fixture
def cache_file(image_dir, tmp_path, backbones):
    out = tmp_path / "c.h5"
    extract(list_image_folder(image_dir), out, weights="random:0", image_size=32, device="cpu",
            batch_size=16, progress=False, backbone=backbones("random:0"))
    return out


class _ByName(Dataset):
    def __init__(self, cache: FeatureCache, names: list[str]):
        self.cache, self.names = cache, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        import os
        return self.cache[self.names[i]], os.getpid()


def test_reader_by_name_index_and_load(cache_file):
    c = FeatureCache(cache_file)
    assert len(c) == 11 and c.grid == (2, 2) and c.channels == 1024 and not c.has_flip
    x = c["img03.jpg"]
    assert x.shape == (1024, 2, 2) and x.dtype == torch.float16
    assert torch.equal(x, c[c.index("img03.jpg")]) and torch.equal(c[-1], c[len(c) - 1])
    order = ["sub/deep.jpg", "img00.jpg", "img03.jpg"]
    batch = c.load(order)
    assert batch.shape == (3, 1024, 2, 2)
    assert all(torch.equal(batch[k], c[n]) for k, n in enumerate(order))
    assert c.missing(["img00.jpg", "nope.jpg"]) == ["nope.jpg"] and "img00.jpg" in c
    with pytest.raises(CacheError, match="no image 'nope.jpg'"):
        c["nope.jpg"]
    with pytest.raises(CacheError, match="re-extract with --flip"):
        c.get(0, flip=True)
    with pytest.raises(IndexError):
        c[11]
    c2 = pickle.loads(pickle.dumps(c))  # spawn-style workers get a copy without the handle
    assert torch.equal(c2["img03.jpg"], x)
    c.close()
    c2.close()


def test_reader_in_two_worker_dataloader(cache_file):
    c = FeatureCache(cache_file)
    want = c.load(c.names)  # the parent opened the file before the workers fork
    loader = DataLoader(_ByName(c, c.names), batch_size=3, num_workers=2, shuffle=False)
    got, pids = [], set()
    for x, pid in loader:
        got.append(x)
        pids.update(pid.tolist())
    assert torch.equal(torch.cat(got), want)
    assert len(pids) == 2  # really read in two other processes
    c.close()


def test_unfinished_cache_says_why(cache_file):
    with h5py.File(cache_file, "r+") as f:
        f["done"][3] = False
        f.attrs["complete"] = False
    c = FeatureCache(cache_file)
    name = c.names[3]
    assert c.missing(c.names) == [name]
    with pytest.raises(CacheError, match="not extracted yet"):
        c[name]
    with pytest.raises(CacheError, match="not extracted yet"):
        c[3]


def test_info_and_verify(cache_file, tmp_path):
    run = CliRunner().invoke
    res = run(cache_cli, ["info", str(cache_file)])
    assert res.exit_code == 0
    for words in ("weights_id", "random:0", "weights_sha256", "image_size", "done", "11",
                  "torch_version", "complete"):
        assert words in res.output
    d = json.loads(run(cache_cli, ["info", "--json", str(cache_file)]).output)
    assert d["images"] == d["done"] == 11 and d["grid"] == [2, 2] and d["complete"] is True
    res = run(cache_cli, ["verify", str(cache_file)])
    assert res.exit_code == 0 and "OK" in res.output

    with h5py.File(cache_file, "r+") as f:  # damage: NaN in one row, Inf in another
        f["features"][2, 5, 0, 0] = np.nan
        f["features"][7, 0, 1, 1] = np.inf
    res = run(cache_cli, ["verify", str(cache_file)])
    assert res.exit_code == 1 and "2 images hold NaN/Inf" in res.output and "img01.jpg" in res.output

    with h5py.File(cache_file, "r+") as f:
        f["features"][2, 5, 0, 0] = 0
        f["features"][7, 0, 1, 1] = 0
        f["done"][0] = False
        f.attrs["complete"] = False
    res = run(cache_cli, ["verify", str(cache_file)])
    assert res.exit_code == 1 and "incomplete: 1 of 11" in res.output

    with h5py.File(cache_file, "r+") as f:
        f["done"][0] = True
        f.attrs["complete"] = True
        f["names"][1] = f["names"][0]
    res = run(cache_cli, ["verify", str(cache_file)])
    assert res.exit_code == 1 and "duplicate names" in res.output

    not_cache = tmp_path / "x.h5"
    with h5py.File(not_cache, "w") as f:
        f["a"] = 1
    res = run(cache_cli, ["verify", str(not_cache)])
    assert res.exit_code == 1 and "not an amnet feature cache" in res.output
