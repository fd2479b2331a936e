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
                       loo_residuals)



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


# ---- ridge: alpha by exact leave-one-out ---------------------------------------------------

def test_ridge_recovers_a_linear_signal_and_beats_the_mean():
    x, y = _linear_data(600, 40, noise=0.02)
    tr, te = slice(0, 500), slice(500, 600)
    probe = RidgeProbe().select(x[tr], y[tr])
    pred = probe.predict(x[te])
    assert spearman(y[te], pred) > 0.9
    floor = mse(y[te], TrainingMean().fit(y[tr]).predict(100))
    assert mse(y[te], pred) < 0.3 * floor
    assert probe.alpha in DEFAULT_ALPHAS and len(probe.curve) == len(DEFAULT_ALPHAS)
    assert probe.loo["loo_mse"] == min(r["loo_mse"] for r in probe.curve)
    assert not probe.at_edge


@pytest.mark.parametrize("n,d", [(80, 12), (20, 40)])   # the primal and the dual solve
def test_ridge_closed_form_matches_the_normal_equations(n, d):
    x, y = _linear_data(n, d, noise=0.05, seed=1)
    probe = RidgeProbe().fit(x, y, alpha=3.0)
    z = (x - x.mean(0)) / x.std(0)
    coef = np.linalg.solve(z.T @ z + 3.0 * np.eye(d), z.T @ (y - y.mean()))
    assert np.allclose(probe.coef, coef, atol=1e-9)
    assert np.allclose(probe.predict(x), z @ coef + y.mean())


def _brute_loo(z, y, alpha):
    """Refit ridge (unpenalised intercept, penalised slopes) without image i, for every i."""
    out = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        zk, yk = z[keep], y[keep]
        zm, ym = zk.mean(0), yk.mean()
        coef = np.linalg.solve((zk - zm).T @ (zk - zm) + alpha * np.eye(z.shape[1]),
                               (zk - zm).T @ (yk - ym))
        out.append(y[i] - ((z[i] - zm) @ coef + ym))
    return np.asarray(out)


@pytest.mark.parametrize("n,d", [(30, 5), (20, 40)])   # more images than channels, and fewer
def test_loo_residuals_equal_brute_force_refits(n, d):
    x, y = _linear_data(n, d, noise=0.1, seed=4)
    z = (x - x.mean(0)) / x.std(0)
    alphas = (0.3, 4.0, 250.0)
    fast = loo_residuals(z, y, alphas)
    assert fast.shape == (3, n)
    for a, row in zip(alphas, fast):
        assert np.allclose(row, _brute_loo(z, y, a), rtol=1e-9, atol=1e-11)


def test_ridge_alpha_is_the_lowest_loo_mse_and_the_fit_is_on_the_data_given():
    x, y = _linear_data(200, 30, noise=0.03, seed=5)
    probe = RidgeProbe(alphas=(0.1, 1.0, 10.0, 100.0, 1e4)).select(x, y)
    z = (x - x.mean(0)) / x.std(0)
    press = {a: float(np.mean(_brute_loo(z, y, a) ** 2)) for a in probe.alphas}
    assert probe.alpha == min(press, key=press.get)
    assert [r["loo_mse"] for r in probe.curve] == pytest.approx(list(press.values()), rel=1e-9)
    refit = RidgeProbe().fit(x, y, alpha=probe.alpha)            # select = fit at its alpha
    assert np.allclose(probe.coef, refit.coef, rtol=1e-12, atol=1e-14)
    # the run's rule: select on one part, refit on more data at that alpha
    more = RidgeProbe().fit(np.vstack([x, x[:20] + 1]), np.r_[y, y[:20]], alpha=probe.alpha)
    assert more.alpha == probe.alpha and not np.allclose(more.coef, probe.coef)


def test_ridge_regularises_pure_noise_and_flags_the_grid_edge():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 50))
    y = 0.6 + 0.1 * rng.normal(size=300)          # pure noise: no signal to find
    probe = RidgeProbe().select(x[:250], y[:250])
    assert probe.alpha >= 1e3                      # shrinks toward the mean
    assert np.abs(probe.predict(x[250:]) - y[:250].mean()).max() < 0.01
    edge = RidgeProbe(alphas=(0.1, 1.0)).select(x[:250], y[:250])
    assert edge.alpha == 1.0 and edge.at_edge      # wanted more shrinkage than the grid has


def test_ridge_handles_constant_channels_and_rejects_bad_input():
    x, y = _linear_data(100, 8, noise=0.05, seed=3)
    x[:, 3] = 7.0                                    # a dead channel (all-zero ReLU maps)
    probe = RidgeProbe().select(x[:80], y[:80])
    assert np.all(np.isfinite(probe.predict(x)))
    assert abs(probe.coef[3]) < 1e-12
    with pytest.raises(ValueError, match="disagree"):
        RidgeProbe().select(x[:80], y[:70])
    with pytest.raises(ValueError, match="positive"):
        RidgeProbe(alphas=(0.0,)).select(x[:80], y[:80])
    with pytest.raises(ValueError, match="no alpha"):
        RidgeProbe().fit(x[:80], y[:80])
    with pytest.raises(RuntimeError):
        RidgeProbe().predict(x)


# ---- pooled trunk features (bench/lnsim_pool.py) ---------------------------------------------

def test_pooled_maps_mean_and_max_of_layer2_3_4_in_column_order():
    import torchvision
    from lnsim_pool import COLUMNS, columns, pooled_maps
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    x = torch.rand(2, 3, 64, 64)
    got = pooled_maps(net, x)
    assert got.shape == (2, 7168) and got.dtype == torch.float32
    with torch.no_grad():
        h = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
        maps = {}
        for name in ("layer2", "layer3", "layer4"):
            h = getattr(net, name)(h)
            maps[name] = h
    for layer, how in COLUMNS:
        want = maps[layer].mean(dim=(2, 3)) if how == "mean" else maps[layer].amax(dim=(2, 3))
        assert torch.allclose(got[:, columns((layer, how))], want, rtol=1e-5, atol=1e-6)
    assert list(columns(("layer4", "max"), ("layer2", "mean"))[[0, -1]]) == [5120, 511]
    with pytest.raises(ValueError, match="unknown pooled feature groups"):
        columns(("layer1", "mean"))


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
