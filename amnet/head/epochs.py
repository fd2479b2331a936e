"""The training loop of stage two: epochs over the cached features, a validation pass after each,
the best epoch by validation Spearman rho, and a resumable state written after every epoch
(amnet.head.train_state).

Per epoch, the batch order, and per image the stored view and the flip, come from one seeded
generator (`gen`); dropout draws on torch's global generator. Both are in the state, so a resumed
run draws exactly what an uninterrupted one would.

A non-finite loss (or weights that turned NaN/Inf) stops the run with one TrainingError line
naming the epoch and the batch; nothing of that epoch is saved (the state of the epoch before
stays). The check costs no host sync per step: the first bad batch is kept on the device and
read once per epoch.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amnet.core.device import autocast
from amnet.core.errors import TrainingError
from amnet.core.metrics import mse, spearman
from amnet.core.progress import duration, progress_bar
from amnet.head.evaluation import predict_split
from amnet.head.feeding import SplitPart
from amnet.head.model import AMNet, amnet_loss
from amnet.head.train_state import STATE_VERSION, load_state, restore_rng, rng_states, save_state

log = logging.getLogger("amnet.train")


def train_epoch(model: AMNet, opt: torch.optim.Optimizer, split: SplitPart, targets: torch.Tensor,
                gen: torch.Generator, use_flip: bool, cfg, device: torch.device, precision: str,
                bar, views: int = 0, max_batches: int | None = None) -> float:
    """One epoch; returns the mean training loss over the samples seen. Per image, the view
    (0 = plain, 1..views = crops, uniformly) and the flip (p = 0.5) come from `gen`.
    max_batches: stop after that many batches of the epoch's order (bench/scale.py times a few
    steps of a 45,000-image epoch)."""
    model.train()
    n = len(split)
    bs = min(cfg.batch_size, n)  # a split smaller than one batch trains on all of it each step
    perm = torch.randperm(n, generator=gen)
    flips = (torch.rand(n, generator=gen) < 0.5) if use_flip else None
    choice = torch.randint(0, views + 1, (n,), generator=gen) if views else None   # [N]
    batches = [perm[i * bs:(i + 1) * bs] for i in range(n // bs)][:max_batches]   # drop_last
    total = torch.zeros((), device=device)
    # the first batch (1-based) whose loss is not finite, and that loss; 0 = none so far
    bad_batch = torch.zeros((), dtype=torch.long, device=device)
    bad_loss = torch.zeros((), device=device)
    seen = 0
    for b, (idx, x) in enumerate(zip(batches, split.source.batches(batches, flips, choice)), 1):
        y = targets[idx.to(targets.device)]
        with autocast(device, precision):
            outputs, alphas = model(x.to(device, non_blocking=True))
        loss = amnet_loss(outputs, alphas, y, model.config, gamma=cfg.gamma)
        first = (bad_batch == 0) & ~torch.isfinite(loss.detach())
        bad_batch = torch.where(first, b, bad_batch)
        bad_loss = torch.where(first, loss.detach().float(), bad_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
        if bar is not None:
            bar.update(len(idx))
    if int(bad_batch):
        raise NonFiniteLoss(int(bad_batch), len(batches), float(bad_loss))
    return float(total) / max(seen, 1)


class NonFiniteLoss(Exception):
    """Raised by `train_epoch`: batch `batch` of `batches` (1-based) had the loss `loss`."""

    def __init__(self, batch: int, batches: int, loss: float):
        super().__init__(f"non-finite loss {loss} at batch {batch} of {batches}")
        self.batch, self.batches, self.loss = batch, batches, loss


def _diverged(epoch: int, where: str, state_file: Path) -> TrainingError:
    kept = (f"the state of epoch {epoch - 1} stays in {state_file}" if epoch > 1
            else "no epoch was saved")
    return TrainingError(f"training diverged in epoch {epoch}: {where}; nothing of epoch {epoch} "
                         f"was saved ({kept}); lower --lr, or check the features with "
                         "`amnet-cache verify CACHE`")


@dataclass
class FitProgress:
    """Where a run stands: the history rows so far and the best epoch so far."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None   # key (val rho or -inf), epoch, state (CPU), metrics

    @property
    def epochs_done(self) -> int:
        return len(self.history)


def _resume(state_file: Path, fp: str, model: AMNet, opt: torch.optim.Optimizer,
            gen: torch.Generator, epochs: int) -> FitProgress:
    st = load_state(state_file, fp)
    if st is None:
        return FitProgress()
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    restore_rng(st["rng"], gen)
    run = FitProgress(history=list(st["history"]), best=st["best"])
    done = run.epochs_done
    if done < epochs:
        log.warning("resumed at epoch %d of %d from %s (%s done)", done + 1, epochs, state_file,
                    "epoch 1" if done == 1 else f"epochs 1-{done}")
    else:
        log.warning("resumed after the last epoch (%d of %d) from %s: publishing the outputs",
                    done, epochs, state_file)
    return run


def fit(model: AMNet, opt: torch.optim.Optimizer, parts: dict[str, SplitPart],
        targets: torch.Tensor, gen: torch.Generator, cfg, device: torch.device, precision: str,
        *, use_flip: bool, n_views: int, selection: str, state_file: Path, fp: str) -> FitProgress:
    """Train for `cfg.epochs` epochs (continuing from the state at `state_file` when it has
    fingerprint `fp`), saving the state after every epoch. The best epoch: the highest
    validation rho, the first one on ties; the last epoch when `selection` is "last"."""
    run = _resume(state_file, fp, model, opt, gen, cfg.epochs)
    train = parts["train"]
    bs = min(cfg.batch_size, len(train))
    started, first = time.perf_counter(), run.epochs_done + 1
    last = ""   # the bar's postfix: the previous epoch's loss, val rho and the run's ETA
    for epoch in range(first, cfg.epochs + 1):
        t0 = time.perf_counter()
        bar = progress_bar((len(train) // bs) * bs, f"epoch {epoch}/{cfg.epochs}",
                           enabled=cfg.progress is not False, leave=False)
        if last:
            bar.set_postfix_str(last, refresh=False)
        try:
            loss = train_epoch(model, opt, train, targets, gen, use_flip, cfg, device, precision,
                               bar, n_views)
        except NonFiniteLoss as e:
            raise _diverged(epoch, str(e), state_file) from None
        finally:
            bar.close()
        bad = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:  # the last batch's step: no later loss shows it
            raise _diverged(epoch, f"weights turned NaN/Inf in its last step ({bad[0]})",
                            state_file)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss}
        if "val" in parts:
            vp, _ = predict_split(model, parts["val"], device, cfg.eval_batch_size, precision)
            row["val_rho"] = spearman(parts["val"].scores, vp)
            row["val_mse"] = mse(parts["val"].scores, vp)
        else:
            row["val_rho"], row["val_mse"] = float("nan"), float("nan")
        row["lr"] = opt.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t0
        run.history.append(row)
        # the run's ETA: the epochs left at the mean pace of those run by this process
        left = cfg.epochs - epoch
        eta = (f", ETA {duration(left * (time.perf_counter() - started) / (epoch - first + 1))}"
               if left else "")
        # one line per epoch (stage two's log, stderr): what a log keeps where no bar is shown
        log.info("epoch %d/%d  loss %.5f  val rho %.4f  val mse %.5f  (%.1f s%s)", epoch,
                 cfg.epochs, loss, row["val_rho"], row["val_mse"], row["seconds"], eta)
        last = f"last: loss {loss:.5f}, val rho {row['val_rho']:.4f}{eta}"
        key = row["val_rho"] if selection != "last" and math.isfinite(row["val_rho"]) else -math.inf
        if selection == "last" or run.best is None or key > run.best["key"]:
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            run.best = {"key": key, "epoch": epoch, "state": weights,
                        "metrics": {"val_rho": row["val_rho"], "val_mse": row["val_mse"],
                                    "train_loss": loss}}
        save_state(state_file, {"version": STATE_VERSION, "fingerprint": fp, "epoch": epoch,
                                "model": model.state_dict(), "optimizer": opt.state_dict(),
                                "rng": rng_states(gen), "best": run.best,
                                "history": run.history})
    assert run.best is not None
    return run
