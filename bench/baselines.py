"""Baselines that put AMNet's numbers in context (bench/lnsim.py, issue 6; used by bench/ and its tests only, so it lives here).

* `TrainingMean`: predicts the training scores' mean for every image. Its Spearman rho is
  undefined (a constant prediction has no ranks) and its MSE is the floor any model must beat.
* `RidgeProbe`: ridge regression on globally average-pooled layer3 features (`[N, 1024]`, the
  same cache AMNet trains on), alpha chosen on the validation part only. Closed form through one
  SVD of the standardised training features, so the whole alpha grid costs one decomposition.
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

from amnet.core.metrics import mse, spearman

# standardised features: alpha is in units of "number of samples' worth of prior"; the grid spans
# almost-OLS to almost-constant for n ~ 1e3 images x 1024 channels
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 6, 29))


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
# pooled features + ridge

def pooled_features(cache: Any, names: Sequence[str], *, flip: bool = False,
                    block: int = 256) -> np.ndarray:
    """Global average pool of cached layer3 maps: `[N, C, h, w]` float16 -> `[N, C]` float32.

    `cache` is an `amnet.cache.reader.FeatureCache` (anything with `load(names, flip)`); read in blocks
    of `block` images so memory stays at one block (~100 MB at 224 x 224).
    """
    out = []
    for i in range(0, len(names), block):
        x = cache.load(list(names[i:i + block]), flip=flip)        # [b, C, h, w] float16
        out.append(x.float().mean(dim=(2, 3)).numpy())              # fp32 sum: no fp16 overflow
    if not out:
        return np.zeros((0, int(getattr(cache, "channels", 0))), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


@dataclass
class RidgeProbe:
    """Ridge regression on standardised features, alpha selected on a validation set.

    After `fit`: `alpha`, `coef` `[C]`, `intercept`, `x_mean`/`x_scale` `[C]` and `curve` (one
    dict per alpha: alpha, val_rho, val_mse). Selection maximises validation Spearman rho (the
    criterion AMNet's epochs are selected by), ties broken by lower validation MSE.
    """

    alphas: Sequence[float] = DEFAULT_ALPHAS
    criterion: str = "rho"               # "rho" (max) | "mse" (min)
    alpha: float = float("nan")
    coef: np.ndarray | None = None
    intercept: float = 0.0
    x_mean: np.ndarray | None = None
    x_scale: np.ndarray | None = None
    curve: list[dict[str, float]] = field(default_factory=list)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
            y_val: np.ndarray) -> "RidgeProbe":
        """x: `[N, C]` features, y: `[N]` scores. Only the validation set chooses alpha; the
        model is then the one fitted on the training set with that alpha."""
        if self.criterion not in ("rho", "mse"):
            raise ValueError(f"criterion must be 'rho' or 'mse', not {self.criterion!r}")
        xt = np.asarray(x_train, dtype=np.float64)
        yt = np.asarray(y_train, dtype=np.float64).ravel()
        if xt.ndim != 2 or xt.shape[0] != yt.size or xt.shape[0] < 2:
            raise ValueError(f"RidgeProbe.fit: x_train {xt.shape} and y_train {yt.shape} disagree")
        if len(self.alphas) == 0 or min(self.alphas) <= 0:
            raise ValueError("RidgeProbe: alphas must be a non-empty list of positive numbers")
        self.x_mean = xt.mean(axis=0)
        sd = xt.std(axis=0)
        self.x_scale = np.where(sd > 1e-12, sd, 1.0)   # constant channels stay 0 after centring
        z = self._standardise(xt)
        y_mean = float(yt.mean())
        # z = U S V^T; ridge coefficients for every alpha: V diag(s / (s^2 + alpha)) U^T y
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        uty = u.T @ (yt - y_mean)
        zv = self._standardise(x_val)
        yv = np.asarray(y_val, dtype=np.float64).ravel()
        best: tuple[tuple[float, float], float, np.ndarray] | None = None
        self.curve = []
        for a in self.alphas:
            coef = vt.T @ (s / (s ** 2 + a) * uty)
            pred = zv @ coef + y_mean
            rho, err = spearman(yv, pred), mse(yv, pred)
            self.curve.append({"alpha": float(a), "val_rho": rho, "val_mse": err})
            rho_key = rho if math.isfinite(rho) else -math.inf
            key = (rho_key, -err) if self.criterion == "rho" else (-err, rho_key)
            if best is None or key > best[0]:
                best = (key, float(a), coef)
        assert best is not None
        _, self.alpha, self.coef = best
        self.intercept = y_mean
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """`[N, C]` features -> `[N]` scores."""
        if self.coef is None:
            raise RuntimeError("RidgeProbe.predict before fit")
        return self._standardise(x) @ self.coef + self.intercept

    @property
    def val(self) -> dict[str, float]:
        """Validation rho / MSE at the chosen alpha."""
        for row in self.curve:
            if row["alpha"] == self.alpha:
                return {"val_rho": row["val_rho"], "val_mse": row["val_mse"]}
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


__all__ = ["TrainingMean", "RidgeProbe", "ResMemScorer", "pooled_features", "DEFAULT_ALPHAS"]
