"""Evaluation metrics: Spearman rho (average ranks for ties), MSE in score units, mean/sd over splits.

The original hand-rolled rho with argsort ranks (ties broken arbitrarily, spec section 6); we use
scipy's average ranks, which differs from it by ~1e-5 on LaMem.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two equal-length vectors; nan when either is constant or n < 2."""
    from scipy.stats import spearmanr

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: lengths differ ({x.size} vs {y.size})")
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


def mse(gt: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray) -> float:
    """Mean squared error in the original score units."""
    x = np.asarray(gt, dtype=np.float64).ravel()
    y = np.asarray(pred, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"mse: lengths differ ({x.size} vs {y.size})")
    return float(np.mean((x - y) ** 2)) if x.size else float("nan")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def summarize(per_split: Iterable[Mapping[str, Any]],
              keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Mean and sd over splits of every numeric top-level key present in all of them.

    Returns {"n_splits": k, "<key>": {"mean": m, "sd": s, "values": [...]}, ...}; the sd is the
    sample sd (ddof = 1), 0.0 for a single split. The original printed the plain mean only.
    """
    rows = [dict(r) for r in per_split]
    out: dict[str, Any] = {"n_splits": len(rows)}
    if not rows:
        return out
    if keys is None:
        keys = [k for k, v in rows[0].items()
                if _is_number(v) and all(k in r and _is_number(r[k]) for r in rows)]
    for k in keys:
        vals = [float(r[k]) for r in rows]
        arr = np.asarray(vals, dtype=np.float64)
        sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        out[k] = {"mean": float(arr.mean()), "sd": sd, "values": vals}
    return out


def finite_or_none(x: float) -> float | None:
    """JSON-safe float: nan/inf -> None."""
    return x if x is not None and math.isfinite(x) else None
