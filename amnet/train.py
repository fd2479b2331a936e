"""Stage two: train and evaluate the AMNet head over a feature cache (spec sections 3, 4 and 6).

`train_split` runs one split of a protocol (LaMem: 5, SUN: 25): Adam over the head, MSE on
normalised targets + gamma x attention term, a validation pass after every epoch, the best epoch
by validation Spearman rho, then one test pass with that epoch's weights. It writes

    head.pt          checkpoint (amnet.checkpoint; loads with weights_only=True)
    history.csv      epoch, train_loss, val_rho, val_mse, lr, seconds
    predictions.csv  name, gt, pred, step_1..step_T   (test split)
    metrics.json     rho, mse, n (test), best_epoch, val_rho, val_mse, ... + provenance

Differences from the original (spec section 8), on purpose:
  * validation and test use every image (the original's val loader dropped a partial batch);
  * seeds are set before the model is built, and batch order / flip choices come from a seeded
    generator of their own, so two CPU runs give identical metrics;
  * a split without a validation file (SUN) holds out `holdout` (10%) of the train images, chosen
    with the seed, for model selection -- the original selected on the test split (spec 8.7);
    `holdout=0` trains on all of train and keeps the last epoch. Nothing is ever selected on test;
  * augmentation: the original drew a fresh random resized crop + flip of every image each epoch;
    over a cache, each epoch draws one of the K + 1 stored views per image (plain, or one of the
    K crops of `amnet-cache extract --views K`, uniformly) and, when the cache stores flips, the
    mirrored one with p = 0.5. With neither, training sees the same features every epoch;
  * `tta`: test predictions may be averaged over every stored view (the original had no TTA);
  * the backbone's BatchNorm statistics stay fixed (the original let them drift, spec 8.1).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from amnet.atomic import atomic_write_text
from amnet.device import autocast, resolve_device, resolve_head_precision, seed_everything
from amnet.checkpoint import backbone_from_attrs, load_checkpoint, make_checkpoint, plain, \
    save_checkpoint, versions
from amnet.errors import CacheError
# the data feeders (amnet/feeding.py); bench/train.py imports them from here under these names
from amnet.feeding import Lazy as _Lazy, Preloaded as _Preloaded, Split as _Split, \
    attach_sources, open_cache as _open_cache  # noqa: F401
from amnet.metrics import finite_or_none, mse, spearman
from amnet.model import AMNet, AMNetConfig, amnet_loss
from amnet.progress import progress_bar
from amnet.provenance import BackboneRecord, check_compatible, file_sha256

log = logging.getLogger("amnet.train")


@dataclass
class TrainConfig:
    """Training settings; defaults are the original's LaMem ones (spec section 4)."""

    epochs: int = 54                # the original ran epochs 1..54 on LaMem (49 on SUN)
    batch_size: int = 222           # train batch; the last partial batch is dropped
    eval_batch_size: int = 370      # val/test batch; every image is used
    lr: float = 1e-4                # constant, no schedule
    weight_decay: float = 1e-6      # Adam L2: LaMem 1e-6, SUN 1e-4
    gamma: float = 1e-5             # attention-loss weight
    seed: int = 12345
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    precision: str = "auto"         # auto: bf16 autocast where bf16 is native (amnet.device), else fp32
    flip: bool = True               # use the cache's features_flip when it has them
    views: bool = True              # draw one of the cache's crop views per image and epoch
    tta: bool = False               # test: average over all stored views (and flips)
    preload: str = "auto"           # auto | device | ram | lazy
    workers: int = -1               # DataLoader workers for lazy reading; -1 = min(8, cores)
    holdout: float = 0.1            # fraction of train used for selection when there is no val split
    score_min: float = 0.0          # allowed score range in split files
    score_max: float = 1.0
    progress: bool | None = None    # False = off; else shown when stderr is a terminal (not in CI)


# ---------------------------------------------------------------------------------------------
# small helpers

def _check_names(cache, names: Sequence[str], split_path: str | os.PathLike, cache_path) -> None:
    missing = cache.missing(names)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CacheError(f"{split_path}: {len(missing)} of {len(names)} images are not in the cache "
                         f"{cache_path}: {shown}; extract them with `amnet-cache extract` "
                         "(or remove them from the split)")


def _read(path, cfg: TrainConfig) -> tuple[list[str], np.ndarray]:
    from amnet.listfiles import read_split

    items = read_split(path, score_range=(cfg.score_min, cfg.score_max))
    return [n for n, _ in items], np.asarray([s for _, s in items], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# the loops

def tta_views(split: _Split, tta: bool) -> list[tuple[int, bool]]:
    """The (view, flip) pairs a prediction averages over: the plain view only, or with tta every
    view the split's source holds (plain + K crops, each also mirrored when it has flips)."""
    if not tta:
        return [(0, False)]
    src = split.source
    return [(v, f) for f in ((False, True) if src.has_flip else (False,))
            for v in range(src.views + 1)]


@torch.no_grad()
def predict_split(model: AMNet, split: _Split, device: torch.device, batch_size: int = 370,
                  precision: str = "fp32", tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode predictions for a whole split -> (scores [N], per-step scores [N, T]); with
    tta, the head's outputs averaged over `tta_views`. `precision`: a resolved head precision
    ("bf16" autocast or "fp32")."""
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


def _train_epoch(model: AMNet, opt: torch.optim.Optimizer, split: _Split, targets: torch.Tensor,
                 gen: torch.Generator, use_flip: bool, cfg: TrainConfig, device: torch.device,
                 precision: str, bar, views: int = 0) -> float:
    """One epoch; returns the mean training loss over the samples seen. Per image, the view
    (0 = plain, 1..views = crops, uniformly) and the flip (p = 0.5) come from `gen`."""
    model.train()
    n = len(split)
    bs = min(cfg.batch_size, n)  # a split smaller than one batch trains on all of it each step
    perm = torch.randperm(n, generator=gen)
    flips = (torch.rand(n, generator=gen) < 0.5) if use_flip else None
    choice = torch.randint(0, views + 1, (n,), generator=gen) if views else None   # [N]
    batches = [perm[i * bs:(i + 1) * bs] for i in range(n // bs)]       # drop_last
    total = torch.zeros((), device=device)
    seen = 0
    for idx, x in zip(batches, split.source.batches(batches, flips, choice)):
        y = targets[idx.to(targets.device)]
        with autocast(device, precision):
            outputs, alphas = model(x.to(device, non_blocking=True))
        loss = amnet_loss(outputs, alphas, y, model.config, gamma=cfg.gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
        if bar is not None:
            bar.update(len(idx))
    return float(total) / max(seen, 1)


def _predictions_frame(split: _Split, pred: np.ndarray, steps: np.ndarray):
    import pandas as pd

    df = pd.DataFrame({"name": split.names, "gt": split.scores, "pred": pred})
    for t in range(steps.shape[1]):
        df[f"step_{t + 1}"] = steps[:, t]
    return df


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(plain(obj), indent=2, allow_nan=False) + "\n")


def _safe(m: dict[str, Any]) -> dict[str, Any]:
    return {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in m.items()}


def train_split(cache_path: str | os.PathLike, train_split: str | os.PathLike,
                val_split: str | os.PathLike | None, test_split: str | os.PathLike | None,
                out_dir: str | os.PathLike, model_config: AMNetConfig | None = None,
                cfg: TrainConfig | None = None, *, checkpoint_path: str | os.PathLike | None = None,
                history_path: str | os.PathLike | None = None,
                predictions_path: str | os.PathLike | None = None,
                metrics_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train the head on one split and evaluate the chosen epoch on its test file.

    Returns the metrics dict also written to metrics.json. Files go to out_dir unless a path is
    given for them. Raises CacheError when a split names images the cache lacks.
    """
    import pandas as pd

    cfg = cfg or TrainConfig()
    model_config = model_config or AMNetConfig()
    if cfg.epochs < 1:
        raise ValueError("epochs must be >= 1")
    out_dir = Path(out_dir)
    paths = {
        "checkpoint": Path(checkpoint_path or out_dir / "head.pt"),
        "history": Path(history_path or out_dir / "history.csv"),
        "predictions": Path(predictions_path or out_dir / "predictions.csv"),
        "metrics": Path(metrics_path or out_dir / "metrics.json"),
    }
    device = resolve_device(cfg.device)
    precision = resolve_head_precision(cfg.precision, device)  # "auto" -> what this device runs fast
    log.info("device %s, precision %s, %d threads", device, precision, torch.get_num_threads())

    # ---- data ----
    cache = _open_cache(cache_path)
    splits: dict[str, _Split] = {}
    try:
        tr_names, tr_scores = _read(train_split, cfg)
        _check_names(cache, tr_names, train_split, cache_path)
        selection = "val"
        if val_split is not None:
            va_names, va_scores = _read(val_split, cfg)
            _check_names(cache, va_names, val_split, cache_path)
            splits["val"] = _Split(va_names, va_scores)
        elif cfg.holdout > 0:
            # no val file (SUN): hold out part of train, chosen with the seed, for selection
            order = np.random.default_rng(cfg.seed).permutation(len(tr_names))
            n_hold = max(1, int(round(cfg.holdout * len(tr_names))))
            hold, keep = np.sort(order[:n_hold]), np.sort(order[n_hold:])
            splits["val"] = _Split([tr_names[i] for i in hold], tr_scores[hold])
            tr_names, tr_scores = [tr_names[i] for i in keep], tr_scores[keep]
            selection = f"holdout:{cfg.holdout:g}"
        else:
            selection = "last"
        splits["train"] = _Split(tr_names, tr_scores)
        if test_split is not None:
            te_names, te_scores = _read(test_split, cfg)
            _check_names(cache, te_names, test_split, cache_path)
            splits["test"] = _Split(te_names, te_scores)
            overlap = len(set(te_names) & set(tr_names))
            if overlap:
                log.warning("%s: %d test images are also in the train split", test_split, overlap)

        g = cache.grid
        if g[0] != g[1]:
            raise CacheError(f"{cache_path}: feature grid {g[0]}x{g[1]} is not square; AMNet needs a square grid")
        if (model_config.in_channels, model_config.grid) != (cache.channels, g[0]):
            log.info("model input set from the cache: %d channels, %dx%d grid", cache.channels, g[0], g[1])
            model_config = replace(model_config, in_channels=cache.channels, grid=g[0])
        use_flip = bool(cfg.flip and cache.has_flip)
        n_views = cache.views if cfg.views else 0            # crop views drawn in training
        backbone = backbone_from_attrs(cache.attrs)
        needs = {"train": (n_views, use_flip)}
        if cfg.tta:
            needs["test"] = (cache.views, cache.has_flip)
        data_mode = attach_sources(cache_path, cache, splits, needs, cfg.preload, cfg.workers,
                                   device)

        # ---- model: seeds first (the original seeded after building it, spec 4) ----
        seed_everything(cfg.seed)
        model = AMNet(model_config).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)        # batch order, flips and views
        train = splits["train"]
        targets = torch.as_tensor(train.scores, dtype=torch.float32, device=device)

        history: list[dict[str, Any]] = []
        best: tuple[float, int, dict, dict] | None = None   # (key, epoch, state, metrics)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            n_seen = (len(train) // min(cfg.batch_size, len(train))) * min(cfg.batch_size, len(train))
            bar = progress_bar(n_seen, f"epoch {epoch}/{cfg.epochs}",
                               enabled=cfg.progress is not False, leave=False)
            loss = _train_epoch(model, opt, train, targets, gen, use_flip, cfg, device, precision, bar,
                                n_views)
            bar.close()
            row: dict[str, Any] = {"epoch": epoch, "train_loss": loss}
            if "val" in splits:
                vp, _ = predict_split(model, splits["val"], device, cfg.eval_batch_size, precision)
                row["val_rho"] = spearman(splits["val"].scores, vp)
                row["val_mse"] = mse(splits["val"].scores, vp)
            else:
                row["val_rho"], row["val_mse"] = float("nan"), float("nan")
            row["lr"] = opt.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            log.info("epoch %d/%d  loss %.5f  val rho %.4f  val mse %.5f  (%.1f s)", epoch, cfg.epochs,
                     loss, row["val_rho"], row["val_mse"], row["seconds"])
            key = row["val_rho"] if selection != "last" and math.isfinite(row["val_rho"]) else -math.inf
            if selection == "last" or best is None or key > best[0]:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best = (key, epoch, state, {"val_rho": row["val_rho"], "val_mse": row["val_mse"],
                                            "train_loss": loss})
        assert best is not None
        _, best_epoch, best_state, best_metrics = best
        model.load_state_dict(best_state)

        metrics: dict[str, Any] = {}
        pred_df = None
        if "test" in splits:
            tp, ts = predict_split(model, splits["test"], device, cfg.eval_batch_size, precision,
                                   tta=cfg.tta)
            metrics.update(rho=spearman(splits["test"].scores, tp), mse=mse(splits["test"].scores, tp),
                           n=len(splits["test"]))
            pred_df = _predictions_frame(splits["test"], tp, ts)
        metrics.update(best_epoch=best_epoch, val_rho=best_metrics["val_rho"],
                       val_mse=best_metrics["val_mse"], n_train=len(train),
                       n_val=len(splits["val"]) if "val" in splits else 0, epochs=cfg.epochs,
                       selection=selection, flip=use_flip, views=n_views > 0,
                       cache_views=cache.views, tta=bool(cfg.tta and "test" in splits),
                       tta_views=len(tta_views(splits["test"], cfg.tta)) if "test" in splits else 0,
                       data=data_mode, device=str(device), precision=precision)
        # No wall time here (it is per epoch in history.csv): same inputs + params must give
        # byte-identical metrics, so `dvc metrics diff` shows only real changes.
        metrics = _safe(metrics)
        split_files = {k: (None if p is None else {"path": str(p), "sha256": file_sha256(p)})
                       for k, p in (("train", train_split), ("val", val_split), ("test", test_split))}
        train_record = {**asdict(cfg), "cache": str(cache_path), "splits": split_files}
        ckpt = make_checkpoint(model, backbone=backbone, epoch=best_epoch,
                               metrics={k: metrics[k] for k in ("val_rho", "val_mse", "rho", "mse")
                                        if k in metrics},
                               train_config=train_record)
        save_checkpoint(ckpt, paths["checkpoint"])
        paths["history"].parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(history, columns=["epoch", "train_loss", "val_rho", "val_mse", "lr", "seconds"]
                     ).to_csv(paths["history"], index=False)
        if pred_df is not None:
            paths["predictions"].parent.mkdir(parents=True, exist_ok=True)
            pred_df.to_csv(paths["predictions"], index=False)
        full = {**metrics, "backbone": backbone, "cache": str(cache_path), "splits": split_files,
                "checkpoint": str(paths["checkpoint"]), "versions": versions()}
        _write_json(paths["metrics"], full)
        return full
    finally:
        for s in splits.values():
            if s.source is not None:
                s.source.close()
        cache.close()


def evaluate(checkpoint: str | os.PathLike, cache_path: str | os.PathLike,
             split_path: str | os.PathLike, *, device: str = "auto", batch_size: int = 370,
             precision: str = "auto", preload: str = "auto", workers: int = -1,
             out_dir: str | os.PathLike | None = None, check_backbone: bool = True,
             tta: bool = False):
    """Metrics and predictions of a trained head on one split file, without training.

    tta: average the predictions over every view the cache stores (plain + crops, and their
    flips when present); otherwise the plain view only.

    Returns (metrics dict: rho, mse, n, ...; DataFrame name, gt, pred, step_1..step_T). With
    out_dir, also writes metrics.json and predictions.csv there. Refuses (CacheError) a cache
    whose backbone weights differ from the ones the head was trained on.
    """
    dev = resolve_device(device)
    precision = resolve_head_precision(precision, dev)
    model, ckpt = load_checkpoint(checkpoint, map_location=dev)
    cache = _open_cache(cache_path)
    split: _Split | None = None
    try:
        cfg = TrainConfig(device=device, precision=precision, preload=preload, workers=workers)
        names, scores = _read(split_path, cfg)
        _check_names(cache, names, split_path, cache_path)
        mc = model.config
        if (cache.channels, cache.grid[0], cache.grid[1]) != (mc.in_channels, mc.grid, mc.grid):
            raise CacheError(f"{cache_path}: features are {cache.channels}x{cache.grid[0]}x{cache.grid[1]}, "
                             f"but the head expects {mc.in_channels}x{mc.grid}x{mc.grid}")
        if check_backbone and isinstance(ckpt.get("backbone"), dict):
            check_compatible(BackboneRecord.from_attrs(cache.attrs),
                             BackboneRecord.from_dict(ckpt["backbone"]),
                             f"feature cache {cache_path}", f"checkpoint {checkpoint}",
                             error=CacheError, hint="extract a cache with the checkpoint's "
                             "--weights and settings")
        split = _Split(names, scores)
        needs = {"test": (cache.views, cache.has_flip)} if tta else {}
        mode = attach_sources(cache_path, cache, {"test": split}, needs, preload, workers, dev)
        pred, steps = predict_split(model, split, dev, batch_size, precision, tta=tta)
        n_tta, cache_views = len(tta_views(split, tta)), cache.views
    finally:
        if split is not None and split.source is not None:
            split.source.close()
        cache.close()
    df = _predictions_frame(split, pred, steps)
    metrics = _safe({"rho": spearman(scores, pred), "mse": mse(scores, pred), "n": len(names),
                     "best_epoch": ckpt.get("epoch"), "data": mode, "precision": precision,
                     "tta": bool(tta),
                     "tta_views": n_tta, "cache_views": cache_views})
    metrics.update(checkpoint=str(checkpoint), split={"path": str(split_path), "sha256": file_sha256(split_path)},
                   cache=str(cache_path), backbone=ckpt.get("backbone"), versions=versions())
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "predictions.csv", index=False)
        _write_json(out / "metrics.json", metrics)
    return metrics, df


__all__ = ["TrainConfig", "train_split", "evaluate", "predict_split", "tta_views"]
