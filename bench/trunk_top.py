"""Stage two with the top of the trunk trained (`model.trainable_layers: [layer4.2]`) against the
frozen trunk, on the same cached rows, in the same run.

A random `layer4.1` feature cache (2048 x 7 x 7 float16 per image, what a 224 input gives) of
`--n` rows carrying random:0's layer4.2 weights (the `trunk_top` group, as stage one writes it),
a `--val`-image validation split; `train_split` (the public path) for `--epochs` epochs with the
paper's head, once frozen (`trainable_layers: []`, the baseline) and once training layer4.2,
each at the head precision `auto` picks on this host (bf16 autocast where bf16 is native, else
fp32) and, for the trained top, also at fp32. Seconds per epoch are history.csv's (training plus
the small validation pass), the median of the epochs after the first (a warm-up). The table
gives each row's ratio to the frozen row of the same precision. Values do not matter for speed,
so the rows are random; parameter counts and MACs come from amnet.head.top_blocks.

Writes docs/bench/trunk_top.json (labelled with the CPU, date, versions and this command:
bench/record.py) and renders the README's `bench:trunk_top` block from it.

    python bench/trunk_top.py                     # 1,000 rows, 3 epochs
    python bench/trunk_top.py --render            # the README block from the JSON, no compute
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from amnet.cache import writer
from amnet.core.device import resolve_device, resolve_head_precision
from amnet.core.settings import AMNetConfig, TrainConfig
from amnet.head.top_blocks import block_macs
from bench import record
from bench.train import _names, write_random_cache, write_split

NAME = "trunk_top"


def make_cache(path: Path, n: int) -> Path:
    """`n` random layer4.1 rows (2048 x 7 x 7) + random:0's layer4.2 weights, as stage one
    writes them."""
    from amnet.extract.backbone import load_network, top_state
    write_random_cache(path, n, channels=2048, grid=7)
    with h5py.File(path, "r+") as f:
        f.attrs.update(layer="layer4.1", trunk_top="layer4.2")
        writer.write_top(f, top_state(load_network("random:0")[0], "layer4.1"))
    return path


def run_row(cache: Path, train: Path, val: Path, out: Path, blocks: list[str], precision: str,
            epochs: int) -> dict:
    import pandas as pd

    from amnet.head.run import train_split
    cfg = TrainConfig(epochs=epochs, precision=precision, device="cpu", flip=False, views=False,
                      progress=False)
    m = train_split(cache, train, val, None, out, AMNetConfig(trainable_layers=blocks), cfg)
    seconds = pd.read_csv(out / "history.csv")["seconds"].tolist()
    return {"trainable_layers": blocks, "precision": m["precision"],
            "epoch_s": statistics.median(seconds[1:]), "first_epoch_s": seconds[0],
            "epochs": epochs}


def render(res: dict) -> str:
    rows = res["rows"]
    base = {r["precision"]: r["epoch_s"] for r in rows if not r["trainable_layers"]}
    lines = [f"Stage two on {res['n_train']:,} cached `layer4.1` rows (2048 x 7 x 7) + "
             f"{res['n_val']} validation rows, the paper's head, batch 222; seconds per epoch "
             "(training and the validation pass), median after a warm-up epoch.", "",
             "| trunk blocks trained | head precision | s / epoch | vs frozen |",
             "|---|---|---:|---:|"]
    for r in rows:
        ref = base.get(r["precision"])
        ratio = f"{r['epoch_s'] / ref:.1f}x" if ref else "--"
        lines.append(f"| {', '.join(r['trainable_layers']) or 'none (frozen)'} | "
                     f"{r['precision']} | {r['epoch_s']:.1f} | {ratio} |")
    lines += ["", f"layer4.2: {res['block_params']:,} parameters, "
                  f"{res['block_gmac']:.2f} GMAC forward per image at 7 x 7 (about 3x that to "
                  "train: forward plus two backward products).", "",
              record.source_line(NAME, res)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="training rows")
    ap.add_argument("--val", type=int, default=32, help="validation rows")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args(argv)
    if args.render:
        record.publish(NAME, render(record.load(NAME)))
        return
    auto = resolve_head_precision("auto", resolve_device("cpu"))
    res: dict = {"n_train": args.n, "n_val": args.val, "block_params": 4_462_592,
                 "block_gmac": block_macs(7) / 1e9, "auto_precision": auto, "rows": []}
    plan = [([], auto), (["layer4.2"], auto)] + ([([], "fp32"), (["layer4.2"], "fp32")]
                                                 if auto != "fp32" else [])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = make_cache(tmp / "c.h5", args.n + args.val)
        names = _names(args.n + args.val)
        train = write_split(tmp / "train.txt", names[:args.n], 0)
        val = write_split(tmp / "val.txt", names[args.n:], 1)
        for i, (blocks, precision) in enumerate(plan):
            row = run_row(cache, train, val, tmp / f"r{i}", blocks, precision, args.epochs)
            res["rows"].append(row)
            print(row, flush=True)
            record.save(NAME, res)  # after every row: a killed run keeps what it finished
    record.publish(NAME, render(record.load(NAME)))


if __name__ == "__main__":
    main()
