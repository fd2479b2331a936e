"""Stage two throughput: the AMNet head over cached features vs the original's way.

The original ran the frozen ResNet50 (fp32) on every image in every epoch and the head on top;
we run the head over cached layer3 features. Both are measured here in the same run, through the
public code paths only (`amnet.head.run.train_split` / `evaluate` over a random feature cache), on
random data (throughput does not depend on values). Image decoding is NOT counted for the
baseline, so the ratio is a lower bound.

Rows:
  * cached, train, preloaded (RAM; on CUDA the GPU): fp32 and bf16 autocast -- `train_split` with
    `--epochs` epochs over `--batch` x `--steps` samples and an 8-image validation split, so an
    epoch's seconds in history.csv are ~all training; the first epoch is a warm-up, samples/s
    comes from the median of the later ones;
  * cached, train, lazy HDF5 reads (DataLoader workers as TrainConfig picks them), fp32;
  * cached, eval: fp32 and bf16 -- `evaluate()` of the fp32 row's checkpoint on a split of
    `--eval-batch` x `--steps` images (one untimed call, then a timed one; the time includes
    loading the split from the cache into RAM);
  * the original's way: torchvision ResNet50 (fp32, random weights) to layer3 + the head, every
    step, on random image tensors already on the device; train and eval.

Which head precision `auto` picks on this host (amnet.core.device) is marked. Prints a markdown table
and writes docs/bench/train.json (labelled with the CPU, date, versions and this command:
bench/record.py) after every row, so a killed run keeps the rows it finished; at the end renders
the README's table (`bench:train` block) from it.

    python bench/train.py                          # CPU, paper head, batch 222, 2 batches/epoch
    python bench/train.py --head small --batch 32  # quick
    python bench/train.py --device cuda --steps 20
    python bench/train.py --render                 # the README block from the JSON, no compute
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from amnet.core.device import cpu_label, resolve_device, resolve_head_precision
from amnet.core.settings import AMNetConfig, TrainConfig
from amnet.head.evaluation import evaluate
from amnet.head.model import AMNet, amnet_loss, count_parameters
from amnet.head.run import train_split
from bench import record

LAMEM_TRAIN = 45_000
N_VAL = 8   # validation images per epoch in the train rows (kept tiny: the epoch is ~all training)
HEADS = {"paper": {}, "small": dict(feature_dim=256, hidden_dim=256, regressor_dim=128)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# a random feature cache and split files

def _names(n: int) -> list[str]:
    return [f"img{i:06d}.jpg" for i in range(n)]


def write_random_cache(path: Path, n: int, channels: int = 1024, grid: int = 14) -> Path:
    """An `amnet.cache` file (format version 1: plain view, no flips) of `n` random float16
    feature maps named img000000.jpg, ...; written in blocks to bound memory."""
    import h5py

    from amnet.cache.schema import FORMAT

    gen = torch.Generator().manual_seed(0)
    with h5py.File(path, "w") as f:
        f.attrs.update(format=FORMAT, format_version=1, complete=True, flip=False,
                       channels=channels, grid=np.asarray([grid, grid]))
        ds = f.create_dataset("features", shape=(n, channels, grid, grid), dtype=np.float16,
                              chunks=(1, channels, grid, grid))
        for i in range(0, n, 64):
            j = min(n, i + 64)
            ds[i:j] = torch.randn(j - i, channels, grid, grid, generator=gen).half().numpy()
        f.create_dataset("names", data=np.array(_names(n), dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("done", data=np.ones(n, dtype=bool))
    return path


def write_split(path: Path, names: list[str], seed: int) -> Path:
    scores = np.random.default_rng(seed).uniform(0.4, 0.9, len(names))
    path.write_text("".join(f"{a} {b:.4f}\n" for a, b in zip(names, scores)))
    return path


# ---------------------------------------------------------------------------------------------
# the rows

def bench_cached_train(cache: Path, train_file: Path, val_file: Path, out_dir: Path, head: dict,
                       n_train: int, batch: int, epochs: int, device: torch.device,
                       precision: str, preload: str) -> dict:
    """`train_split` for `epochs` epochs; samples/s from the epochs after the first."""
    import pandas as pd

    cfg = TrainConfig(epochs=epochs, batch_size=batch, eval_batch_size=N_VAL, device=str(device),
                      precision=precision, preload=preload, workers=-1, flip=False, views=False,
                      progress=False)
    t0 = time.perf_counter()
    m = train_split(cache, train_file, val_file, None, out_dir, AMNetConfig(**head), cfg)
    total = time.perf_counter() - t0
    seconds = pd.read_csv(out_dir / "history.csv")["seconds"].tolist()
    epoch_s = statistics.median(seconds[1:])
    trained = n_train // min(batch, n_train) * min(batch, n_train)   # drop_last
    return {"samples_per_s": trained / epoch_s, "epoch_s": epoch_s, "first_epoch_s": seconds[0],
            "epochs": epochs, "samples_per_epoch": trained, "total_s": total,
            "data": m["data"], "precision": m["precision"], "checkpoint": m["checkpoint"]}


def bench_cached_eval(checkpoint: str, cache: Path, split_file: Path, n: int, batch: int,
                      device: torch.device, precision: str, preload: str) -> dict:
    """`evaluate()` once untimed, then timed (includes loading the split from the cache)."""
    kw = dict(device=str(device), batch_size=batch, precision=precision, preload=preload)
    evaluate(checkpoint, cache, split_file, **kw)
    _sync(device)
    t = time.perf_counter()
    m, _ = evaluate(checkpoint, cache, split_file, **kw)
    _sync(device)
    s = time.perf_counter() - t
    return {"samples_per_s": n / s, "eval_s": s, "n": n, "data": m["data"],
            "precision": m["precision"]}


def bench_baseline(n_batches: int, batch: int, device: torch.device, train: bool,
                   head: dict | None = None) -> float:
    """The original's step: frozen ResNet50 (fp32, random weights) to layer3, then the head.

    Images are random tensors already on the device: decoding and resizing are not counted.
    One untimed warm-up step, then `n_batches` timed ones."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50().to(device)
    net.requires_grad_(False)
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                                net.layer3)
    model = AMNet(AMNetConfig(**(head or {}))).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.full((batch,), 0.75, device=device)

    def step():
        if train:
            trunk.train()   # as the original: BN in train mode, no gradients
            model.train()
            with torch.no_grad():
                f = trunk(x)
            out, alphas = model(f)
            loss = amnet_loss(out, alphas, y, model.config)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            trunk.eval()
            model.eval()
            with torch.no_grad():
                model(trunk(x))

    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(n_batches):
        step()
    _sync(device)
    return batch * n_batches / (time.perf_counter() - t)


# ---------------------------------------------------------------------------------------------

def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:,.1f} s"
    if s < 7200:
        return f"{s / 60:,.1f} min"
    return f"{s / 3600:,.1f} h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--head", default="paper", choices=sorted(HEADS),
                    help="paper: 1024/1024/512 (13.3M parameters); small: 256/256/128")
    ap.add_argument("--batch", type=int, default=222, help="train batch (the original's 222)")
    ap.add_argument("--eval-batch", type=int, default=370)
    ap.add_argument("--steps", type=int, default=2,
                    help="timed batches: train batches per epoch (train split = batch x steps), "
                         "eval split = eval-batch x steps images, baseline steps after 1 warm-up")
    ap.add_argument("--epochs", type=int, default=2,
                    help="train epochs per train row, >= 2 (the first is a warm-up, not timed)")
    ap.add_argument("--baseline-batch", type=int, default=None,
                    help="batch for the ResNet baseline rows (default: --batch)")
    ap.add_argument("--no-lazy", action="store_true", help="skip the lazy HDF5 row")
    ap.add_argument("--render", action="store_true",
                    help="no compute: render the README block from docs/bench/train.json")
    args = ap.parse_args()
    if args.render:
        record.publish("train", render(record.load("train")))
        return
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is a warm-up)")
    if args.steps < 1:
        ap.error("--steps must be >= 1")

    device = resolve_device(args.device)
    head = HEADS[args.head]
    n_params = count_parameters(AMNet(AMNetConfig(**head)))
    auto = resolve_head_precision("auto", device)
    cpu = cpu_label()
    label = cpu if device.type == "cpu" else f"{torch.cuda.get_device_name(device)} (host: {cpu})"
    preload = "device" if device.type == "cuda" else "ram"
    bb = args.baseline_batch or args.batch
    n_train = args.batch * args.steps
    n_eval = args.eval_batch * args.steps
    threads = torch.get_num_threads()

    result = {"label": label, "device": str(device), "threads": threads,
              "head": args.head, "head_params": n_params, "auto": auto, "args": vars(args),
              "rows": []}
    rows = result["rows"]

    def add(what: str, precision: str, batch: int, res: dict) -> None:
        sps = res["samples_per_s"]
        cached = not what.startswith("original")
        rows.append({"what": what, "precision": precision, "auto": cached and precision == auto,
                     "batch": batch, "samples_per_s": sps, "lamem_epoch_s": LAMEM_TRAIN / sps,
                     **{k: v for k, v in res.items() if k != "samples_per_s"}})
        record.save("train", result)
        print(f"  {what:48s} {precision:5s} {sps:10.1f} samples/s", file=sys.stderr, flush=True)

    print(f"{label}; device {device}, torch {torch.__version__}, {threads} threads; "
          f"{args.head} head ({n_params:,} parameters); auto -> {auto}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="amnet-bench-train-") as tmp:
        tmp = Path(tmp)
        names = _names(max(n_train + N_VAL, n_eval))
        t = time.perf_counter()
        cache = write_random_cache(tmp / "random.h5", len(names))
        train_file = write_split(tmp / "train.txt", names[:n_train], 1)
        val_file = write_split(tmp / "val.txt", names[n_train:n_train + N_VAL], 2)
        eval_file = write_split(tmp / "eval.txt", names[:n_eval], 3)
        print(f"  random cache: {len(names)} images, {time.perf_counter() - t:.1f} s",
              file=sys.stderr, flush=True)

        ckpt = None
        for prec in ("fp32", "bf16"):
            r = bench_cached_train(cache, train_file, val_file, tmp / f"train-{prec}", head,
                                   n_train, args.batch, args.epochs, device, prec, preload)
            path = r.pop("checkpoint")
            ckpt = ckpt or path     # the fp32 row's head is the one evaluated below
            add(f"cached features, train (preloaded, {r['data']})", prec, args.batch, r)
        if not args.no_lazy:
            r = bench_cached_train(cache, train_file, val_file, tmp / "train-lazy", head, n_train,
                                   args.batch, args.epochs, device, "fp32", "lazy")
            r.pop("checkpoint")
            add("cached features, train (lazy HDF5, workers)", "fp32", args.batch, r)
        for prec in ("fp32", "bf16"):
            r = bench_cached_eval(ckpt, cache, eval_file, n_eval, args.eval_batch, device, prec,
                                  preload)
            add(f"cached features, eval ({r['data']}, incl. loading)", prec, args.eval_batch, r)
    add("original: ResNet50 + head every step, train", "fp32", bb,
        {"samples_per_s": bench_baseline(args.steps, bb, device, True, head)})
    add("original: ResNet50 + head every step, eval", "fp32", bb,
        {"samples_per_s": bench_baseline(args.steps, bb, device, False, head)})

    base_train = rows[-2]["samples_per_s"]
    base_eval = rows[-1]["samples_per_s"]
    for r in rows:
        r["ratio_vs_original"] = r["samples_per_s"] / (base_eval if "eval" in r["what"] else base_train)
    record.save("train", result)
    record.publish("train", render(record.load("train")))
    print(f"Train rows: {n_train} samples/epoch, {args.epochs} epochs, the first a warm-up "
          f"(epoch seconds from history.csv, including an {N_VAL}-image validation pass). "
          f"Eval rows: {n_eval} images, the second of two `evaluate()` calls, including loading "
          "the split from the cache. The original's rows exclude JPEG decoding and resizing "
          "(they would only slow it further).", file=sys.stderr)


def render(res: dict) -> str:
    """The README block: the rows of docs/bench/train.json, cached against the original's way."""
    a = res["args"]
    what = {"cached features, train (preloaded, ram)": "cached, train (preloaded)",
            "cached features, train (preloaded, device)": "cached, train (preloaded)",
            "cached features, train (lazy HDF5, workers)": "cached, train (lazy HDF5 reads, workers)",
            "cached features, eval (ram, incl. loading)": "cached, eval (incl. loading the split)",
            "cached features, eval (device, incl. loading)": "cached, eval (incl. loading the split)",
            "original: ResNet50 + head every step, train": "original: ResNet50 + head, train",
            "original: ResNet50 + head every step, eval": "original: ResNet50 + head, eval"}
    lines = [record.source_line("train", res, f"{res['label']}" if res["device"] != "cpu" else
                                f"{res['threads']} threads")
             + f": {res['head']} head ({res['head_params']:,} parameters), train batch "
             f"{a['batch']}" + (f" (the original's rows {a['baseline_batch']})"
                                if a.get("baseline_batch") not in (None, a["batch"]) else "")
             + f", {a['steps']} timed batch(es), `auto` -> {res['auto']} here.", "",
             f"| what | precision | samples/s | vs original | LaMem epoch ({LAMEM_TRAIN:,} images) |",
             "|---|---|---:|---:|---:|"]
    for r in res["rows"]:
        sps = f"{r['samples_per_s']:,.1f}"
        lines.append(f"| {what.get(r['what'], r['what'])} | {r['precision']}"
                     + (" (`auto`)" if r["auto"] else "") + " | "
                     + (f"**{sps}**" if r["auto"] and "train" in r["what"] else sps)
                     + f" | {r['ratio_vs_original']:.1f}x | {_fmt_s(r['lamem_epoch_s'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
