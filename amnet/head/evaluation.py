"""Scoring a head over cached features: predictions for one split part, test-time views, and
`evaluate` (metrics of a saved checkpoint on a split file, without training).

Validation after every epoch, the final test pass of `train_split` and `amnet evaluate` all go
through `predict_split`, so they score the same images the same way: eval mode, every image (no
dropped partial batch), the plain view -- or with `tta` the mean over every stored view.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from amnet.core.caveats import precision_mismatch, small_test
from amnet.core.device import autocast, resolve_device, resolve_head_precision
from amnet.core.errors import CacheError
from amnet.core.metrics import finite_or_none, mse, spearman
from amnet.core.provenance import BackboneRecord, check_compatible, file_sha256, versions
from amnet.head.checkpoint import load_checkpoint
from amnet.head.feeding import SplitPart, attach_sources, open_cache
from amnet.head.model import AMNet
from amnet.head.publish import Outputs

log = logging.getLogger("amnet.evaluation")


def check_names(cache, names: Sequence[str], split_path: str | os.PathLike, cache_path) -> None:
    """CacheError naming (the first few of) the images of a split file the cache lacks, and the
    line of the first."""
    missing = cache.missing(names)
    if missing:
        from amnet.data.listfiles import where_listed

        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CacheError(f"{where_listed(split_path, missing[0])}: {len(missing)} of {len(names)} "
                         f"images are not in the cache "
                         f"{cache_path}: {shown}; extract them with `amnet-cache extract` "
                         "(or remove them from the split)")


def read_part(path, score_range: tuple[float, float] | None) -> tuple[list[str], np.ndarray]:
    """A split file -> (names, float64 scores), scores checked against `score_range`."""
    from amnet.data.listfiles import read_split

    items = read_split(path, score_range=score_range)
    return [n for n, _ in items], np.asarray([s for _, s in items], dtype=np.float64)


def safe_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """NaN / Inf floats -> None, so the dict writes as strict JSON."""
    return {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in m.items()}


def tta_views(split: SplitPart, tta: bool) -> list[tuple[int, bool]]:
    """The (view, flip) pairs a prediction averages over: the plain view only, or with tta every
    view the split part's source holds (plain + K crops, each also mirrored when it has flips)."""
    if not tta:
        return [(0, False)]
    src = split.source
    return [(v, f) for f in ((False, True) if src.has_flip else (False,))
            for v in range(src.views + 1)]


@torch.no_grad()
def predict_split(model: AMNet, split: SplitPart, device: torch.device, batch_size: int = 370,
                  precision: str = "fp32", tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode predictions for a whole split part -> (scores [N], per-step scores [N, T]);
    with tta, the head's outputs averaged over `tta_views`. `precision`: a resolved head
    precision ("bf16" autocast or "fp32")."""
    model.eval()
    n = len(split)
    order = torch.arange(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    pairs = tta_views(split, tta)
    total = None
    for view, flip in pairs:
        flips = torch.full((n,), flip) if flip else None
        views = torch.full((n,), view, dtype=torch.long) if view else None
        outs = []
        for x in split.source.batches(batches, flips, views):
            with autocast(device, precision):
                outputs, _ = model(x.to(device, non_blocking=True))
            outs.append(outputs.float().cpu())
        out = torch.cat(outs)                                           # [N, T] float32
        total = out if total is None else total + out
    outputs = total / len(pairs)
    return (model.denormalize(outputs).double().numpy(),
            model.step_scores(outputs).double().numpy())


def predictions_frame(split: SplitPart, pred: np.ndarray, steps: np.ndarray):
    """name, gt, pred, step_1..step_T: what predictions.csv holds."""
    import pandas as pd

    df = pd.DataFrame({"name": split.names, "gt": split.scores, "pred": pred})
    for t in range(steps.shape[1]):
        df[f"step_{t + 1}"] = steps[:, t]
    return df


def _check_backbone(cache, ckpt: dict, cache_path, checkpoint) -> None:
    """The cache's features must come from the backbone the head was trained on."""
    if isinstance(ckpt.get("backbone"), dict):
        check_compatible(BackboneRecord.from_attrs(cache.attrs),
                         BackboneRecord.from_dict(ckpt["backbone"]),
                         f"feature cache {cache_path}", f"checkpoint {checkpoint}",
                         error=CacheError, hint="extract a cache with the checkpoint's "
                         "--weights and settings")


def evaluate(checkpoint: str | os.PathLike, cache_path: str | os.PathLike,
             split_path: str | os.PathLike, *, device: str = "auto", batch_size: int = 370,
             precision: str = "auto", preload: str = "auto", workers: int = -1,
             out_dir: str | os.PathLike | None = None, check_backbone: bool = True,
             tta: bool = False, on_nonfinite: str = "fail"):
    """Metrics and predictions of a trained head on one split file, without training.

    tta: average the predictions over every view the cache stores (plain + crops, and their
    flips when present); otherwise the plain view only. on_nonfinite: images whose features hold
    NaN/Inf stop the run ("fail", CacheError naming them) or are left out of the metrics and
    predictions ("skip"; listed in metrics as `skipped_nonfinite`).

    Returns (metrics dict: rho, mse, n, ...; DataFrame name, gt, pred, step_1..step_T). With
    out_dir, also writes metrics.json and predictions.csv there (together: metrics last). Refuses
    (CacheError) a cache whose backbone weights differ from the ones the head was trained on.
    """
    dev = resolve_device(device)
    precision = resolve_head_precision(precision, dev)
    model, ckpt = load_checkpoint(checkpoint, map_location=dev)
    cache = open_cache(cache_path)
    split: SplitPart | None = None
    try:
        names, scores = read_part(split_path, (0.0, 1.0))
        check_names(cache, names, split_path, cache_path)
        mc = model.config
        if (cache.channels, cache.grid[0], cache.grid[1]) != (mc.in_channels, mc.grid, mc.grid):
            raise CacheError(f"{cache_path}: features are {cache.channels}x{cache.grid[0]}x{cache.grid[1]}, "
                             f"but the head expects {mc.in_channels}x{mc.grid}x{mc.grid}")
        if check_backbone:
            _check_backbone(cache, ckpt, cache_path, checkpoint)
        backbone = ckpt.get("backbone") if isinstance(ckpt.get("backbone"), dict) else {}
        trained = BackboneRecord.from_dict(backbone).precision
        for line in (small_test(len(names), str(split_path)),
                     precision_mismatch(trained, BackboneRecord.from_attrs(cache.attrs).precision,
                                        f"checkpoint {checkpoint}",
                                        f"the features of cache {cache_path}",
                                        f"a cache extracted with --precision {trained} matches")):
            if line:
                log.warning(line)
        split = SplitPart(names, scores)
        needs = {"test": (cache.views, cache.has_flip)} if tta else {}
        mode = attach_sources(cache_path, cache, {"test": split}, needs, preload, workers, dev,
                              on_nonfinite)
        pred, steps = predict_split(model, split, dev, batch_size, precision, tta=tta)
        n_tta, cache_views = len(tta_views(split, tta)), cache.views
    finally:
        if split is not None and split.source is not None:
            split.source.close()
        cache.close()
    df = predictions_frame(split, pred, steps)
    scores = split.scores                       # without the images left out (on_nonfinite)
    metrics = safe_metrics({"rho": spearman(scores, pred), "mse": mse(scores, pred),
                            "n": len(split),
                            "best_epoch": ckpt.get("epoch"), "data": mode, "precision": precision,
                            "tta": bool(tta), "tta_views": n_tta, "cache_views": cache_views})
    if split.skipped:
        metrics["skipped_nonfinite"] = split.skipped
    metrics.update(checkpoint=str(checkpoint), split={"path": str(split_path), "sha256": file_sha256(split_path)},
                   cache=str(cache_path), backbone=ckpt.get("backbone"), versions=versions())
    if out_dir is not None:
        out = Path(out_dir)
        files = Outputs({"predictions": out / "predictions.csv", "metrics": out / "metrics.json"})
        files.clean()
        with files.together():
            files.stage_csv("predictions", df)
            files.stage_json("metrics", metrics)
    return metrics, df
