"""Images for a DataLoader, one way for extraction and prediction.

`ImageRows` decodes and squash-resizes in the DataLoader's workers to uint8
`[1 + views, 3, S, S]` (a quarter of float32's bytes; ToTensor/Normalize happen in bulk on the
device, `amnet.extract.backbone.normalize_uint8`). A bad image becomes its reason instead of an exception,
so that one file does not kill a worker (a FIFO, socket or device named like an image is refused
before anything reads from it: it never blocks a worker); `collate_rows` stacks a batch's decoded
images and lists its failures and notes (a multi-frame file: its first frame was used), all in
batch order. `die_with_parent` ties a worker's life to the process that started it.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from amnet.core.errors import ImageError
from amnet.extract.image_files import load_views_uint8


class ImageRows(Dataset):
    """k -> `(row, uint8 [1 + views, 3, S, S] or None, reason or None, note or None)` for
    `row = rows[k]`: the plain view (`load_resized_uint8`'s bytes), then the seeded crops, which
    depend on (view_seed, name, j) only. A row whose path is None fails with "no image file".
    The note says when a multi-frame file (animated GIF/PNG/WebP, multi-page TIFF) gave its
    first frame.

    An `ImageError` becomes the reason; any other exception too with `any_error` (prediction: a
    failed row of a CSV is harmless), else it propagates (extraction records failures in the cache
    for good, so an unexpected error must stop the run instead)."""

    def __init__(self, paths: Sequence[Path | None], names: Sequence[str], rows: Sequence[int],
                 size: int, views: int = 0, view_seed: int = 0, *, any_error: bool = False):
        # only plain data here: workers get a pickled copy (never a trunk or heads, maybe on CUDA)
        self.paths, self.names, self.rows, self.size = paths, names, rows, size
        self.views, self.view_seed, self.any_error = views, view_seed, any_error

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        i = self.rows[k]
        path = self.paths[i]
        notes: list[str] = []
        try:
            if path is None:
                raise ImageError(f"{self.names[i]}: no image file")
            x = load_views_uint8(path, self.size, self.names[i], self.views, self.view_seed,
                                 notes)
            return i, x, None, (notes[0] if notes else None)
        except ImageError as e:
            return i, None, str(e), None
        except Exception as e:  # noqa: BLE001 - see any_error
            if not self.any_error:
                raise
            return i, None, f"{path}: {type(e).__name__}: {e}", None


class DecodedBatch(NamedTuple):
    """One batch of `ImageRows` (a tuple, so that the DataLoader's pin_memory pins `images`)."""
    rows: list[int]                  # the rows decoded, in batch order
    images: torch.Tensor | None      # uint8 [len(rows), 1 + views, 3, S, S]; None if none decoded
    failed: list[tuple[int, str]]    # (row, reason), in batch order
    notes: list[tuple[int, str]]     # (row, note) of decoded multi-frame files, in batch order


def collate_rows(batch: list[tuple[int, torch.Tensor | None, str | None, str | None]]
                 ) -> DecodedBatch:
    good = [(i, x) for i, x, _, _ in batch if x is not None]
    failed = [(i, why) for i, _, why, _ in batch if why is not None]
    notes = [(i, note) for i, _, _, note in batch if note is not None]
    images = torch.stack([x for _, x in good]) if good else None
    return DecodedBatch([i for i, _ in good], images, failed, notes)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn` (bind the parent: `functools.partial(die_with_parent,
    os.getpid())`): on Linux, the worker gets SIGKILL as soon as `parent`, the process that
    started it, dies (strictly: the thread that started it, which iterates the loader), where
    the DataLoader's own watchdog notices only after the item in hand (a batch of photos:
    seconds under load) or, idle, a poll of up to 5 s. Elsewhere, or for a worker that another
    process started (a forkserver's), nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    if os.getppid() != parent:  # a forkserver's worker, or `parent` died before this ran
        if _gone(parent):
            os.kill(os.getpid(), signal.SIGKILL)
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call above: nothing would tell us
        os.kill(os.getpid(), signal.SIGKILL)


def _gone(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
