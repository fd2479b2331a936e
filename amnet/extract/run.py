"""Stage one's loop: images -> trunk -> float16 rows of an HDF5 feature cache, resumably.

Decoding, resizing and (with `views=K`) the K seeded random resized crops run in DataLoader workers
(amnet.extract.decode_workers: uint8 `[1 + K, 3, S, S]` per image); ToTensor/Normalize happen on the
device; one trunk forward per batch covers every view (and flip); one process writes. `done[i]` is
set after all of row i's datasets are written, and the file is flushed every few batches, so a
killed run resumes where it stopped (amnet/cache/schema.py says why). The workers start while the
file is closed (none shares it, nor HDF5's lock on it) and die with the writer (`die_with_parent`):
a resume right after a kill -9 finds the file free.

Many processes (`--shard auto` under torchrun, one or many nodes): each takes every n-th image
(`shard`) and writes its own file, so they need no process group, no communication and no shared
writer; `amnet-cache merge` (amnet.cache.ops) interleaves the files back into the single run's
order. Every trunk forward has the shape of a full batch (`_forward`), so in fp32 the merged
file's features equal a single run's byte for byte.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from amnet.core.atomic import atomic_path, remove_stale_temps
from amnet.core.device import resolve_device, set_compute_threads
from amnet.core.diskspace import disk_full_guard
from amnet.core.errors import CacheError, CacheInUseError, DamagedCacheError, ImageError
from amnet.core.lockfile import Lock, hold, wait_for_leftovers
from amnet.core.progress import progress_bar
from amnet.cache import ops as cache_ops, schema, writer
from amnet.extract.backbone import features, load_backbone, normalize_uint8, top_attrs
from amnet.extract.decode_workers import ImageRows, collate_rows, die_with_parent
from amnet.extract.layers import channels_for, grid_for, layer_attrs
from amnet.extract.shards import resolve_shard, shard_path

FLUSH_EVERY_BATCHES = 4
FLUSH_EVERY_SECONDS = 30.0

BatchCallback = Callable[[int, int], None]  # on_batch(batches, extracted): see extract()


def auto_workers(device: torch.device) -> int:
    """Decoding workers: on CUDA decoding is the bottleneck (~130 img/s per core vs 16k img/s of
    trunk), so all cores but the writer's; on CPU the trunk is (~40 img/s), one worker suffices."""
    if device.type == "cuda":
        return max(1, min(16, (os.cpu_count() or 2) - 1))
    return 1


def _shard_words(a: dict) -> str:
    if a.get("shard_index") is None:
        return "the whole list"
    return f"shard {a['shard_index']}/{a['shard_count']} of a {a['shard_total']}-image list"


def _list_change(have: list[str], done: np.ndarray, names: list[str]) -> str | None:
    """None when `names` is the file's list `have` less some names without features (failed, or
    not extracted yet): the file is rewritten for it, every extracted row kept. Else what
    changed, for the refusal."""
    listed = set(names)
    if [n for n in have if n in listed] == names:  # the same order, nothing new
        lost = [n for n, d in zip(have, done) if d and n not in listed]
        if not lost:
            return None
        return (f"{len(lost)} extracted images are not listed now, e.g. {lost[:2]}); pass "
                "--overwrite to replace it (their features are dropped), or list them again")
    lack = [n for n in names if n not in set(have)]
    if lack:
        return (f"{len(lack)} new names, e.g. {lack[:2]}); extract them into another file and "
                "`amnet-cache merge` the two, or pass --overwrite to replace it")
    return "the same names in another order); pass --overwrite to replace it"


def _open_rw(out: Path, lock: Lock):
    """`out` opened r+, once the processes a killed writer left holding it are gone."""
    try:
        return schema.open_existing(out, "r+")
    except CacheInUseError:
        wait_for_leftovers(lock)  # LockedError naming them if they are not the dead run's
    return schema.open_existing(out, "r+")


def _open_or_create(out: Path, names: list[str], attrs: dict, overwrite: bool, lock: Lock, top):
    """(h5py file open in r+ mode, True if it was already complete, names dropped from it).

    An existing file must have the same settings (and shard); made for a longer list whose
    extra names hold no features, it is first rewritten for `names` (cache_ops.relist)."""
    dropped = 0
    if out.exists() and not overwrite:
        try:
            f = _open_rw(out, lock)
        except DamagedCacheError as e:
            raise DamagedCacheError(f"{e}; or pass --overwrite to start it afresh") from None
        try:
            have_attrs = schema.read_attrs(f)
            diffs = schema.settings_differences(have_attrs, attrs)
            if diffs:
                raise CacheError(f"{out}: made with other settings ({'; '.join(diffs)}); "
                                 "choose another --out or pass --overwrite to replace it")
            if _shard_words(have_attrs) != _shard_words(attrs):
                raise CacheError(f"{out}: holds {_shard_words(have_attrs)}, not "
                                 f"{_shard_words(attrs)}; choose another --out or pass "
                                 "--overwrite to replace it")
            have = f["names"].asstr()[:].tolist()
            change = None if have == names else _list_change(have, f["done"][:].astype(bool),
                                                             names)
            if change is not None:
                raise CacheError(f"{out}: made for another image list ({len(have)} names vs "
                                 f"{len(names)}: {change}")
        except BaseException:
            f.close()
            raise
        if have == names:
            return f, bool(f.attrs.get("complete")), 0
        f.close()
        dropped = cache_ops.relist(out, names, check=lock.check)["dropped"]
        f = schema.open_existing(out, "r+")
        return f, bool(f.attrs.get("complete")), dropped
    remove_stale_temps(out, "creating")             # a creation that a kill interrupted
    with atomic_path(out, tag="creating", check=lock.check) as tmp:  # a file at `out` is a
        writer.create(tmp, names, attrs, top).close()                 # fully created cache
    return schema.open_existing(out, "r+"), False, dropped


def extract(items: list[tuple[str, Path]], out: str | Path, *, weights: str,
            image_size: int = 224, layers: str = "layer3", flip: bool = False, views: int = 0,
            view_seed: int = 0, device: str = "auto", batch_size: int = 32, workers: int = 0,
            on_error: str = "fail", overwrite: bool = False, shard: tuple[int, int] | str | None = None,
            progress: bool = True, precision: str = "auto", source: str | None = None,
            backbone: tuple | None = None, on_batch: BatchCallback | None = None,
            retry_failed: bool = False, wait: float = 0.0) -> dict:
    """Extract feature maps (the `layers` set) of `items` (`(name, path)`, in this order) into `out`.

    layers: "layer3" (`[N, 1024, 14, 14]` at 224), "layer4" or "layer3,layer4" (`[N, 3072, 7, 7]`;
    `amnet.extract.backbone.Trunk`), or a cut inside layer4 ("layer4.1", which also stores the
    blocks above it: group `trunk_top`); recorded in the file, which another set cannot resume.

    views K > 0: also store K seeded random-resized-crop views per image (`views` dataset,
    `[N, K, C, h, w]`; `views_flip` with flip), the crops drawn from (view_seed, name, j) only.

    shard (i, n): only items i, i+n, i+2n, ..., into `shard_path(out, shard)`; "auto" (and None
    under torchrun): (RANK, WORLD_SIZE) from the environment (`auto_shard`; outside torchrun
    "auto" is the whole list into `out`, placeholders filled). Returns a summary dict (counts,
    seconds, images/s; `out` is the file written; `first_frame`: how many multi-frame files gave
    their first frame, the first few of whose notes are in `first_frame_notes`).
    An existing `out` is resumed: same settings, and the same list, or the list it was made for
    less names that hold no features (failed or not yet extracted; the file is rewritten for the
    shorter list, every extracted row kept byte for byte). Images recorded as failed are not
    retried unless `retry_failed`. The whole run holds `out`'s writer lock (amnet.core.lockfile: a
    live holder is waited for up to `wait` seconds, then LockedError).
    backbone: an already loaded `(trunk, spec)` from `load_backbone(weights, precision, device)`
    (benchmarks and tests reuse one; `weights`/`precision` must be what it was loaded with).
    on_batch(batches, extracted): called after each batch of this run is written -- its feature
    rows (every view, flip included), then their `done` flags, and (on_error="skip") its failed
    images recorded -- and before the periodic flush; `batches` counts this run's batches (1, 2,
    ...), `extracted` the images extracted so far in this run (not called for a batch that stops
    the run with ImageError under on_error="fail"). An exception it raises ends the run like
    any other (the file is flushed and closed, rows marked done stay done); progress reports,
    benchmarks and tests (killing the process at a batch boundary) use it.
    Raises ImageError (on_error="fail", after flushing everything extracted so far),
    CacheError (a file made with other settings or for other images), LockedError, WeightsError.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if image_size < 32:
        raise CacheError(f"--image-size {image_size} is too small (at least 32)")
    if views < 0:
        raise CacheError(f"--views {views}: expected 0 or more")
    out = Path(out)
    shard = resolve_shard(out, shard)
    total = len(items)
    if shard is not None:
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise CacheError(f"--shard {i}/{n}: expected I/N with 0 <= I < N")
        items = items[i::n]
        out = shard_path(out, shard)
    if not items:
        raise CacheError(f"no images to extract into {out}")
    names = [name for name, _ in items]
    paths = [Path(p) for _, p in items]
    if len(set(names)) != len(names):
        raise CacheError("duplicate image names in the input list")
    with hold(out, wait) as lock:  # before any work: a live writer of `out` is never disturbed
        return _extract_locked(
            out, names, paths, lock, shard, total, weights=weights, image_size=image_size,
            layers=layers, flip=flip, views=views, view_seed=view_seed, device=device, batch_size=batch_size,
            workers=workers, on_error=on_error, overwrite=overwrite, progress=progress,
            precision=precision, source=source, backbone=backbone, on_batch=on_batch,
            retry_failed=retry_failed)


def _extract_locked(out: Path, names: list[str], paths: list[Path], lock: Lock,
                    shard: tuple[int, int] | None, total: int, *, weights: str, image_size: int,
                    layers: str, flip: bool, views: int, view_seed: int, device: str, batch_size: int,
                    workers: int, on_error: str, overwrite: bool, progress: bool, precision: str,
                    source: str | None, backbone: tuple | None, on_batch: BatchCallback | None,
                    retry_failed: bool) -> dict:
    """`extract` once `out`'s lock is held (`total`: the list's length before sharding)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape for the whole run
    threads = set_compute_threads(dev, workers)
    trunk, spec = backbone or load_backbone(weights, precision, dev, layers)  # "auto" resolved
    attrs = {**schema.settings_attrs(spec, image_size, flip, channels=channels_for(spec.layer),
                                    grid=grid_for(image_size, spec.layer), views=views,
                                    view_seed=view_seed), **layer_attrs(spec.layer, image_size)}
    attrs["source"] = str(source) if source is not None else ""
    attrs.update(top_attrs(top := getattr(trunk, "top_state", {}), spec.layer))  # blocks above a cut
    if shard is not None:
        attrs.update(shard_index=shard[0], shard_count=shard[1], shard_total=total)

    with disk_full_guard(out, kept="nothing was extracted yet"):
        f, complete, dropped = _open_or_create(out, names, attrs, overwrite, lock, top)
    summary = {"out": str(out), "images": len(names), "extracted": 0, "skipped": 0,
               "already": 0, "failed_total": 0, "complete": complete, "seconds": 0.0,
               "images_per_s": 0.0, "device": str(dev), "weights": weights, "views": views,
               "precision": spec.precision, "threads": threads, "workers": workers,
               "dropped": dropped, "retried": 0,
               "first_frame": 0, "first_frame_notes": []}
    try:
        if retry_failed and schema.read_failed(f):
            f.attrs["complete"] = False  # killed while retrying: not complete, failures retried
            summary["retried"] = writer.clear_failed(f)
            complete = False
        done = f["done"][:].astype(bool)
        failed = schema.read_failed(f)
        summary["already"] = int(done.sum())
        summary["failed_total"] = len(failed)
        if complete:
            return summary
        rows = [i for i in range(len(names)) if not done[i] and names[i] not in failed]
        plan = _RunPlan(out, names, paths, rows, image_size, flip, views, view_seed, batch_size,
                        workers, on_error, progress, on_batch)
        row_bytes = schema.row_bytes(attrs)
        # the workers fork now: with the file open, each would share HDF5's lock on it
        f.close()
        decoded = iter(_loader(plan, dev))
        f = _open_rw(out, lock)
        # a full disk: the rows marked done stay (the file is preallocated; only rows are
        # written), so the same command resumes once there is room for the rest
        with disk_full_guard(out, lambda: (len(rows) - summary["extracted"]) * row_bytes,
                             lambda: f"the {summary['already'] + summary['extracted']} images "
                                     f"extracted so far are kept in {out}: the rerun resumes"):
            _run(f, decoded, plan, trunk, spec, dev, summary)
        done = f["done"][:].astype(bool)
        summary["failed_total"] = len(schema.read_failed(f))
        summary["complete"] = bool(done.sum() + summary["failed_total"] == len(names))
        f.attrs["complete"] = summary["complete"]
        f.attrs["updated"] = schema.now()
        f.attrs["device"] = str(dev)
    except BaseException:
        try:
            f.close()  # flushes: whatever happened, rows marked done are on disk
        except Exception:  # noqa: BLE001 -- a full disk fails the close too: the first error says it
            pass
        raise
    f.close()
    return summary


def _forward(trunk, spec, dev, x: torch.Tensor, flip: bool, batch_size: int
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 `[b, V, 3, S, S]` -> float16 features `[b, V, C, h, w]` (+ those of the mirrored
    images, or None), from one trunk forward over all batch_size x V (x 2) images.
    A short batch (a run's or shard's last one, or one with failed images) is padded with zero
    images up to `batch_size`: fp32 convolution kernels round an image's features differently at
    another batch size (not with other images beside it), so every forward has one shape and a row's
    bytes do not depend on where the run, its shards or a resume cut the list (a single run and its
    merged shards agree to the byte for one --batch-size and thread count). Without failed images,
    one padded forward per run at most."""
    b, v = x.shape[:2]
    if b < batch_size:
        x = torch.cat([x, x.new_zeros((batch_size - b, *x.shape[1:]))])
    x = normalize_uint8(x.to(dev, non_blocking=True).flatten(0, 1), spec.mean, spec.std)
    if flip:  # the flipped half after the plain half
        x = torch.cat([x, x.flip(-1)])
    y = features(trunk, x, dev).to(torch.float16).cpu().numpy()
    y = y.reshape(-1, max(b, batch_size), v, *y.shape[1:])[:, :b]   # [1 or 2, b, V, C, h, w]
    return y[0], (y[1] if flip else None)


@dataclass
class _RunPlan:
    """What one run of `_run` extracts (rows `rows` of the file's `names`) and how."""
    out: Path
    names: list[str]          # every name of the file, in row order
    paths: list[Path]         # their images
    rows: list[int]           # the rows to extract now (not done, not failed before)
    size: int
    flip: bool
    views: int
    view_seed: int
    batch_size: int
    workers: int
    on_error: str
    progress: bool
    on_batch: BatchCallback | None = None


def _loader(plan: _RunPlan, dev) -> DataLoader:
    """The decoded batches of `plan.rows`; its workers die with this process."""
    images = ImageRows(plan.paths, plan.names, plan.rows, plan.size, plan.views, plan.view_seed)
    return DataLoader(images, batch_size=plan.batch_size, shuffle=False,
                      num_workers=plan.workers, collate_fn=collate_rows,
                      pin_memory=dev.type == "cuda", prefetch_factor=4 if plan.workers else None,
                      worker_init_fn=functools.partial(die_with_parent, os.getpid()))


def _run(f, decoded, plan: _RunPlan, trunk, spec, dev, summary: dict) -> None:
    """Extract `plan.rows` (`decoded`: the started iterator of `_loader(plan)`) into the open
    file `f`, counting into `summary`."""
    flip, views, names = plan.flip, plan.views, plan.names
    feats_ds, flip_ds, done_ds = f["features"], f["features_flip"] if flip else None, f["done"]
    views_ds = f["views"] if views else None
    views_flip_ds = f["views_flip"] if views and flip else None
    bar = progress_bar(total=len(names), initial=summary["already"] + summary["failed_total"],
                       desc=plan.out.name, enabled=plan.progress)
    t0 = last_flush = time.perf_counter()
    batches = 0
    try:
        for idx, x, fails, notes in decoded:
            # multi-frame files (animated GIF/PNG/WebP, multi-page TIFF) gave their first frame
            summary["first_frame"] += len(notes)
            shown = summary["first_frame_notes"]
            shown += [note for _, note in notes][:max(0, 3 - len(shown))]
            if x is not None:
                y, yf = _forward(trunk, spec, dev, x, flip, plan.batch_size)  # [b, 1 + K, C, h, w]
                writer.write_rows(feats_ds, idx, y[:, 0])
                if views_ds is not None:
                    writer.write_rows(views_ds, idx, y[:, 1:])
                if yf is not None:
                    writer.write_rows(flip_ds, idx, yf[:, 0])
                    if views_flip_ds is not None:
                        writer.write_rows(views_flip_ds, idx, yf[:, 1:])
                for start, stop, _ in writer.row_runs(idx):
                    done_ds[start:stop] = True  # only after the rows themselves
                summary["extracted"] += len(idx)
            if fails:
                if plan.on_error == "fail":
                    f.flush()
                    raise ImageError(fails[0][1])
                writer.append_failed(f, [(names[i], why) for i, why in fails])
                summary["skipped"] += len(fails)
                f.flush()
            batches += 1
            bar.update(len(idx) + len(fails))
            if plan.on_batch is not None:
                plan.on_batch(batches, summary["extracted"])
            if batches % FLUSH_EVERY_BATCHES == 0 or time.perf_counter() - last_flush > FLUSH_EVERY_SECONDS:
                f.flush()
                last_flush = time.perf_counter()
    finally:
        bar.close()
        f.flush()
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        n = summary["extracted"] + summary["skipped"]
        summary["images_per_s"] = round(n / summary["seconds"], 2) if summary["seconds"] else 0.0
