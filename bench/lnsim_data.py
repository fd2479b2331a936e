"""LNSIM benchmark, data side: prepared splits, feature caches and their identity, ResMem scores.

Everything here is made once and reused from --work (default bench/results/lnsim, gitignored);
each step resumes where a killed run stopped. Used by bench/lnsim.py and bench/lnsim_sweep.py.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path("../shared/data/lnsim")          # relative to the project root
DEFAULT_WORK = Path("bench/results/lnsim")
DEFAULT_CONFIG = Path("configs/lnsim.yaml")         # the tuned recipe (model:, train:, backbone:)
N_SPLITS = 25                                       # LNSIM's subject_hrs*.mat rows
PREP = dict(seed=2018, val_fraction=0.1)             # params.yaml data.protocol defaults
IMAGE_SIZE = 224


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def json_safe(x: Any) -> Any:
    """Plain Python for JSON: numpy / tuple / path values as amnet.head.checkpoint.plain makes
    them, then nan/inf -> None, recursively (JSON has no nan). The bench's one JSON-plainer."""
    from amnet.head.checkpoint import plain

    x = plain(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, obj: Any) -> None:
    """Atomically (amnet.core.atomic: a temporary file next to `path`, fsync, os.replace)."""
    from amnet.core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True,
                                       default=str, allow_nan=False) + "\n")


def have_lnsim(data_root: Path) -> bool:
    return (data_root / "Image_data").is_dir() and (data_root / "Random_splits").is_dir()


def cpu_info() -> dict[str, Any]:
    """CPU model and the bf16 paths it has natively (AMX > AVX512-BF16 > only AVX2)."""
    import torch

    from amnet.core.device import cpu_features, cpu_model

    name = cpu_model() or platform.processor() or platform.machine()
    feats = cpu_features()
    amx, bf16, avx2 = feats["amx"], feats["avx512_bf16"], feats["avx2"]
    isa = "AMX" if amx else "AVX512-BF16" if bf16 else "AVX2 only" if avx2 else "no AVX2"
    return {"model": name, "cores": os.cpu_count(), "amx": amx, "avx512_bf16": bf16,
            "avx2": avx2, "isa": isa, "torch_threads": torch.get_num_threads()}


def device_label(device: str, cpu: dict) -> str:
    import torch
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU: {cpu['model']} ({cpu['cores']} cores, {cpu['isa']})"


# ---------------------------------------------------------------------------------------------
# prepared splits

def prepare(work: Path, data_root: Path, splits: list[int] | None = None) -> dict:
    """Every split of the .mat into work/data (text files; reused when prepare.json matches)."""
    from amnet.data import load_prepare_info, prepare_dataset

    out = work / "data"
    if (out / "prepare.json").exists():
        info = load_prepare_info(out)
        same = (info.get("seed") == PREP["seed"]
                and info.get("options", {}).get("val_fraction") == PREP["val_fraction"]
                and info.get("source") == str(data_root.resolve())
                and set(splits or []) <= set(info.get("splits", [])))
        if same:
            return info
        log(f"prepare: {out} was made with other settings; preparing again")
    log(f"prepare: isola-mat splits from {data_root} -> {out}")
    return prepare_dataset("isola-mat", out, root=data_root, splits=None, **PREP)


def read_part(work: Path, part: str, k: int):
    """(names, float64 scores) of part train | val | test of split k."""
    import numpy as np

    from amnet.data import read_dataset_split
    items = read_dataset_split(work / "data", part, k, check_images=False)
    return [n for n, _ in items], np.asarray([s for _, s in items], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# feature caches

def cache_path(work: Path, backbone: str, views: int = 0, layers: str = "layer3") -> Path:
    """work/cache/<backbone>.h5 (layer3, plain + flip), <backbone>.views<K>.h5 with K crop views
    too, <backbone>.layer3+layer4.h5 for another layer set (`--layers`)."""
    stem = backbone if layers == "layer3" else f"{backbone}.{layers.replace(',', '+')}"
    return work / "cache" / (f"{stem}.h5" if not views else f"{stem}.views{views}.h5")


def cache_views(cache: Any) -> int:
    """Crop views per image a cache holds (0 for caches made before views existed)."""
    v = getattr(cache, "views", None)
    if v is None:
        v = cache.attrs.get("views", cache.attrs.get("n_views", 0))
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


# what a cache records that does not decide its features (when and where it was written)
VOLATILE_ATTRS = frozenset({"created", "updated", "source", "merged_from", "repaired_from",
                            "amnet_version", "complete", "shard_count", "shard_total",
                            "shard_index", "merged_shard_total"})


def cache_identity(path: Path) -> dict[str, Any]:
    """What a feature cache holds, cheaply and by content rather than by name: its recorded
    attributes (backbone, trunk weights' sha256, layer set, image size, precision, flip, views,
    torch/torchvision versions, device, ...; VOLATILE_ATTRS left out) and the sha256 of its
    names, done flags and failed list. A re-extracted cache with other weights, settings or rows
    gets another identity; hashing the GBs of features themselves is not needed for that."""
    import hashlib

    from amnet.cache.reader import FeatureCache

    with FeatureCache(path) as c:
        attrs = {k: v for k, v in c.attrs.items() if k not in VOLATILE_ATTRS}
        rows = hashlib.sha256()
        for n in c.names:
            rows.update(f"{n}\t{int(n in c)}\n".encode())     # `in`: the row is done
        rows.update(json.dumps(sorted(c.failed.items())).encode())
        return json_safe({"attrs": attrs, "rows_sha256": rows.hexdigest(),
                          "n": len(c.names), "views": c.views, "flip": c.has_flip})


def ensure_cache(work: Path, backbone: str, names: list[str], args, views: int = 0,
                 layers: str = "layer3") -> dict:
    """One cache per backbone: plain + flip (+ `views` crop views) of every image.

    Returns its timing (accumulated over resumes) and the view count. views == 0 calls today's
    `extract` unchanged; views > 0 needs an extractor that takes `views=`.
    """
    from amnet.extract.run import extract

    path = cache_path(work, backbone, views, layers)
    timing_path = path.with_suffix(".timing.json")
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else \
        {"seconds": 0.0, "extracted": 0, "device": None}

    def report() -> dict:
        rate = timing["extracted"] / timing["seconds"] if timing["seconds"] else None
        return {**timing, "path": str(path), "images": len(names), "views": views,
                "layers": layers, "images_per_s": rate}

    if path.exists():
        # read-only check first: a complete cache is used without loading the backbone, and
        # without the writer's r+ open, which HDF5's locking refuses while another run reads it
        from amnet.cache.reader import FeatureCache
        with FeatureCache(path) as c:
            ready = (c.complete and c.has_flip and c.names == names and cache_views(c) == views
                     and c.attrs.get("layer", "layer3") == layers
                     and c.attrs.get("weights_id") == backbone
                     and c.attrs.get("image_size") == IMAGE_SIZE)
        if ready:
            log(f"extract: {backbone}: {path} is complete, reused")
            return report()
    kwargs: dict[str, Any] = {}
    if views:
        kwargs["views"] = views
    if layers != "layer3":
        kwargs["layers"] = layers
    log(f"extract: {backbone} {layers} -> {path} ({len(names)} images + flip views"
        f"{f' + {views} crop views' if views else ''})")
    images = work / "data" / "images"
    s = extract([(n, images / n) for n in names], path, weights=backbone, image_size=IMAGE_SIZE,
                flip=True, device=args.device, batch_size=args.extract_batch,
                workers=args.workers, on_error="fail", progress=False, source=str(work / "data"),
                **kwargs)
    if s["extracted"]:
        timing["seconds"] += s["seconds"]
        timing["extracted"] += s["extracted"]
        timing["device"] = s["device"]
        timing["views"] = views
        write_json(timing_path, timing)
    if not s["complete"]:
        raise SystemExit(f"extract: {path} is not complete ({s}); see the failed images in it")
    log(f"extract: {backbone} complete ({s['extracted']} extracted now, {s['already']} before)")
    return report()


def resmem_scores(work: Path, names: list[str], args) -> tuple[dict[str, float], dict]:
    """`names` scored once each by the published ResMem model (CSV in work, resumable)."""
    from baselines import ResMemScorer

    csv_path = work / f"resmem_scores_{args.resmem_precision}.csv"
    timing_path = csv_path.with_suffix(".timing.json")
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else \
        {"seconds": 0.0, "scored": 0}
    have: dict[str, float] = {}
    if csv_path.exists():
        import csv
        with open(csv_path, newline="") as f:
            have = {r["name"]: float(r["score"]) for r in csv.DictReader(f)}
    if all(n in have for n in names):
        return have, timing
    log(f"resmem: {len(set(names) - set(have))} of {len(names)} images to score with the "
        f"published model ({args.resmem_precision}, {args.device})")
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


def resolve_device_args(args) -> None:
    """auto -> cuda when present (amnet.core.device); worker and batch defaults per device (in place)."""
    from amnet.core.device import resolve_device

    device = resolve_device(args.device)  # checks the name, and that a CUDA device exists
    if args.device == "auto":
        args.device = device.type
    if getattr(args, "workers", None) is None:
        args.workers = min(8, os.cpu_count() or 1) if args.device.startswith("cuda") else 0
    if getattr(args, "extract_batch", None) is None:
        args.extract_batch = 128 if args.device.startswith("cuda") else 32
