"""Baselines of the LNSIM benchmark (amnet/baselines.py; bench/lnsim*.py: test_bench_lnsim.py):
synthetic data only, no backbone weights, a few seconds in all."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from amnet.baselines import DEFAULT_ALPHAS, ResMemScorer, RidgeProbe, TrainingMean, pooled_features
from amnet.metrics import mse, spearman



def _linear_data(n: int, d: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=d)     # very different scales
    w = rng.normal(size=d) / np.sqrt(d)
    z = (x / x.std(axis=0)) @ w
    y = 0.6 + 0.1 * z / z.std() + noise * rng.normal(size=n)
    return x, y


# ---- training mean ------------------------------------------------------------------------

def test_training_mean_predicts_the_train_mean():
    m = TrainingMean().fit([0.2, 0.4, 0.9])
    assert m.value == pytest.approx(0.5)
    assert np.array_equal(m.predict(3), np.full(3, 0.5))
    assert math.isnan(spearman([0.1, 0.5, 0.7], m.predict(3)))   # a constant has no rho
    with pytest.raises(ValueError):
        TrainingMean().fit([])


# ---- ridge --------------------------------------------------------------------------------

def test_ridge_recovers_a_linear_signal_and_beats_the_mean():
    x, y = _linear_data(600, 40, noise=0.02)
    tr, va, te = slice(0, 400), slice(400, 500), slice(500, 600)
    probe = RidgeProbe().fit(x[tr], y[tr], x[va], y[va])
    pred = probe.predict(x[te])
    assert spearman(y[te], pred) > 0.9
    floor = mse(y[te], TrainingMean().fit(y[tr]).predict(100))
    assert mse(y[te], pred) < 0.3 * floor
    assert probe.alpha in DEFAULT_ALPHAS and len(probe.curve) == len(DEFAULT_ALPHAS)
    assert probe.val["val_rho"] == max(r["val_rho"] for r in probe.curve)


def test_ridge_closed_form_matches_the_normal_equations():
    x, y = _linear_data(80, 12, noise=0.05, seed=1)
    probe = RidgeProbe(alphas=(3.0,)).fit(x, y, x[:10], y[:10])
    z = (x - x.mean(0)) / x.std(0)
    coef = np.linalg.solve(z.T @ z + 3.0 * np.eye(12), z.T @ (y - y.mean()))
    assert np.allclose(probe.coef, coef, atol=1e-9)
    assert np.allclose(probe.predict(x), z @ coef + y.mean())


def test_ridge_alpha_depends_on_validation_only_and_regularises_noise():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 50))
    y = 0.6 + 0.1 * rng.normal(size=300)          # pure noise: no signal to find
    probe = RidgeProbe(criterion="mse").fit(x[:200], y[:200], x[200:250], y[200:250])
    assert probe.alpha >= 1e3                      # shrinks toward the mean
    # the choice is a function of train + val only: a different "test" changes nothing
    again = RidgeProbe(criterion="mse").fit(x[:200], y[:200], x[200:250], y[200:250])
    assert again.alpha == probe.alpha and np.array_equal(again.coef, probe.coef)


def test_ridge_handles_constant_channels_and_rejects_bad_input():
    x, y = _linear_data(100, 8, noise=0.05, seed=3)
    x[:, 3] = 7.0                                    # a dead channel (all-zero ReLU maps)
    probe = RidgeProbe().fit(x[:80], y[:80], x[80:], y[80:])
    assert np.all(np.isfinite(probe.predict(x)))
    assert abs(probe.coef[3]) < 1e-12
    with pytest.raises(ValueError):
        RidgeProbe().fit(x[:80], y[:70], x[80:], y[80:])
    with pytest.raises(ValueError):
        RidgeProbe(alphas=(0.0,)).fit(x[:80], y[:80], x[80:], y[80:])
    with pytest.raises(RuntimeError):
        RidgeProbe().predict(x)


# ---- pooled features ------------------------------------------------------------------------

class _FakeCache:
    channels = 4

    def __init__(self, maps: dict[str, torch.Tensor]):
        self.maps, self.calls = maps, []

    def load(self, names, flip=False):
        self.calls.append(list(names))
        return torch.stack([self.maps[n].flip(-1) if flip else self.maps[n] for n in names])


def test_pooled_features_average_each_map_in_order_and_in_blocks():
    g = torch.Generator().manual_seed(0)
    maps = {f"{i}.jpg": (torch.rand(4, 3, 3, generator=g) * 100).half() for i in range(7)}
    cache = _FakeCache(maps)
    names = ["3.jpg", "0.jpg", "6.jpg", "1.jpg", "2.jpg"]
    x = pooled_features(cache, names, block=2)
    assert x.shape == (5, 4) and x.dtype == np.float32
    want = np.stack([maps[n].float().mean(dim=(1, 2)).numpy() for n in names])
    assert np.allclose(x, want, atol=1e-5)
    assert [len(c) for c in cache.calls] == [2, 2, 1]
    assert pooled_features(cache, [], block=2).shape == (0, 4)


def test_pooled_features_do_not_overflow_float16():
    maps = {"a": torch.full((4, 14, 14), 60000.0).half()}
    assert np.allclose(pooled_features(_FakeCache(maps), ["a"]), 60000.0, rtol=1e-3)


# ---- ResMem scorer (tiny stand-in model; the real one is the resmem wheel) -----------------

class _MeanBrightness(torch.nn.Module):
    """Stands in for ResMem: sigmoid of the mean pixel, [B, 3, S, S] -> [B, 1]."""

    def forward(self, x):
        return torch.sigmoid(x.mean(dim=(1, 2, 3)))[:, None]


def _images(tmp_path: Path, n: int) -> list[tuple[str, Path]]:
    from PIL import Image
    items = []
    for i in range(n):
        p = tmp_path / f"{i:04d}.jpg"
        Image.new("RGB", (20 + i, 16), (20 * i, 10 * i, 5 * i)).save(p)
        items.append((p.name, p))
    return items


def _transform(img):
    from torchvision import transforms as T
    return T.Compose([T.Resize((8, 8)), T.ToTensor()])(img)


def test_resmem_scorer_scores_in_order_and_remembers(tmp_path):
    items = _images(tmp_path, 5)
    scorer = ResMemScorer(model=_MeanBrightness(), transform=_transform, batch_size=2)
    scores = scorer.score([p for _, p in items])
    assert scores.shape == (5,) and np.all(np.diff(scores) > 0)     # brighter images score higher
    out = tmp_path / "scores.csv"
    got = scorer.score_cached(items[:3], out, flush_every=2)
    assert list(got) == [n for n, _ in items[:3]]
    assert np.allclose([got[n] for n, _ in items[:3]], scores[:3], atol=1e-7)

    class _Refuse(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("already scored images must not be scored again")
    lazy = ResMemScorer(model=_Refuse(), transform=_transform)
    assert lazy.score_cached(items[:3], out) == got
    more = ResMemScorer(model=_MeanBrightness(), transform=_transform).score_cached(items, out)
    assert np.allclose([more[n] for n, _ in items], scores, atol=1e-7)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [n for n, _ in items]        # each image once


def test_resmem_scorer_bf16_close_to_fp32(tmp_path):
    items = _images(tmp_path, 4)
    a = ResMemScorer(model=_MeanBrightness(), transform=_transform).score([p for _, p in items])
    b = ResMemScorer(model=_MeanBrightness(), transform=_transform,
                     precision="bf16").score([p for _, p in items])
    assert np.allclose(a, b, atol=1e-2)
    with pytest.raises(ValueError):
        ResMemScorer(model=_MeanBrightness(), transform=_transform, precision="fp16")
