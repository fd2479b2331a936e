"""Stage two throughput: the AMNet head over cached features vs the original's way.

The original ran the frozen ResNet50 (fp32) on every image in every epoch and the head on top;
we run the head over cached layer3 features. Both are measured here in the same run, with the
paper-size head (13.3M parameters) and the real training/eval code paths (amnet.train), on random
data (throughput does not depend on values). Image decoding is NOT counted for the baseline, so
the ratio is a lower bound. Prints a markdown table and writes bench/results/train.json.

    python bench/train.py                     # CPU, batch 222, 2 timed steps per row
    python bench/train.py --device cuda --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from amnet.model import AMNet
from amnet.train import TrainConfig, _Lazy, _Preloaded, _Split, _train_epoch, predict_split, \
    resolve_device

LAMEM_TRAIN = 45_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _split(n: int, feats: torch.Tensor | None, source=None) -> _Split:
    s = _Split([f"img{i:06d}.jpg" for i in range(n)], np.full(n, 0.75))
    s.source = source or _Preloaded(feats, None)
    return s


def bench_cached_train(n_batches: int, batch: int, device: torch.device, amp: str, source=None,
                       feats: torch.Tensor | None = None) -> float:
    """Samples/s of `_train_epoch` over `n_batches` batches (after one warm-up batch)."""
    torch.manual_seed(0)
    model = AMNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-6)
    cfg = TrainConfig(batch_size=batch, amp=amp, flip=False)
    gen = torch.Generator().manual_seed(0)
    warm = _split(batch, feats[:batch] if feats is not None else None, source)
    targets = torch.full((feats.shape[0] if feats is not None else batch * n_batches,), 0.75,
                         device=device)
    _train_epoch(model, opt, warm, targets, gen, False, cfg, device, None)
    n = batch * n_batches
    split = _split(n, feats, source)
    _sync(device)
    t = time.perf_counter()
    _train_epoch(model, opt, split, targets, gen, False, cfg, device, None)
    _sync(device)
    return n / (time.perf_counter() - t)


def bench_cached_eval(n_batches: int, batch: int, device: torch.device, amp: str,
                      feats: torch.Tensor) -> float:
    model = AMNet().to(device).eval()
    predict_split(model, _split(batch, feats[:batch]), device, batch, amp)
    n = batch * n_batches
    split = _split(n, feats[:n])
    _sync(device)
    t = time.perf_counter()
    predict_split(model, split, device, batch, amp)
    _sync(device)
    return n / (time.perf_counter() - t)


def bench_baseline(n_batches: int, batch: int, device: torch.device, train: bool) -> float:
    """The original's step: frozen ResNet50 (fp32, random weights) to layer3, then the head.

    Images are random tensors already on the device: decoding and resizing are not counted."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50().to(device)
    net.requires_grad_(False)
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                                net.layer3)
    head = AMNet().to(device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.full((batch,), 0.75, device=device)
    from amnet.model import amnet_loss

    def step():
        if train:
            trunk.train()   # as the original: BN in train mode, no gradients
            head.train()
            with torch.no_grad():
                f = trunk(x)
            out, alphas = head(f)
            loss = amnet_loss(out, alphas, y, head.config)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            trunk.eval()
            head.eval()
            with torch.no_grad():
                head(trunk(x))

    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(n_batches):
        step()
    _sync(device)
    return batch * n_batches / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=222, help="train batch (the original's 222)")
    ap.add_argument("--eval-batch", type=int, default=370)
    ap.add_argument("--steps", type=int, default=2, help="timed batches per row (after 1 warm-up)")
    ap.add_argument("--baseline-batch", type=int, default=None,
                    help="batch for the ResNet baseline rows (default: --batch)")
    ap.add_argument("--no-lazy", action="store_true", help="skip the lazy HDF5 row")
    ap.add_argument("--out", default="bench/results/train.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    bb = args.baseline_batch or args.batch
    amp_fast = "bf16"
    n_feat = max(args.batch, args.eval_batch) * args.steps
    feats = torch.randn(n_feat, 1024, 14, 14).half().to(device)

    rows = []

    def add(what, mode, sps, batch):
        rows.append({"what": what, "mode": mode, "samples_per_s": sps, "batch": batch,
                     "lamem_epoch_s": LAMEM_TRAIN / sps})
        print(f"  {what:48s} {mode:6s} {sps:10.1f} samples/s", file=sys.stderr, flush=True)

    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    add("cached features, train (preloaded)", "fp32", bench_cached_train(args.steps, args.batch, device, "off", feats=feats), args.batch)
    add("cached features, train (preloaded)", "bf16", bench_cached_train(args.steps, args.batch, device, amp_fast, feats=feats), args.batch)
    if not args.no_lazy:
        with tempfile.TemporaryDirectory() as tmp:
            path = _write_tmp_cache(Path(tmp) / "b.h5", feats[: args.batch * args.steps].cpu())
            names = [f"img{i:06d}.jpg" for i in range(args.batch * args.steps)]
            src = _Lazy(str(path), names, workers=min(4, os.cpu_count() or 1), pin=device.type == "cuda")
            add("cached features, train (lazy HDF5, workers)", "fp32",
                bench_cached_train(args.steps, args.batch, device, "off", source=src,
                                   feats=None), args.batch)
            src.close()
    add("cached features, eval", "fp32", bench_cached_eval(args.steps, args.eval_batch, device, "off", feats), args.eval_batch)
    add("cached features, eval", "bf16", bench_cached_eval(args.steps, args.eval_batch, device, amp_fast, feats), args.eval_batch)
    add("original: ResNet50 + head every step, train", "fp32", bench_baseline(args.steps, bb, device, True), bb)
    add("original: ResNet50 + head every step, eval", "fp32", bench_baseline(args.steps, bb, device, False), bb)

    base_train = rows[-2]["samples_per_s"]
    base_eval = rows[-1]["samples_per_s"]
    print(f"\n### Stage two throughput ({device}, {torch.get_num_threads()} threads, torch {torch.__version__})\n")
    print("| what | precision | batch | samples/s | vs original | LaMem epoch (45,000 img) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = base_eval if "eval" in r["what"] else base_train
        r["ratio_vs_original"] = r["samples_per_s"] / base
        print(f"| {r['what']} | {r['mode']} | {r['batch']} | {r['samples_per_s']:,.1f} | "
              f"{r['ratio_vs_original']:.2f}x | {_fmt_s(r['lamem_epoch_s'])} |")
    print("\nThe original's rows exclude JPEG decoding and resizing (they would only slow it further).")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "steps": args.steps, "rows": rows}, indent=2) + "\n")


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:,.1f} s"
    if s < 7200:
        return f"{s / 60:,.1f} min"
    return f"{s / 3600:,.1f} h"


def _write_tmp_cache(path: Path, feats: torch.Tensor) -> Path:
    import h5py

    from amnet.cache import FORMAT

    n = feats.shape[0]
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["complete"] = True
        f.create_dataset("features", data=feats.numpy(), chunks=(1, *feats.shape[1:]))
        f.create_dataset("names", data=np.array([f"img{i:06d}.jpg" for i in range(n)], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("done", data=np.ones(n, dtype=bool))
    return path


if __name__ == "__main__":
    main()
