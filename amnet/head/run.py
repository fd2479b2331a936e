"""Stage two: train and evaluate the AMNet head over a feature cache (spec sections 3, 4 and 6).

`train_split` runs one split of a protocol (LaMem: 5, SUN: 25): Adam over the head, MSE on
normalised targets + gamma x attention term, a validation pass after every epoch, the best epoch
by validation Spearman rho, then one test pass with that epoch's weights. It writes

    head.pt          checkpoint (amnet.head.checkpoint; loads with weights_only=True)
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

A run is resumable and publishes its files together:
  * after every epoch the training state (weights, optimizer, every random generator, the best
    epoch so far, the history) is saved atomically in `.train-state/` beside the checkpoint
    (amnet.head.train_state). Rerunning a killed run with the same settings and inputs continues
    after its last finished epoch -- one log line says where -- and on CPU gives the same
    checkpoint and the same metrics.json bytes as a run never interrupted;
  * the four files are written under temp names and renamed into place at the end, metrics.json
    last (amnet.head.publish); the state goes only after that, so an interrupted publish is redone;
  * one process at a time trains into a checkpoint: the run holds `<checkpoint>.lock`
    (amnet.core.lockfile) from start to end. A second run of the same outputs -- a `dvc repro`
    started while a `train@k` orphaned by a killed `dvc` still runs -- stops with one line
    naming the live one (LockedError) instead of sharing its state and outputs; a dead one's
    lock is taken over.

The parts: amnet/head/feeding.py (cached features to batches), amnet/head/epochs.py (the epoch loop, the
best epoch), amnet/head/train_state.py (the resumable state), amnet/head/evaluation.py (`predict_split`,
`tta_views`, `evaluate`), amnet/head/publish.py (the files); this module holds `train_split`, which
ties them together. Its settings, `TrainConfig`, live in amnet/core/settings.py (torch-free, so
the CLI builds its options from them without importing torch).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amnet.core.caveats import constant_scores, small_test
from amnet.core.device import resolve_device, resolve_head_precision, seed_everything
from amnet.core.errors import CacheError
from amnet.core.lockfile import hold
from amnet.core.metrics import mse, spearman
from amnet.core.provenance import versions, file_sha256
from amnet.core.settings import TRAIN_MEAN, AMNetConfig, TrainConfig, knob_names  # torch-free
from amnet.head.checkpoint import backbone_from_attrs, make_checkpoint, save_size, torch_save
from amnet.head.evaluation import (check_names, predict_split, predictions_frame, read_part,
                                   safe_metrics, tta_views)
from amnet.head.feeding import SplitPart, attach_sources, open_cache
from amnet.head.epochs import FitProgress, fit
from amnet.head.model import AMNet
from amnet.head.top_blocks import cache_top
from amnet.head.publish import Outputs
from amnet.head.train_state import fingerprint, remove_state, state_path

log = logging.getLogger("amnet.train")

PathLike = str | os.PathLike

# settings that decide how a run reads its data, not what it computes: a resumed run may differ
NOT_FINGERPRINTED = knob_names(TrainConfig)


def _load_parts(cache, cache_path, train_file, val_file, test_file, cfg: TrainConfig,
                parts: dict[str, SplitPart]) -> str:
    """Fill `parts` (train, val when selecting on one, test when given); returns the selection
    rule: "val", "holdout:<fraction>" (a seeded part of train, when there is no val file) or
    "last"."""
    score_range = (cfg.score_min, cfg.score_max)
    tr_names, tr_scores = read_part(train_file, score_range)
    check_names(cache, tr_names, train_file, cache_path)
    selection = "val"
    if val_file is not None:
        va_names, va_scores = read_part(val_file, score_range)
        check_names(cache, va_names, val_file, cache_path)
        parts["val"] = SplitPart(va_names, va_scores)
    elif cfg.holdout > 0:
        # no val file (SUN): hold out part of train, chosen with the seed, for selection
        order = np.random.default_rng(cfg.seed).permutation(len(tr_names))
        n_hold = max(1, int(round(cfg.holdout * len(tr_names))))
        hold, keep = np.sort(order[:n_hold]), np.sort(order[n_hold:])
        parts["val"] = SplitPart([tr_names[i] for i in hold], tr_scores[hold])
        tr_names, tr_scores = [tr_names[i] for i in keep], tr_scores[keep]
        selection = f"holdout:{cfg.holdout:g}"
    else:
        selection = "last"
    parts["train"] = SplitPart(tr_names, tr_scores)
    if test_file is not None:
        te_names, te_scores = read_part(test_file, score_range)
        check_names(cache, te_names, test_file, cache_path)
        parts["test"] = SplitPart(te_names, te_scores)
        overlap = len(set(te_names) & set(tr_names))
        if overlap:
            log.warning("%s: %d test images are also in the train split", test_file, overlap)
    return selection


def _warn_about_parts(parts: dict[str, SplitPart], selection: str, train_file, val_file,
                      test_file) -> bool:
    """Log the caveats (amnet.core.caveats) of a split's parts; True when the validation scores
    are constant (already said, so a NaN val rho every epoch needs no second line)."""
    constant = None
    if "val" in parts:
        what = str(val_file) if selection == "val" else f"{train_file} (its held-out part)"
        constant = constant_scores(parts["val"].scores, what)
    small = small_test(len(parts["test"]), str(test_file)) if "test" in parts else None
    for line in (constant, small):
        if line:
            log.warning(line)
    return constant is not None


def train_split(cache_path: PathLike, train_file: PathLike, val_file: PathLike | None,
                test_file: PathLike | None, out_dir: PathLike,
                model_config: AMNetConfig | None = None, cfg: TrainConfig | None = None, *,
                checkpoint_path: PathLike | None = None, history_path: PathLike | None = None,
                predictions_path: PathLike | None = None,
                metrics_path: PathLike | None = None, wait: float = 0.0) -> dict[str, Any]:
    """Train the head on one split and evaluate the chosen epoch on its test file.

    Returns the metrics dict also written to metrics.json. Files go to out_dir unless a path is
    given for them. Resumes a killed run of the same settings and inputs (see the module
    docstring). Raises CacheError when a split file names images the cache lacks, LockedError
    while another live process trains into the same checkpoint (after waiting up to `wait`
    seconds for it).
    """
    cfg = cfg or TrainConfig()
    model_config = model_config or AMNetConfig()
    if cfg.epochs < 1:
        raise ValueError("epochs must be >= 1")
    out_dir = Path(out_dir)
    checkpoint = Path(checkpoint_path or out_dir / "head.pt")
    state_file = state_path(checkpoint)
    files = Outputs({
        "checkpoint": checkpoint,
        "history": Path(history_path or out_dir / "history.csv"),
        "predictions": Path(predictions_path or out_dir / "predictions.csv"),
        "metrics": Path(metrics_path or out_dir / "metrics.json"),
    }, kept=f"training is done and its state kept in {state_file}: the rerun only writes the "
            "outputs")
    with hold(checkpoint, wait):  # one trainer of these outputs and their state at a time
        return _train_locked(cache_path, train_file, val_file, test_file, model_config, cfg,
                             files, state_file)


def _train_locked(cache_path: PathLike, train_file: PathLike, val_file: PathLike | None,
                  test_file: PathLike | None, model_config: AMNetConfig, cfg: TrainConfig,
                  files: Outputs, state_file: Path) -> dict[str, Any]:
    """`train_split` once the checkpoint's writer lock is held."""
    files.clean()                 # staged files of a killed run (dead processes only)
    device = resolve_device(cfg.device)
    precision = resolve_head_precision(cfg.precision, device)  # "auto" -> what this device runs fast
    log.info("device %s, precision %s, %d threads", device, precision, torch.get_num_threads())

    cache = open_cache(cache_path)
    parts: dict[str, SplitPart] = {}
    try:
        selection = _load_parts(cache, cache_path, train_file, val_file, test_file, cfg, parts)
        top = None  # the trainable trunk blocks' weights from the cache, and their sha256
        if model_config.trainable_layers:  # refused here, before any data is read
            top = cache_top(cache, cache_path, model_config.trainable_layers)
        g = cache.grid
        if g[0] != g[1]:
            raise CacheError(f"{cache_path}: feature grid {g[0]}x{g[1]} is not square; AMNet needs a square grid")
        if (model_config.in_channels, model_config.grid) != (cache.channels, g[0]):
            log.info("model input set from the cache: %d channels, %dx%d grid", cache.channels, g[0], g[1])
            model_config = replace(model_config, in_channels=cache.channels, grid=g[0])
        use_flip = bool(cfg.flip and cache.has_flip)
        n_views = cache.views if cfg.views else 0            # crop views drawn in training
        needs = {"train": (n_views, use_flip)}
        if cfg.tta:
            needs["test"] = (cache.views, cache.has_flip)
        # features checked for NaN/Inf here, once (images left out with on_nonfinite="skip")
        data_mode = attach_sources(cache_path, cache, parts, needs, cfg.preload, cfg.workers,
                                   device, cfg.on_nonfinite)
        val_constant = _warn_about_parts(parts, selection, train_file, val_file, test_file)
        if model_config.target_mean == TRAIN_MEAN:
            # the training scores' mean, fixed now and saved as a number in the checkpoint
            # (LNSIM's mean is ~0.60; the original's constant 0.754 is LaMem's)
            model_config = replace(model_config,
                                   target_mean=round(float(np.mean(parts["train"].scores)), 6))
            log.info("target mean: %.6f (the training scores' mean)", model_config.target_mean)
        split_files = {k: (None if p is None else {"path": str(p), "sha256": file_sha256(p)})
                       for k, p in (("train", train_file), ("val", val_file), ("test", test_file))}
        settings = {"train": {k: v for k, v in asdict(cfg).items() if k not in NOT_FINGERPRINTED},
                    "model": model_config.to_dict(), "device": str(device), "precision": precision}
        fp = fingerprint(settings, cache_path, cache.attrs, split_files)

        # ---- model: seeds first (the original seeded after building it, spec 4) ----
        seed_everything(cfg.seed)
        model = AMNet(model_config)
        opt = _optimizer(model, cfg, top, cache_path)
        model.to(device)  # in place: the optimizer keeps the same parameters
        gen = torch.Generator().manual_seed(cfg.seed)        # batch order, flips and views
        targets = torch.as_tensor(parts["train"].scores, dtype=torch.float32, device=device)
        run = fit(model, opt, parts, targets, gen, cfg, device, precision, use_flip=use_flip,
                  n_views=n_views, selection=selection, state_file=state_file, fp=fp)
        model.load_state_dict(run.best["state"])
        if (selection != "last" and not val_constant
                and not any(math.isfinite(r["val_rho"]) for r in run.history)):
            log.warning("warning: val rho was undefined in every epoch (the head's validation "
                        "predictions were constant), so epoch selection is meaningless: kept "
                        "epoch %d", run.best["epoch"])

        metrics: dict[str, Any] = {}
        pred_df = None
        if "test" in parts:
            test = parts["test"]
            tp, ts = predict_split(model, test, device, cfg.eval_batch_size, precision, tta=cfg.tta)
            metrics.update(rho=spearman(test.scores, tp), mse=mse(test.scores, tp), n=len(test))
            pred_df = predictions_frame(test, tp, ts)
        best = run.best
        metrics.update(best_epoch=best["epoch"], val_rho=best["metrics"]["val_rho"],
                       val_mse=best["metrics"]["val_mse"], n_train=len(parts["train"]),
                       n_val=len(parts["val"]) if "val" in parts else 0, epochs=cfg.epochs,
                       selection=selection, flip=use_flip, views=n_views > 0,
                       cache_views=cache.views, tta=bool(cfg.tta and "test" in parts),
                       tta_views=len(tta_views(parts["test"], cfg.tta)) if "test" in parts else 0,
                       data=data_mode, device=str(device), precision=precision)
        if model.top is not None:  # only then: frozen runs' metrics.json stay byte for byte
            metrics.update(trainable_layers=list(model.top.names), trunk_bn=cfg.trunk_bn)
        skipped = {k: s.skipped for k, s in parts.items() if s.skipped}
        if skipped:  # only then: other runs' metrics.json stay byte for byte what they were
            metrics["skipped_nonfinite"] = skipped
        # No wall time here (it is per epoch in history.csv): same inputs + params must give
        # byte-identical metrics, so `dvc metrics diff` shows only real changes.
        metrics = safe_metrics(metrics)
        train_record = {**asdict(cfg), "cache": str(cache_path), "splits": split_files}
        full = {**metrics, "backbone": backbone_from_attrs(cache.attrs), "cache": str(cache_path),
                "splits": split_files, "checkpoint": str(files.paths["checkpoint"]),
                "versions": versions()}
        trunk_top = None if top is None else {
            "blocks": list(model.top.names), "cut": cache.attrs.get("layer"),
            "source_sha256": top[1], "bn": cfg.trunk_bn}
        _publish(files, model, run, metrics, full, train_record, pred_df, trunk_top)
        remove_state(state_file)          # the run is complete: a rerun starts afresh
        return full
    finally:
        for s in parts.values():
            if s.source is not None:
                s.source.close()
        cache.close()


def _optimizer(model: AMNet, cfg: TrainConfig, top, cache_path) -> torch.optim.Adam:
    """Adam over the head (lr, weight_decay) and, with a trunk top, over its blocks (trunk_lr,
    trunk_weight_decay), which first get the cache's weights (`top`: state and sha256) and
    their BatchNorm mode (trunk_bn)."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("top.")]
    if model.top is None:
        return torch.optim.Adam(head, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.top.load_trunk_state(top[0], f"{cache_path} (trunk_top)")
    model.top.set_bn_trainable(cfg.trunk_bn == "train")
    trunk = [p for p in model.top.parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": head},
                             {"params": trunk, "lr": cfg.trunk_lr,
                              "weight_decay": cfg.trunk_weight_decay}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)


def _publish(files: Outputs, model: AMNet, run: FitProgress, metrics: dict[str, Any],
             full: dict[str, Any], train_record: dict[str, Any], pred_df,
             trunk_top: dict[str, Any] | None = None) -> None:
    """Stage head.pt, history.csv, predictions.csv (with a test file) and metrics.json under temp
    names, then rename them into place together, metrics.json last."""
    import pandas as pd

    ckpt = make_checkpoint(model, backbone=full["backbone"], epoch=run.best["epoch"],
                           metrics={k: metrics[k] for k in ("val_rho", "val_mse", "rho", "mse")
                                    if k in metrics},
                           train_config=train_record, trunk_top=trunk_top)
    with files.together():        # a failure (a full disk) removes what was staged
        files.stage("checkpoint", lambda p: torch_save(ckpt, p), needed=save_size(ckpt))
        files.stage_csv("history", pd.DataFrame(
            run.history, columns=["epoch", "train_loss", "val_rho", "val_mse", "lr", "seconds"]))
        if pred_df is not None:
            files.stage_csv("predictions", pred_df)
        files.stage_json("metrics", full)


__all__ = ["train_split"]
