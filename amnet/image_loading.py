"""Images for a DataLoader, one way for extraction and prediction.

`ImageRows` decodes and squash-resizes in the DataLoader's workers to uint8
`[1 + views, 3, S, S]` (a quarter of float32's bytes; ToTensor/Normalize happen in bulk on the
device, `amnet.backbone.normalize_uint8`). A bad image becomes its reason instead of an exception,
so that one file does not kill a worker; `collate_rows` stacks a batch's decoded images and lists
its failures, both in batch order.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from amnet.errors import ImageError
from amnet.images import load_views_uint8


class ImageRows(Dataset):
    """k -> `(row, uint8 [1 + views, 3, S, S] or None, reason or None)` for `row = rows[k]`: the
    plain view (`load_resized_uint8`'s bytes), then the seeded crops, which depend on
    (view_seed, name, j) only. A row whose path is None fails with "no image file".

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
        try:
            if path is None:
                raise ImageError(f"{self.names[i]}: no image file")
            x = load_views_uint8(path, self.size, self.names[i], self.views, self.view_seed)
            return i, x, None
        except ImageError as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 - see any_error
            if not self.any_error:
                raise
            return i, None, f"{path}: {type(e).__name__}: {e}"


class DecodedBatch(NamedTuple):
    """One batch of `ImageRows` (a tuple, so that the DataLoader's pin_memory pins `images`)."""
    rows: list[int]                  # the rows decoded, in batch order
    images: torch.Tensor | None      # uint8 [len(rows), 1 + views, 3, S, S]; None if none decoded
    failed: list[tuple[int, str]]    # (row, reason), in batch order


def collate_rows(batch: list[tuple[int, torch.Tensor | None, str | None]]) -> DecodedBatch:
    good = [(i, x) for i, x, _ in batch if x is not None]
    failed = [(i, why) for i, _, why in batch if why is not None]
    images = torch.stack([x for _, x in good]) if good else None
    return DecodedBatch([i for i, _ in good], images, failed)
