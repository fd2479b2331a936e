"""Warnings that never stop a command (issue 11, defect 10): constant validation scores, a test
set under 30 images, a head used on features of another trunk precision -- in train, evaluate
and predict, one exact line each, exit 0, results unchanged."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from amnet.cli import main
from amnet.core.caveats import (MIN_TEST_IMAGES, constant_scores, null_rho_sd, precision_mismatch,
                                small_test)
from amnet.core.metrics import spearman
from conftest import save_small_head, write_image
from test_train import _one_thread, write_split  # noqa: F401 (_one_thread: an autouse fixture)

C, G = 8, 4


def write_cache(path, feats, precision: str):
    """A complete cache of `feats` `[N, C, G, G]` (names img000.jpg...) recording a trunk of
    `precision`, written through amnet.cache's own creator."""
    from amnet.extract.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
    from amnet.cache.schema import settings_attrs
    from amnet.cache.writer import create

    spec = BackboneSpec(weights_id="random:0", arch="resnet50", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, weights_sha256="ab" * 32, precision=precision)
    names = [f"img{i:03d}.jpg" for i in range(len(feats))]
    f = create(path, names, settings_attrs(spec, 16 * G, False, C, (G, G)))
    try:
        f["features"][:] = feats.astype(np.float16)
        f["done"][:] = True
        f.attrs["complete"] = True
    finally:
        f.close()
    return path, names


def _data(tmp_path, n=80, precision="fp32", zero=False):
    rng = np.random.default_rng(0)
    feats = np.zeros((n, C, G, G), np.float32) if zero else rng.standard_normal((n, C, G, G))
    cache, names = write_cache(tmp_path / f"{precision}.h5", feats, precision)
    scores = rng.uniform(0.3, 0.9, n)
    return cache, names, scores


def _train(tmp_path, cache, train, val=None, test=None, *extra):
    args = ["train", "--cache", str(cache), "--train", str(train), "--out", str(tmp_path / "o"),
            "--epochs", "2", "--batch-size", "8", "--feature-dim", "8", "--hidden-dim", "8",
            "--regressor-dim", "8", "--workers", "0", "--device", "cpu", "-q", *extra]
    args += ["--val", str(val)] if val else []
    args += ["--test", str(test)] if test else []
    return CliRunner().invoke(main, args)


def _warnings(output: str) -> list[str]:
    """The caveat lines (not predict's demo-checkpoint warning: these heads sit on random:0
    trunks, which tests/test_predict.py covers)."""
    return [ln for ln in output.splitlines() if ln.startswith("warning: ")
            and "random-weight backbone" not in ln]


# ---- the lines themselves -------------------------------------------------------------------------

@pytest.mark.parametrize("scores, expected", [
    ([0.5] * 5, "warning: v.txt: all 5 validation scores are 0.5, so val rho is undefined and "
                "epoch selection is meaningless (the first epoch is kept); use a validation split "
                "with varied scores"),
    ([0.75], "warning: v.txt: all 1 validation scores are 0.75, so val rho is undefined and "
             "epoch selection is meaningless (the first epoch is kept); use a validation split "
             "with varied scores"),
    ([0.5, 0.5, 0.500001], None), ([], None)])
def test_constant_scores_line(scores, expected):
    assert constant_scores(scores, "v.txt") == expected


@pytest.mark.parametrize("n, sd", [(0, "undefined"), (1, "undefined"), (2, "about 1.00"),
                                   (4, "about 0.58"), (10, "about 0.33"), (29, "about 0.19"),
                                   (30, None), (400, None)])
def test_small_test_line(n, sd):
    line = small_test(n, "t.txt")
    if sd is None:
        assert line is None and n >= MIN_TEST_IMAGES
    else:
        assert line == (f"warning: t.txt: only {n} test images (under 30): its rho means little "
                        f"(sd {sd} even with no real correlation, 1/sqrt(n - 1))")


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_the_null_sd_of_spearman_rho_is_exactly_one_over_sqrt_n_minus_1(n):
    """Over every ordering of n images (no ties), rho has mean 0 and variance 1/(n - 1)."""
    rhos = [spearman(range(n), p) for p in itertools.permutations(range(n))]
    assert np.mean(rhos) == pytest.approx(0.0, abs=1e-12)
    assert math.sqrt(np.mean(np.square(rhos))) == pytest.approx(null_rho_sd(n), rel=1e-12)


@pytest.mark.parametrize("trained, used, warns", [
    ("fp32", "mixed", True), ("mixed", "fp32", True), ("mixed", "bf16", True),
    ("fp32", "fp32", False), ("mixed", "mixed", False), (None, "mixed", False),
    ("fp32", None, False)])
def test_precision_mismatch_line(trained, used, warns):
    line = precision_mismatch(trained, used, "checkpoint h.pt", "the features of cache c.h5",
                              "do this")
    assert line == (f"warning: checkpoint h.pt was trained on features of a {trained} trunk, but "
                    f"the features of cache c.h5 come from a {used} trunk: scores differ "
                    "slightly (features within ~1e-2) from those its metrics were measured on; "
                    "do this" if warns else None)


# ---- train ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("val_scores", ["constant", "varied"])
@pytest.mark.parametrize("n_test", [4, 29, 30])
def test_train_warns_on_constant_val_and_small_test(tmp_path, val_scores, n_test):
    cache, names, scores = _data(tmp_path, 40 + 10 + n_test)
    tr = write_split(tmp_path / "train.txt", names[:40], scores[:40])
    va_scores = np.full(10, 0.6) if val_scores == "constant" else scores[40:50]
    va = write_split(tmp_path / "val.txt", names[40:50], va_scores)
    te = write_split(tmp_path / "test.txt", names[50:], scores[50:])
    res = _train(tmp_path, cache, tr, va, te)
    assert res.exit_code == 0, res.output
    expected = []
    if val_scores == "constant":
        expected.append(constant_scores(va_scores, str(va)))
    if n_test < 30:
        expected.append(small_test(n_test, str(te)))
    assert _warnings(res.output) == expected
    printed = json.loads(res.output.splitlines()[-1])
    assert printed["n"] == n_test and printed["rho"] is not None
    if val_scores == "constant":
        assert printed["best_epoch"] == 1 and printed["val_rho"] is None


def test_train_warns_when_the_held_out_part_is_constant(tmp_path):
    cache, names, _ = _data(tmp_path, 40)
    tr = write_split(tmp_path / "train.txt", names, np.full(40, 0.5))
    res = _train(tmp_path, cache, tr, None, None, "--holdout", "0.25")
    assert res.exit_code == 0, res.output
    assert _warnings(res.output) == [
        f"warning: {tr} (its held-out part): all 10 validation scores are 0.5, so val rho is "
        "undefined and epoch selection is meaningless (the first epoch is kept); use a "
        "validation split with varied scores"]


def test_train_warns_when_val_rho_is_undefined_in_every_epoch(tmp_path):
    """Varied val scores, but identical features: the head predicts one value, rho is NaN."""
    cache, names, scores = _data(tmp_path, 80, zero=True)
    tr = write_split(tmp_path / "train.txt", names[:40], scores[:40])
    va = write_split(tmp_path / "val.txt", names[40:], scores[40:])
    res = _train(tmp_path, cache, tr, va)
    assert res.exit_code == 0, res.output
    assert _warnings(res.output) == [
        "warning: val rho was undefined in every epoch (the head's validation predictions were "
        "constant), so epoch selection is meaningless: kept epoch 1"]


# ---- evaluate and predict: small test set, another trunk precision ----------------------------------

@pytest.mark.parametrize("cache_precision", ["fp32", "mixed", "bf16"])
@pytest.mark.parametrize("n_test", [5, 30])
def test_evaluate_warns_on_small_test_and_other_precision(tmp_path, cache_precision, n_test):
    cache, names, scores = _data(tmp_path, 80, "fp32")
    tr = write_split(tmp_path / "train.txt", names[:40], scores[:40])
    va = write_split(tmp_path / "val.txt", names[40:50], scores[40:50])
    assert _train(tmp_path, cache, tr, va).exit_code == 0
    head = tmp_path / "o" / "head.pt"
    # the same features, recorded as made by a trunk of `cache_precision`
    feats = np.random.default_rng(0).standard_normal((80, C, G, G))
    other, _ = write_cache(tmp_path / f"other-{cache_precision}.h5", feats, cache_precision)
    te = write_split(tmp_path / "test.txt", names[50:50 + n_test], scores[50:50 + n_test])
    res = CliRunner().invoke(main, ["evaluate", str(head), "--cache", str(other), "--split",
                                    str(te), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    expected = [small_test(n_test, str(te))] if n_test < 30 else []
    if cache_precision != "fp32":
        expected.append(
            f"warning: checkpoint {head} was trained on features of a fp32 trunk, but the "
            f"features of cache {other} come from a {cache_precision} trunk: scores differ "
            "slightly (features within ~1e-2) from those its metrics were measured on; a cache "
            "extracted with --precision fp32 matches")
    assert _warnings(res.output) == expected
    assert json.loads(res.output.splitlines()[-1])["n"] == n_test

    # predict --cache: the same precision line, scores for every listed image
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(main, ["predict", str(te), "--cache", str(other), "--checkpoint",
                                    str(head), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert _warnings(res.output) == (expected[-1:] if cache_precision != "fp32" else [])
    assert res.output.splitlines()[-1] == f"scored {n_test} of {n_test} inputs -> {out}"


@pytest.mark.parametrize("options, used", [
    (["--precision", "mixed"], "mixed"), (["--precision", "bf16"], "bf16"),
    (["--precision", "fp32"], None), (["--precision", "mixed", "--match-cache"], None)])
def test_predict_on_images_warns_when_the_trunk_precision_differs(tmp_path, backbones, options,
                                                                  used):
    root = tmp_path / "images"
    for i in range(2):
        write_image(root / f"{i}.jpg", w=32, h=32, seed=i)
    head = save_small_head(tmp_path / "head.pt", backbones("random:0", "fp32")[1], 32)
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(main, ["predict", str(root), "--checkpoint", str(head), "--out",
                                    str(out), "--device", "cpu", *options])
    assert res.exit_code == 0, res.output
    assert _warnings(res.output) == ([] if used is None else [
        f"warning: checkpoint {head} was trained on features of a fp32 trunk, but the features "
        f"of this run come from a {used} trunk: scores differ slightly (features within ~1e-2) "
        "from those its metrics were measured on; --match-cache reproduces the cached path"])
    assert res.output.splitlines()[-1] == f"scored 2 of 2 inputs -> {out}"
