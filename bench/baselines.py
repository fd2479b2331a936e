"""Baselines that put AMNet's numbers in context (bench/lnsim.py, issue 6; used by bench/ and its tests only, so it lives here).

* `TrainingMean`: predicts the training scores' mean for every image. Its Spearman rho is
  undefined (a constant prediction has no ranks) and its MSE is the floor any model must beat.
* `RidgeProbe`: ridge regression on pooled trunk features (bench/lnsim_pool.py), alpha chosen by
  exact leave-one-out on the training part (closed-form hat-matrix residuals: one
  eigendecomposition of the standardised features' Gram matrix for the whole alpha grid), no
  validation noise; then refitted on
  train + val at that alpha (bench/lnsim_runs.run_ridge).
* `ResMemScorer`: the published ResMem model (`resmem` wheel, Needell & Bainbridge) scoring
  images zero-shot with its own preprocessing (resize 256, centre crop 227, ToTensor, no
  Normalize). No one here trained it; it is a peer, not a baseline we tune.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from amnet.core.metrics import spearman

# standardised features: alpha is in units of "number of samples' worth of prior"; the grid spans
# almost-OLS to almost-constant for n ~ 1e3 images x 1e3-7e3 channels, 4 steps a decade
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 7, 33))


# ---------------------------------------------------------------------------------------------
# training mean

@dataclass
class TrainingMean:
    """Constant predictor: the mean of the training scores."""

    value: float = float("nan")

    def fit(self, y: Sequence[float] | np.ndarray) -> "TrainingMean":
        y = np.asarray(y, dtype=np.float64)
        if y.size == 0:
            raise ValueError("TrainingMean.fit: no training scores")
        self.value = float(y.mean())
        return self

    def predict(self, n: int) -> np.ndarray:
        """`[n]` copies of the training mean."""
        return np.full(int(n), self.value, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# ridge

def gram_eig(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s^2 `[n]`, U `[n, n]`) of z `[n, C]` = U S V^T, from one eigendecomposition of the
    `[n, n]` Gram matrix z z^T: cheaper than an SVD when C >> n (n ~ 1,200 images, C up to
    ~7,000 channels), and enough for every ridge quantity (z^T u_j = s_j v_j)."""
    lam, u = np.linalg.eigh(z @ z.T)
    return np.clip(lam, 0.0, None), u


def loo_residuals(z: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Exact leave-one-out residuals of ridge with an unpenalised intercept, for every alpha:
    `[A, n]`. z: `[n, C]` centred features, y: `[n]` scores.

    With z = U S V^T (one decomposition for the whole grid, `gram_eig`) the hat matrix of the
    centred problem is U diag(s^2 / (s^2 + alpha)) U^T; the intercept adds 1/n to every diagonal
    entry. The LOO residual of image i is its training residual e_i over 1 - H_ii (the PRESS
    identity, exact for linear smoothers fitted by least squares with a fixed penalty)."""
    n = y.size
    yc = y - y.mean()
    s2, u = gram_eig(z)
    uty = u.T @ yc
    u2 = u ** 2
    out = np.empty((len(alphas), n))
    for i, a in enumerate(alphas):
        shrink = s2 / (s2 + a)
        fitted = u @ (shrink * uty)                      # centred fitted values
        h = 1.0 / n + u2 @ shrink                        # diag of the full hat matrix
        out[i] = (yc - fitted) / (1.0 - h)
    return out


@dataclass
class RidgeProbe:
    """Ridge regression on standardised features; alpha chosen by exact leave-one-out on the
    training set it is given (`select`), never on a validation or test part.

    `select(x, y)` scores every alpha of the grid by its LOO mean squared error (PRESS, closed
    form: `loo_residuals`), keeps the lowest (ties: the larger alpha) and fits (x, y) at it;
    `fit(x, y)` fits at a fixed `alpha`. bench/lnsim_runs.run_ridge selects on the training part
    and refits on train + val at the chosen alpha. After either: `alpha`, `coef` `[C]`,
    `intercept`, `x_mean`/`x_scale` `[C]`; after `select` also `curve` (one dict per alpha:
    alpha, loo_mse, loo_rho) and `at_edge` (the choice is an end of the grid).
    """

    alphas: Sequence[float] = DEFAULT_ALPHAS
    alpha: float = float("nan")
    coef: np.ndarray | None = None
    intercept: float = 0.0
    x_mean: np.ndarray | None = None
    x_scale: np.ndarray | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    at_edge: bool = False

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale

    def _prepare(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xt = np.asarray(x, dtype=np.float64)
        yt = np.asarray(y, dtype=np.float64).ravel()
        if xt.ndim != 2 or xt.shape[0] != yt.size or xt.shape[0] < 3:
            raise ValueError(f"RidgeProbe: x {xt.shape} and y {yt.shape} disagree (or < 3 rows)")
        if len(self.alphas) == 0 or min(self.alphas) <= 0:
            raise ValueError("RidgeProbe: alphas must be a non-empty list of positive numbers")
        self.x_mean = xt.mean(axis=0)
        sd = xt.std(axis=0)
        self.x_scale = np.where(sd > 1e-12, sd, 1.0)   # constant channels stay 0 after centring
        return self._standardise(xt), yt

    def select(self, x: np.ndarray, y: np.ndarray) -> "RidgeProbe":
        """x: `[N, C]` features, y: `[N]` scores. Alpha by exact LOO MSE on (x, y), then the
        fit on (x, y) at that alpha."""
        z, yt = self._prepare(x, y)
        res = loo_residuals(z, yt, self.alphas)
        self.curve = []
        for a, r in zip(self.alphas, res):
            loo_pred = yt - r
            self.curve.append({"alpha": float(a), "loo_mse": float(np.mean(r ** 2)),
                               "loo_rho": spearman(yt, loo_pred)})
        best = min(range(len(self.curve)),
                   key=lambda i: (self.curve[i]["loo_mse"], -self.curve[i]["alpha"]))
        self.at_edge = len(self.alphas) > 1 and self.curve[best]["alpha"] in (
            min(self.alphas), max(self.alphas))
        return self.fit(x, y, self.curve[best]["alpha"])

    def fit(self, x: np.ndarray, y: np.ndarray, alpha: float | None = None) -> "RidgeProbe":
        """The ridge fit of (x, y) at `alpha` (default: the one `select` chose, else the only
        alpha of the grid). Standardisation and intercept come from this x and y."""
        if alpha is None:
            alpha = self.alpha if math.isfinite(self.alpha) else (
                self.alphas[0] if len(self.alphas) == 1 else float("nan"))
        if not (alpha and alpha > 0):
            raise ValueError("RidgeProbe.fit: no alpha (call select, or give one)")
        z, yt = self._prepare(x, y)
        y_mean = float(yt.mean())
        # one linear solve, in the smaller of the two spaces: (z^T z + alpha I)^-1 z^T y, or its
        # dual z^T (z z^T + alpha I)^-1 y when there are more channels than images
        n, c = z.shape
        yc = yt - y_mean
        if c <= n:
            self.coef = np.linalg.solve(z.T @ z + alpha * np.eye(c), z.T @ yc)
        else:
            self.coef = z.T @ np.linalg.solve(z @ z.T + alpha * np.eye(n), yc)
        self.alpha, self.intercept = float(alpha), y_mean
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """`[N, C]` features -> `[N]` scores."""
        if self.coef is None:
            raise RuntimeError("RidgeProbe.predict before fit")
        return self._standardise(x) @ self.coef + self.intercept

    @property
    def loo(self) -> dict[str, float]:
        """LOO MSE and rho at the chosen alpha (after `select`)."""
        for row in self.curve:
            if row["alpha"] == self.alpha:
                return {"loo_mse": row["loo_mse"], "loo_rho": row["loo_rho"]}
        return {}


# ---------------------------------------------------------------------------------------------
# ResMem zero-shot

class ResMemScorer:
    """Scores images with the published ResMem model, each image once, remembered in a CSV.

    `model`/`transform` default to the wheel's own (`resmem.ResMem(pretrained=True)`, whose
    constructor reads the bundled model.pt without any download, and `resmem.transformer`);
    tests pass tiny stand-ins. `precision`: "fp32" (the package's own numerics) or "bf16"
    (autocast; faster on GPUs and on CPUs with AVX512-BF16, scores change slightly).
    """

    def __init__(self, *, device: str = "cpu", precision: str = "fp32", batch_size: int = 32,
                 model: Any = None, transform: Callable | None = None):
        from amnet.core.device import resolve_device

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.device = resolve_device(device)  # auto, cpu, cuda[:N]
        self.precision, self.batch_size = precision, int(batch_size)
        if model is None or transform is None:
            import resmem  # the wheel: pip install resmem==1.1.6 (non-commercial research licence)

            model = model if model is not None else resmem.ResMem(pretrained=True)
            transform = transform if transform is not None else resmem.transformer
        # no channels-last: the wheel's forward does `.view(-1, 9216)` on a conv output
        self.model = model.eval().to(self.device)
        self.transform = transform

    def score(self, paths: Sequence[str | os.PathLike], progress: Callable[[int], None] | None = None
              ) -> np.ndarray:
        """Memorability in [0, 1] for each image path, `[N]` float64, in the given order."""
        import torch

        from amnet.extract.image_files import open_image_rgb

        out: list[np.ndarray] = []
        for i in range(0, len(paths), self.batch_size):
            x = torch.stack([self.transform(open_image_rgb(p)) for p in paths[i:i + self.batch_size]])
            x = x.to(self.device)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                        enabled=self.precision == "bf16"):
                y = self.model(x)
            out.append(y.float().reshape(-1).cpu().numpy().astype(np.float64))
            if progress is not None:
                progress(min(i + self.batch_size, len(paths)))
        return np.concatenate(out) if out else np.zeros(0)

    def score_cached(self, items: Sequence[tuple[str, str | os.PathLike]], csv_path: str | os.PathLike,
                     *, flush_every: int = 256, log: Callable[[str], None] | None = None
                     ) -> dict[str, float]:
        """Scores of `items` (name, path) by name; already-scored names are read from `csv_path`
        ("name,score" rows, appended every `flush_every` images so a killed run resumes)."""
        csv_path = Path(csv_path)
        have: dict[str, float] = {}
        if csv_path.exists():
            with open(csv_path, newline="") as f:
                for row in csv.DictReader(f):
                    have[row["name"]] = float(row["score"])
        todo = [(n, p) for n, p in items if n not in have]
        if not todo:
            return have
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        new = not csv_path.exists()
        t0 = time.perf_counter()
        with open(csv_path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["name", "score"])
            for i in range(0, len(todo), flush_every):
                part = todo[i:i + flush_every]
                scores = self.score([p for _, p in part])
                w.writerows([n, repr(float(s))] for (n, _), s in zip(part, scores))  # exact round trip
                f.flush()
                have.update({n: float(s) for (n, _), s in zip(part, scores)})
                if log is not None:
                    done = i + len(part)
                    log(f"resmem: {done}/{len(todo)} images, "
                        f"{done / (time.perf_counter() - t0):.1f} img/s")
        return have


__all__ = ["TrainingMean", "RidgeProbe", "ResMemScorer", "loo_residuals", "DEFAULT_ALPHAS"]
