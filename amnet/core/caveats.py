"""Warnings about results that are computed correctly but mean less than they seem: each
function returns one line (starting "warning: ") or None. They never stop a command; train and
evaluate log them, predict prints them.

- `constant_scores`: a validation part whose ground-truth scores are all equal. Spearman rho is
  undefined on it, so every epoch scores NaN and "the best epoch" is just the first one.
- `small_test`: a test set under `MIN_TEST_IMAGES` images. Under no correlation at all, Spearman
  rho over n images has mean 0 and sd exactly 1/sqrt(n - 1) (0.58 at n = 4, 0.19 at n = 30), so
  a rho from a handful of images cannot tell a good head from a useless one.
- `precision_mismatch`: a head used on features from a trunk of another precision than the one
  it was trained on (fp32 vs mixed/bf16, recorded in the checkpoint's and the cache's backbone
  provenance). Features then differ by up to ~1e-2, so scores differ slightly from what the
  head's own metrics were measured on; the compatibility check (amnet.core.provenance) deliberately
  does not compare precision, so this is the only place it is mentioned.

Bottom layer: numpy and the standard library only.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MIN_TEST_IMAGES = 30


def null_rho_sd(n: int) -> float:
    """The sd of Spearman rho over `n` images when there is no correlation: 1/sqrt(n - 1)."""
    return 1.0 / math.sqrt(n - 1) if n > 1 else math.inf


def constant_scores(scores: Sequence[float] | np.ndarray, what: str) -> str | None:
    """A line when every score of a validation part (`what` names it) is the same."""
    a = np.asarray(scores, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(a == a[0]):
        return None
    return (f"warning: {what}: all {a.size} validation scores are {a[0]:g}, so val rho is "
            "undefined and epoch selection is meaningless (the first epoch is kept); use a "
            "validation split with varied scores")


def small_test(n: int, what: str) -> str | None:
    """A line when a test set (`what` names it) has fewer than MIN_TEST_IMAGES images."""
    if n >= MIN_TEST_IMAGES:
        return None
    sd = "undefined" if n < 2 else f"about {null_rho_sd(n):.2f}"
    return (f"warning: {what}: only {n} test images (under {MIN_TEST_IMAGES}): its rho means "
            f"little (sd {sd} even with no real correlation, 1/sqrt(n - 1))")


def precision_mismatch(trained: str | None, used: str | None, head: str, features: str,
                       hint: str = "") -> str | None:
    """A line when a head trained on features of a `trained`-precision trunk (its checkpoint
    `head` records it) scores `features` (e.g. "the features of cache X") made by a `used` one;
    `hint` says how to match. None when they agree or either was not recorded."""
    if not trained or not used or trained == used:
        return None
    return (f"warning: {head} was trained on features of a {trained} trunk, but {features} come "
            f"from a {used} trunk: scores differ slightly (features within ~1e-2) from those its "
            f"metrics were measured on" + (f"; {hint}" if hint else ""))


__all__ = ["MIN_TEST_IMAGES", "null_rho_sd", "constant_scores", "small_test",
           "precision_mismatch"]
