"""Baselines of the LNSIM benchmark (bench/baselines.py; bench/lnsim*.py: test_bench_lnsim.py):
synthetic data only, no backbone weights, a few seconds in all."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import sys

import numpy as np
import pytest
import torch

from amnet.core.metrics import mse, spearman

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from baselines import (DEFAULT_ALPHAS, ResMemScorer, RidgeProbe, TrainingMean,  # noqa: E402
                       pooled_features)



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


def test_ridge_alpha_is_chosen_on_validation_and_the_fit_on_train():
    """Another validation set changes the alpha chosen, nothing fitted on train; another train
    set changes the fit. The model is always the train fit at the chosen alpha."""
    x, y = _linear_data(500, 20, noise=0.02, seed=2)
    tr, tr2, va, te = slice(0, 150), slice(150, 300), slice(300, 400), slice(400, 500)
    y_noise = 0.6 + 0.1 * np.random.default_rng(7).normal(size=100)  # unrelated to x
    fit = lambda t, yv: RidgeProbe(criterion="mse").fit(x[t], y[t], x[va], yv)  # noqa: E731
    signal, noise = fit(tr, y[va]), fit(tr, y_noise)
    # validation decides: where it follows x, little shrinkage; where it is noise, shrink to the mean
    assert signal.alpha <= 10 and noise.alpha >= 1e3
    assert [r["val_mse"] for r in signal.curve] != [r["val_mse"] for r in noise.curve]
    # ... and nothing fitted on the training set depends on it
    for a, b in ((signal.x_mean, noise.x_mean), (signal.x_scale, noise.x_scale)):
        assert np.array_equal(a, b)
    assert signal.intercept == noise.intercept == pytest.approx(y[tr].mean(), abs=1e-12)
    for probe in (signal, noise):  # = the train fit at that alpha, whatever validated it
        alone = RidgeProbe(alphas=(probe.alpha,)).fit(x[tr], y[tr], x[te], y[te])
        assert np.allclose(probe.coef, alone.coef, rtol=1e-10, atol=1e-12)
        assert np.allclose(probe.predict(x[te]), alone.predict(x[te]), rtol=0, atol=1e-12)
    assert spearman(y[te], signal.predict(x[te])) > 0.9
    assert np.ptp(noise.predict(x[te])) < 0.25 * np.ptp(signal.predict(x[te]))  # shrunk
    # another training set, same validation set: another fit (and validation curve)
    other = fit(tr2, y[va])
    assert not np.allclose(other.x_mean, signal.x_mean) and other.intercept != signal.intercept
    assert [r["val_mse"] for r in other.curve] != [r["val_mse"] for r in signal.curve]
    same_alpha = RidgeProbe(alphas=(signal.alpha,)).fit(x[tr2], y[tr2], x[va], y[va])
    assert not np.allclose(same_alpha.coef, signal.coef, rtol=1e-3)
    assert spearman(y[te], other.predict(x[te])) > 0.9  # both recover the same signal


def test_ridge_regularises_pure_noise():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 50))
    y = 0.6 + 0.1 * rng.normal(size=300)          # pure noise: no signal to find
    probe = RidgeProbe(criterion="mse").fit(x[:200], y[:200], x[200:250], y[200:250])
    assert probe.alpha >= 1e3                      # shrinks toward the mean
    assert np.abs(probe.predict(x[250:]) - y[:200].mean()).max() < 0.01


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


class _LinearScorer(torch.nn.Module):
    """Stands in for ResMem with a layer autocast does run in bf16 (a Linear; mean and sigmoid
    stay fp32 under autocast): sigmoid(w . pixels + b), [B, 3, 8, 8] -> [B, 1]. Records the
    dtype the Linear computed in."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 8, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.rand(1, 192, generator=g) * 8 / 192)
            self.fc.bias.fill_(-1.0)
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        z = self.fc(x.flatten(1))
        self.seen.append(z.dtype)
        return torch.sigmoid(z.float())


def test_resmem_scorer_bf16_runs_in_bf16_and_stays_close_to_fp32(tmp_path):
    paths = [p for _, p in _images(tmp_path, 6)]
    m32, m16 = _LinearScorer(), _LinearScorer()
    a = ResMemScorer(model=m32, transform=_transform).score(paths)
    b = ResMemScorer(model=m16, transform=_transform, precision="bf16").score(paths)
    assert set(m32.seen) == {torch.float32} and set(m16.seen) == {torch.bfloat16}
    assert not np.array_equal(a, b)                 # bf16 really ran: its rounding shows
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3 per input and weight); over
    # these 192-term sums of positive terms the error stays a few 1e-3 of the logit, and the
    # sigmoid's slope is <= 1/4
    assert np.abs(a - b).max() < 5e-3
    assert np.ptp(a) > 10 * np.abs(a - b).max()     # the images are told apart far beyond that
    assert np.array_equal(np.argsort(a), np.argsort(b))
    with pytest.raises(ValueError):
        ResMemScorer(model=_MeanBrightness(), transform=_transform, precision="fp16")
