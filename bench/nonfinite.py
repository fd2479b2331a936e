"""Benchmark the NaN/Inf check of stage two's features (issue 11, defect 1) against loading them.

`amnet train` / `evaluate` check every image's features once, as a split is loaded: over the
tensor in memory (`amnet.extract.cache.finite_rows`, float16 exponent bits, blocks of 64 rows) or, for
`--preload lazy`, in one pass over the file (`FeatureCache.nonfinite`). This measures, in one
run, on a synthetic cache of N images of [1024, 14, 14] float16 (401 KB each; the OS page cache
warm, as after extraction):

    python bench/nonfinite.py            # N = 400 (160 MB)
    python bench/nonfinite.py --n 2000

and prints a markdown table: seconds and GB/s of loading the split (the baseline), of the check
over it, of numpy's `isfinite(...).all()` over it, and of the lazy one-pass check, each as a
fraction of the load.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn, repeat: int = 3) -> float:
    """Best of `repeat` wall times (s): the least disturbed by the other jobs on the machine."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="images in the synthetic cache [400]")
    args = ap.parse_args()

    import torch

    from amnet.core.device import cpu_label
    from amnet.extract.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
    from amnet.extract.cache import create, finite_rows, settings_attrs
    from amnet.extract.feature_cache import FeatureCache

    torch.set_num_threads(1)
    names = [f"img{i:06d}.jpg" for i in range(args.n)]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        spec = BackboneSpec(weights_id="random:0", arch="resnet50", mean=IMAGENET_MEAN,
                            std=IMAGENET_STD, weights_sha256="00" * 32)
        with create(path, names, settings_attrs(spec, 224, False, 1024, (14, 14))) as f:
            for s in range(0, args.n, 64):
                n = min(64, args.n - s)
                f["features"][s:s + n] = rng.standard_normal((n, 1024, 14, 14)).astype(np.float16)
            f["done"][:] = True
            f.attrs["complete"] = True
        with FeatureCache(path) as cache:
            feats = cache.load(names)                      # warms the page cache too
            assert finite_rows(feats).all()
            gb = feats.numel() * 2 / 1e9
            rows = [
                ("load the split (`FeatureCache.load`, preload)", timed(lambda: cache.load(names))),
                ("check it in memory (`finite_rows`)", timed(lambda: finite_rows(feats))),
                ("numpy `isfinite(x).all(axis=1)` over it",
                 timed(lambda: np.isfinite(feats.numpy().reshape(args.n, -1)).all(axis=1))),
                ("check from the file (`FeatureCache.nonfinite`, lazy)",
                 timed(lambda: cache.nonfinite(names))),
            ]
    base = rows[0][1]
    print(f"{args.n} images of [1024, 14, 14] float16 ({gb:.2f} GB); CPU: {cpu_label()}; "
          "best of 3\n")
    print("| step | s | GB/s | vs the load |")
    print("|---|---:|---:|---:|")
    for what, s in rows:
        print(f"| {what} | {s:.3f} | {gb / s:.2f} | {s / base:.2f}x |")


if __name__ == "__main__":
    main()
