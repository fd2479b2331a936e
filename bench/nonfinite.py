"""Benchmark the NaN/Inf check of stage two's features (issue 11, defect 1) against loading them.

`amnet train` / `evaluate` check every image's features once, as a split is loaded: over the
tensor in memory (`amnet.cache.schema.finite_rows`, float16 exponent bits, blocks of 64 rows) or, for
`--preload lazy`, in one pass over the file (`FeatureCache.nonfinite`). This measures, in one
run, on a synthetic cache of N images of [1024, 14, 14] float16 (401 KB each; the OS page cache
warm, as after extraction):

    python bench/nonfinite.py            # N = 400 (160 MB)
    python bench/nonfinite.py --n 2000

and writes docs/bench/nonfinite.json (labelled with the CPU, date, versions and this command:
bench/record.py), from which it renders the table of docs/reliability.md (`bench:nonfinite`
block): seconds and GB/s of loading the split (the baseline), of the check over it, of numpy's
`isfinite(...).all()` over it, and of the lazy one-pass check, each as a fraction of the load.

    python bench/nonfinite.py --render    # the block from the committed JSON, no compute
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
from bench import record  # noqa: E402


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
    ap.add_argument("--render", action="store_true",
                    help="no compute: render the block from docs/bench/nonfinite.json")
    args = ap.parse_args()
    if args.render:
        record.publish("nonfinite", render(record.load("nonfinite")))
        return

    import torch

    from amnet.extract.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
    from amnet.cache.schema import finite_rows, settings_attrs
    from amnet.cache.writer import create
    from amnet.cache.reader import FeatureCache

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
    record.save("nonfinite", {"n": args.n, "gb": gb, "repeat": 3,
                              "rows": [{"step": what, "seconds": sec} for what, sec in rows]})
    record.publish("nonfinite", render(record.load("nonfinite")))


def render(res: dict) -> str:
    """The block: each step's seconds, GB/s and fraction of the load, from the JSON."""
    gb, base = res["gb"], res["rows"][0]["seconds"]
    lines = [record.source_line("nonfinite", res) + f": {res['n']} images of [1024, 14, 14] "
             f"float16 ({gb:.2f} GB), best of {res['repeat']}.", "",
             "| step | s | GB/s | vs the load |", "|---|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['seconds']:.3f} | {gb / r['seconds']:.2f} | "
              f"{r['seconds'] / base:.2f}x |" for r in res["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
