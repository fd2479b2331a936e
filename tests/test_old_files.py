"""Files made by an earlier layout of the package read the same now (issue 19: a cache and a
checkpoint made before the stage subpackages; tests/fixtures/README.md says how they were made).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from amnet.cli import cache_cli, main
from amnet.cache.reader import FeatureCache
from amnet.head.checkpoint import load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = [f"im{i}.png" for i in range(8)]


def scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(f)}


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of the fixtures (a command may write beside them, e.g. a lock file)."""
    dst = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, dst)
    return dst


def test_old_cache_reads_the_same(old: Path):
    with h5py.File(old / "main_cache.h5", "r") as f:
        raw = {key: np.asarray(f[key]) for key in ("features",)}
    with FeatureCache(old / "main_cache.h5") as cache:
        assert cache.complete and len(cache) == len(NAMES)
        assert all(name in cache for name in NAMES)
        assert cache.backbone.weights_id == "random:0" and cache.backbone.image_size == 32
        rows = cache.load(NAMES)
        assert tuple(rows.shape) == (8, 1024, 2, 2)
        order = [cache.index(n) for n in NAMES]
        np.testing.assert_array_equal(rows.numpy(), raw["features"][order].astype(rows.numpy().dtype))
        assert cache.get("im3.png", flip=True).shape == rows.shape[1:]
        assert cache.get("im3.png", view=1).shape == rows.shape[1:]
    for verb in ("verify", "info"):
        res = CliRunner().invoke(cache_cli, [verb, str(old / "main_cache.h5")])
        assert res.exit_code == 0, res.output


def test_old_checkpoint_loads_the_same(old: Path):
    model, ckpt = load_checkpoint(old / "main_head.pt")
    assert model.config.feature_dim == 16 and model.config.grid == 2 and not model.training
    assert ckpt["backbone"]["weights_id"] == "random:0" and ckpt["epoch"] == 1


def test_old_checkpoint_scores_old_cache_as_before(old: Path, tmp_path: Path):
    out = tmp_path / "scores.csv"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(old / "main_head.pt"),
                                    "--cache", str(old / "main_cache.h5"), "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    got, want = scores(out), scores(old / "main_scores_cache.csv")
    assert got.keys() == want.keys() == set(NAMES)
    for name in NAMES:
        assert got[name] == pytest.approx(want[name], abs=2e-6), name


@pytest.mark.slow
def test_old_checkpoint_scores_images_as_before(old: Path, tmp_path: Path):
    out = tmp_path / "scores.csv"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(old / "main_head.pt"),
                                    str(old / "main_images"), "--out", str(out),
                                    "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    got, want = scores(out), scores(old / "main_scores_images.csv")
    assert got.keys() == want.keys() == set(NAMES)
    for name in NAMES:  # the trunk runs again: fp32 on another CPU kind may differ in the last bits
        assert got[name] == pytest.approx(want[name], abs=1e-4), name


def test_old_cache_trains_a_head(old: Path, tmp_path: Path):
    """Stage two still reads the old cache: one epoch on the fixture's train split."""
    res = CliRunner().invoke(main, ["train", "--cache", str(old / "main_cache.h5"),
                                    "--train", str(old / "main_train.txt"), "--holdout", "0",
                                    "--out", str(tmp_path / "run"), "--epochs", "1",
                                    "--batch-size", "2", "--device", "cpu", "--precision", "fp32",
                                    "--feature-dim", "8", "--hidden-dim", "8",
                                    "--regressor-dim", "4", "--preload", "ram", "-q"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "run" / "head.pt")[1]["backbone"]["weights_id"] == "random:0"
