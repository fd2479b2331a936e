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
  * augmentation: the original used random resized crops + flips of images; over a cache only the
    horizontal flip survives, and only when the cache stores `features_flip` (one view per sample
    per epoch, p = 0.5). Without it, training sees the same features every epoch;
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
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from amnet.device import autocast, available_ram, resolve_device, resolve_head_precision, \
    seed_everything
from amnet.checkpoint import backbone_from_attrs, load_checkpoint, make_checkpoint, plain, \
    save_checkpoint, versions
from amnet.errors import CacheError
from amnet.metrics import finite_or_none, mse, spearman
from amnet.model import AMNet, AMNetConfig, amnet_loss
from amnet.progress import progress_bar
from amnet.provenance import file_sha256

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
    preload: str = "auto"           # auto | device | ram | lazy
    workers: int = -1               # DataLoader workers for lazy reading; -1 = min(8, cores)
    holdout: float = 0.1            # fraction of train used for selection when there is no val split
    score_min: float = 0.0          # allowed score range in split files
    score_max: float = 1.0
    progress: bool | None = None    # False = off; else shown when stderr is a terminal (not in CI)


# ---------------------------------------------------------------------------------------------
# small helpers

def _open_cache(path: str | os.PathLike):
    from amnet.cache import FeatureCache

    if not Path(path).exists():
        raise CacheError(f"{path}: no such feature cache; build it with `amnet-cache extract`")
    return FeatureCache(path)


def _check_names(cache, names: Sequence[str], split_path: str | os.PathLike, cache_path) -> None:
    missing = cache.missing(names)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CacheError(f"{split_path}: {len(missing)} of {len(names)} images are not in the cache "
                         f"{cache_path}: {shown}; extract them with `amnet-cache extract` "
                         "(or remove them from the split)")


def _read(path, cfg: TrainConfig) -> tuple[list[str], np.ndarray]:
    from amnet.datasets.splits import read_split

    items = read_split(path, score_range=(cfg.score_min, cfg.score_max))
    return [n for n, _ in items], np.asarray([s for _, s in items], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# data: the same batches from memory or lazily from the cache

class _Split:
    """One set of images (train, val or test): names, scores and a way to fetch batches."""

    def __init__(self, names: list[str], scores: np.ndarray):
        self.names, self.scores = names, scores
        self.source: _Source | None = None

    def __len__(self) -> int:
        return len(self.names)


class _Source:
    def batches(self, index_batches: Sequence[torch.Tensor], flips: torch.Tensor | None
                ) -> Iterator[torch.Tensor]:
        """Yield one [b, C, g, g] float16 tensor per batch of indices (same order)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Preloaded(_Source):
    """The split's features held in RAM or on the GPU as float16 [N, C, g, g] (+ flipped view)."""

    def __init__(self, feats: torch.Tensor, feats_flip: torch.Tensor | None):
        self.feats, self.feats_flip = feats, feats_flip

    def batches(self, index_batches, flips):
        for idx in index_batches:
            idx_d = idx.to(self.feats.device)
            x = self.feats[idx_d]
            if flips is not None and self.feats_flip is not None:
                f = flips[idx].to(self.feats.device).view(-1, 1, 1, 1)
                x = torch.where(f, self.feats_flip[idx_d], x)
            yield x


class _LazyBatches(torch.utils.data.Dataset):
    """Reads one batch per item from the cache; opens its own FeatureCache in each process."""

    def __init__(self, cache_path: str, names: list[str]):
        self.cache_path, self.names = str(cache_path), names
        self._cache, self._pid = None, None

    def __len__(self) -> int:  # not used (batch_size=None, explicit sampler)
        return len(self.names)

    def __getitem__(self, key: tuple[list[int], list[bool]]) -> torch.Tensor:
        if self._cache is None or self._pid != os.getpid():
            self._cache, self._pid = _open_cache(self.cache_path), os.getpid()
        idx, flips = key
        return torch.stack([torch.as_tensor(self._cache.get(self.names[i], flip=f))
                            for i, f in zip(idx, flips)])

    def __getstate__(self):  # never ship an open h5py handle to a worker
        state = self.__dict__.copy()
        state["_cache"], state["_pid"] = None, None
        return state


class _EpochSampler(torch.utils.data.Sampler):
    """The current epoch's batches; replaced before each pass (works with persistent workers)."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class _Lazy(_Source):
    def __init__(self, cache_path: str, names: list[str], workers: int, pin: bool):
        self.sampler = _EpochSampler()
        self.loader = torch.utils.data.DataLoader(
            _LazyBatches(cache_path, names), batch_size=None, sampler=self.sampler,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
            # an explicit generator keeps the loader from drawing on the global RNG, which the
            # model's dropout uses: lazy and preloaded runs then see the same dropout masks
            generator=torch.Generator().manual_seed(0),
            prefetch_factor=4 if workers > 0 else None)

    def batches(self, index_batches, flips):
        self.sampler.keys = [
            (idx.tolist(), (flips[idx].tolist() if flips is not None else [False] * len(idx)))
            for idx in index_batches]
        yield from self.loader

    def close(self) -> None:
        self.loader = None


def _attach_sources(cache_path, cache, splits: dict[str, _Split], use_flip: bool,
                    cfg: TrainConfig, device: torch.device) -> str:
    """Give each split a data source; returns where the data lives: device, ram or lazy."""
    per_image = 2 * cache.channels * cache.grid[0] * cache.grid[1]          # float16 bytes
    total = sum(len(s) * per_image * (2 if (k == "train" and use_flip) else 1)
                for k, s in splits.items())
    mode = cfg.preload
    if mode == "auto":
        ram = available_ram()
        if device.type == "cuda" and total <= 0.5 * torch.cuda.mem_get_info(device)[0]:
            mode = "device"
        elif total <= 0.5 * ram:
            mode = "ram"
        else:
            mode = "lazy"
    if mode not in ("device", "ram", "lazy"):
        raise ValueError(f"preload must be auto, device, ram or lazy, not {cfg.preload!r}")
    log.info("data: %d images, %.2f GB float16 -> %s", sum(map(len, splits.values())), total / 1e9, mode)
    if mode == "lazy":
        workers = cfg.workers if cfg.workers >= 0 else min(8, os.cpu_count() or 1)
        for s in splits.values():
            s.source = _Lazy(str(cache_path), s.names, workers, pin=device.type == "cuda")
        return mode
    target = device if mode == "device" else torch.device("cpu")
    for k, s in splits.items():
        feats = torch.as_tensor(cache.load(s.names)).to(target)
        flip = torch.as_tensor(cache.load(s.names, flip=True)).to(target) \
            if (k == "train" and use_flip) else None
        s.source = _Preloaded(feats, flip)
    return mode


# ---------------------------------------------------------------------------------------------
# the loops

@torch.no_grad()
def predict_split(model: AMNet, split: _Split, device: torch.device, batch_size: int = 370,
                  precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode predictions for a whole split -> (scores [N], per-step scores [N, T]).
    `precision`: a resolved head precision ("bf16" autocast or "fp32")."""
    model.eval()
    n = len(split)
    order = torch.arange(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    scores, steps = [], []
    for x in split.source.batches(batches, None):
        with autocast(device, precision):
            outputs, _ = model(x.to(device, non_blocking=True))
        outputs = outputs.float()
        scores.append(model.denormalize(outputs).cpu())
        steps.append(model.step_scores(outputs).cpu())
    return torch.cat(scores).double().numpy(), torch.cat(steps).double().numpy()


def _train_epoch(model: AMNet, opt: torch.optim.Optimizer, split: _Split, targets: torch.Tensor,
                 gen: torch.Generator, use_flip: bool, cfg: TrainConfig, device: torch.device,
                 precision: str, bar) -> float:
    """One epoch; returns the mean training loss over the samples seen."""
    model.train()
    n = len(split)
    bs = min(cfg.batch_size, n)  # a split smaller than one batch trains on all of it each step
    perm = torch.randperm(n, generator=gen)
    flips = (torch.rand(n, generator=gen) < 0.5) if use_flip else None
    batches = [perm[i * bs:(i + 1) * bs] for i in range(n // bs)]       # drop_last
    total = torch.zeros((), device=device)
    seen = 0
    for idx, x in zip(batches, split.source.batches(batches, flips)):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plain(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


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
        backbone = backbone_from_attrs(cache.attrs)
        data_mode = _attach_sources(cache_path, cache, splits, use_flip, cfg, device)

        # ---- model: seeds first (the original seeded after building it, spec 4) ----
        seed_everything(cfg.seed)
        model = AMNet(model_config).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)        # batch order and flip views
        train = splits["train"]
        targets = torch.as_tensor(train.scores, dtype=torch.float32, device=device)

        history: list[dict[str, Any]] = []
        best: tuple[float, int, dict, dict] | None = None   # (key, epoch, state, metrics)
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            n_seen = (len(train) // min(cfg.batch_size, len(train))) * min(cfg.batch_size, len(train))
            bar = progress_bar(n_seen, f"epoch {epoch}/{cfg.epochs}",
                               enabled=cfg.progress is not False, leave=False)
            loss = _train_epoch(model, opt, train, targets, gen, use_flip, cfg, device, precision, bar)
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
            tp, ts = predict_split(model, splits["test"], device, cfg.eval_batch_size, precision)
            metrics.update(rho=spearman(splits["test"].scores, tp), mse=mse(splits["test"].scores, tp),
                           n=len(splits["test"]))
            pred_df = _predictions_frame(splits["test"], tp, ts)
        metrics.update(best_epoch=best_epoch, val_rho=best_metrics["val_rho"],
                       val_mse=best_metrics["val_mse"], n_train=len(train),
                       n_val=len(splits["val"]) if "val" in splits else 0, epochs=cfg.epochs,
                       selection=selection, flip=use_flip, data=data_mode, device=str(device),
                       precision=precision)
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
             out_dir: str | os.PathLike | None = None, check_backbone: bool = True):
    """Metrics and predictions of a trained head on one split file, without training.

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
        cache_bb = backbone_from_attrs(cache.attrs)
        ckpt_bb = ckpt.get("backbone") or {}
        want, have = ckpt_bb.get("weights_sha256"), cache_bb.get("weights_sha256")
        if check_backbone and want and have and want != have:
            raise CacheError(f"{cache_path}: features come from backbone weights {have[:12]} "
                             f"({cache_bb.get('weights_id')}), but {checkpoint} was trained on "
                             f"{want[:12]} ({ckpt_bb.get('weights_id')}); extract a cache "
                             "with the matching --weights")
        for key in ("arch", "layer", "image_size"):
            a, b = cache_bb.get(key), ckpt_bb.get(key)
            if check_backbone and a is not None and b is not None and a != b:
                raise CacheError(f"{cache_path}: cache {key} {a!r} differs from {checkpoint}'s "
                                 f"{b!r}; extract a cache with the checkpoint's settings")
        split = _Split(names, scores)
        mode = _attach_sources(cache_path, cache, {"test": split}, False, cfg, dev)
        pred, steps = predict_split(model, split, dev, batch_size, precision)
    finally:
        if split is not None and split.source is not None:
            split.source.close()
        cache.close()
    df = _predictions_frame(split, pred, steps)
    metrics = _safe({"rho": spearman(scores, pred), "mse": mse(scores, pred), "n": len(names),
                     "best_epoch": ckpt.get("epoch"), "data": mode, "precision": precision})
    metrics.update(checkpoint=str(checkpoint), split={"path": str(split_path), "sha256": file_sha256(split_path)},
                   cache=str(cache_path), backbone=ckpt.get("backbone"), versions=versions())
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "predictions.csv", index=False)
        _write_json(out / "metrics.json", metrics)
    return metrics, df


__all__ = ["TrainConfig", "train_split", "evaluate", "predict_split"]
