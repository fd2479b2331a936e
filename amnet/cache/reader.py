"""`FeatureCache`: read-only access to an HDF5 feature cache (amnet/cache/schema.py: its schema),
by image name or index; what stage two and `amnet predict --cache` read cached rows through."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

from amnet.core.errors import CacheError, DamagedCacheError
from amnet.core.provenance import BackboneRecord, arrays_sha256
from amnet.cache.schema import (TOP_GROUP, finite_rows, open_existing, open_h5, read_attrs,
                                read_failed)


class FeatureCache:
    """Read-only access to a feature cache, by image name or index.

    h5py handles do not survive fork: the file is opened lazily and re-opened whenever the
    process id changes, so one instance can be handed to DataLoader workers (fork or spawn).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open_existing(self.path) as f:
            try:
                self.attrs: dict[str, Any] = read_attrs(f)
                self.names: list[str] = f["names"].asstr()[:].tolist()
                self._done = f["done"][:].astype(bool)
                self.has_flip: bool = "features_flip" in f
                # crop views per image besides the plain one (0 for version-1 files)
                self.views: int = int(f["views"].shape[1]) if "views" in f else 0
                shape = f["features"].shape
                self.failed: dict[str, str] = read_failed(f)
            except (OSError, KeyError, ValueError, RuntimeError) as e:  # HDF5 raises any of these
                raise DamagedCacheError(
                    f"{self.path}: damaged feature cache (reading its names and flags: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); salvage its "
                    f"complete rows with `amnet-cache repair {self.path} FIXED.h5`") from None
        self.channels: int = int(shape[1])
        self.grid: tuple[int, int] = (int(shape[2]), int(shape[3]))
        self._index = {n: i for i, n in enumerate(self.names)}
        self._file: h5py.File | None = None
        self._pid: int | None = None

    # pickling (spawned DataLoader workers): never ship the handle
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = open_h5(self.path, "r")  # the parent's handle (if any) stays untouched
            self._pid = os.getpid()
        return self._file

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        i = self._index.get(name)  # type: ignore[arg-type]
        return i is not None and bool(self._done[i])

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def backbone(self) -> BackboneRecord:
        """The backbone these features come from (from the attributes; old files included)."""
        return BackboneRecord.from_attrs(self.attrs)

    def index(self, name: str) -> int:
        """Row of `name`; CacheError when the cache lacks it or holds no features for it."""
        i = self._index.get(name)
        if i is None:
            raise CacheError(f"{self.path}: no image {name!r} in this cache ({len(self)} names); "
                             "extract it first")
        if not self._done[i]:
            why = self.failed.get(name, "not extracted yet (unfinished cache)")
            raise CacheError(f"{self.path}: image {name!r} has no features: {why}")
        return i

    def _row(self, key: int | str) -> int:
        if isinstance(key, str):
            return self.index(key)
        i = int(key)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a cache of {len(self)} images")
        i %= len(self)
        if not self._done[i]:
            return self.index(self.names[i])  # raises with the reason
        return i

    def _dataset(self, flip: bool, view: int) -> h5py.Dataset:
        """The dataset holding view `view` (0 = plain, 1..K = crops), flipped or not."""
        if flip and not self.has_flip:
            raise CacheError(f"{self.path}: no flipped features; re-extract with --flip")
        if not 0 <= view <= self.views:
            raise CacheError(f"{self.path}: no view {view}: this cache holds "
                             + (f"views 0 (plain) to {self.views} (crops)" if self.views else
                                "only the plain view 0; re-extract with --views K"))
        if view == 0:
            return self._h5()["features_flip" if flip else "features"]
        return self._h5()["views_flip" if flip else "views"]

    def get(self, key: int | str, flip: bool = False, view: int = 0) -> torch.Tensor:
        """Features of one image: `[C, h, w]` float16 (`[1024, 14, 14]` at 224). `view` 0 is
        the plain (test-transform) view, 1..`views` the stored crops; `flip` its mirror image."""
        ds = self._dataset(flip, view)
        row = self._row(key)
        try:
            return torch.from_numpy(ds[row] if view == 0 else ds[row, view - 1])
        except (OSError, RuntimeError) as e:
            raise self._damaged(self.names[row], e) from None

    def __getitem__(self, key: int | str) -> torch.Tensor:
        return self.get(key)

    def load(self, names: Sequence[str], flip: bool = False, view: int = 0) -> torch.Tensor:
        """Features of `names` in the given order: `[N, C, h, w]` float16 (view and flip as in
        `get`)."""
        rows = [self.index(n) for n in names]
        ds = self._dataset(flip, view)
        out = np.empty((len(rows), self.channels, *self.grid), dtype=np.float16)
        order = np.argsort(rows, kind="stable")  # ascending file order reads faster
        for k in order:
            src = np.s_[rows[k]] if view == 0 else np.s_[rows[k], view - 1]
            try:
                ds.read_direct(out, source_sel=src, dest_sel=np.s_[k])
            except (OSError, RuntimeError) as e:
                raise self._damaged(names[k], e) from None
        return torch.from_numpy(out)

    def _damaged(self, name: str, e: Exception) -> DamagedCacheError:
        """A row that does not read back (a damaged chunk index or header)."""
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return DamagedCacheError(f"{self.path}: damaged: the features of {name!r} do not read "
                                 f"back ({msg}); salvage its complete rows with `amnet-cache "
                                 f"repair {self.path} FIXED.h5`")

    def nonfinite(self, names: Sequence[str], flip: bool = False, views: int = 0,
                  block: int = 64) -> list[str]:
        """Those of `names` whose features hold NaN or Inf: the plain view, its flip (`flip`)
        and crop views 1..`views` (and their flips), read from the file `block` rows at a time
        in file order -- one pass, for data that is not held in memory."""
        bad: set[str] = set()
        order = sorted(names, key=self.index)
        for start in range(0, len(order), block):
            part = order[start:start + block]
            for f in (False, True) if flip else (False,):
                for v in range(views + 1):
                    ok = finite_rows(self.load(part, flip=f, view=v))
                    bad.update(n for n, good in zip(part, ok) if not good)
        return [n for n in names if n in bad]

    @property
    def top_blocks(self) -> tuple[str, ...]:
        """The trunk blocks above this cache's cut whose weights it carries (`("layer4.2",)` for
        a `layer4.1` cut; `()` for whole-stage caches and files made before cuts)."""
        text = self.attrs.get("trunk_top") or ""
        return tuple(x for x in str(text).split(",") if x)

    def top_state(self) -> tuple[dict[str, torch.Tensor], str]:
        """The unfolded weights of `top_blocks` (`{"layer4.2.conv1.weight": float32 tensor,
        ...}`, keyed as in the full torchvision ResNet) and their sha256, checked against the
        one recorded at extraction (DamagedCacheError when they differ, CacheError when the
        cache carries none)."""
        if not self.top_blocks:
            raise CacheError(f"{self.path}: carries no trunk blocks above its cut (layer "
                             f"{self.attrs.get('layer')}); extract with a cut inside layer4, "
                             "e.g. --layers layer4.1")
        try:
            g = self._h5()[TOP_GROUP]
            arrays = {k: g[k][()] for k in g}
        except (OSError, KeyError, RuntimeError) as e:
            raise self._damaged(TOP_GROUP, e) from None
        digest, want = arrays_sha256(arrays), self.attrs.get("trunk_top_sha256")
        if digest != want:
            raise DamagedCacheError(f"{self.path}: its trunk_top weights hash to {digest[:12]}, "
                                    f"not the recorded {str(want)[:12]}; extract it again")
        return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, digest

    def missing(self, names: Sequence[str]) -> list[str]:
        """Names without features in this cache (absent, failed or not yet extracted)."""
        return [n for n in names if n not in self]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FeatureCache({str(self.path)!r}, {len(self)} images, "
                f"{self.attrs.get('weights_id')}, {self.channels}x{self.grid[0]}x{self.grid[1]}, "
                f"{self.views} views)")

