"""Feeding cached features to the head: the same batches from memory or lazily from the cache.

A `SplitPart` (one part of a split: its train, val or test images) gets a `Source` that yields
one float16 `[b, C, g, g]` tensor per batch of row indices. Per sample it serves one view -- 0
the plain (test-transform) view, 1..K a stored random-resized crop (`amnet-cache extract
--views K`) -- flipped or not.
`Preloaded` holds the features in RAM or on the GPU; `Lazy` reads them from the HDF5 file in
DataLoader workers. Both return identical tensors for the same (indices, flips, views), so which
one runs never changes the results.

Features holding NaN or Inf (a damaged cache, a float16 overflow) are found once, when a part
gets its source -- over the loaded tensors, or in one pass over the file for lazy parts, never per
batch -- and either refused (one line naming them and the cache) or left out of the part.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from amnet.core.device import available_ram
from amnet.core.errors import CacheError
from amnet.cache.schema import finite_rows

log = logging.getLogger("amnet.train")


def open_cache(path: str | os.PathLike):
    """`FeatureCache(path)`, with a hint on how to build a missing one."""
    from amnet.cache.reader import FeatureCache

    if not Path(path).exists():
        raise CacheError(f"{path}: no such feature cache; build it with `amnet-cache extract`")
    return FeatureCache(path)


class SplitPart:
    """One part of a split (its train, val or test images): names, scores `[N]` and a source of
    batches."""

    def __init__(self, names: list[str], scores: np.ndarray):
        self.names, self.scores = names, scores
        self.source: Source | None = None
        self.skipped: list[str] = []     # left out: NaN/Inf features (on_nonfinite="skip")

    def drop(self, bad: Sequence[str]) -> None:
        """Leave the images `bad` out (recorded in `skipped`)."""
        out = set(bad)
        keep = np.array([n not in out for n in self.names], dtype=bool)
        self.skipped += [n for n in self.names if n in out]
        self.names = [n for n, k in zip(self.names, keep) if k]
        self.scores = self.scores[keep]

    def __len__(self) -> int:
        return len(self.names)


class Source:
    """Batches of one split. `views` (K) and `has_flip` say which views it can serve."""

    views: int = 0
    has_flip: bool = False

    def batches(self, index_batches: Sequence[torch.Tensor], flips: torch.Tensor | None = None,
                views: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Yield one `[b, C, g, g]` float16 tensor per batch of row indices (same order).

        flips: bool `[N]` (True = the mirrored features), views: int `[N]` in 0..K (0 = plain),
        both indexed by row; None = plain and unflipped."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Preloaded(Source):
    """The split's features in RAM or on the GPU: `feats` float16 `[N, C, g, g]`, optionally
    `feats_flip` (same), `views` `[N, K, C, g, g]` and `views_flip` (same; needs both)."""

    def __init__(self, feats: torch.Tensor, feats_flip: torch.Tensor | None = None,
                 views: torch.Tensor | None = None, views_flip: torch.Tensor | None = None):
        self.feats, self.feats_flip = feats, feats_flip
        self.views_t, self.views_flip_t = views, views_flip
        self.views = int(views.shape[1]) if views is not None else 0
        self.has_flip = feats_flip is not None and (views is None or views_flip is not None)

    def batches(self, index_batches, flips=None, views=None):
        dev = self.feats.device
        for idx in index_batches:
            idx_d = idx.to(dev)
            f = flips[idx].to(dev) if flips is not None and self.has_flip else None
            x = self.feats[idx_d]
            if f is not None:
                x = torch.where(f.view(-1, 1, 1, 1), self.feats_flip[idx_d], x)
            if views is not None and self.views:
                v = views[idx].to(dev)
                crop = v > 0
                if bool(crop.any()):
                    rows, j = idx_d[crop], v[crop] - 1
                    xv = self.views_t[rows, j]
                    if f is not None:
                        xv = torch.where(f[crop].view(-1, 1, 1, 1), self.views_flip_t[rows, j], xv)
                    x[crop] = xv
            yield x


def read_batch(cache, names: list[str], flips: Sequence[bool], views: Sequence[int]) -> torch.Tensor:
    """One batch from the file: `[b, C, g, g]` float16, row k = `names[k]`'s view `views[k]`
    (flipped where `flips[k]`). The rows of each (flip, view) are read in one `cache.load`, which
    reads in ascending file order: a random batch of a cache larger than RAM then seeks forward
    only (bench/scale.py measured the one-`get`-per-row order it replaces)."""
    out = None
    groups: dict[tuple[bool, int], list[int]] = {}
    for k, key in enumerate(zip(flips, views)):
        groups.setdefault((bool(key[0]), int(key[1])), []).append(k)
    for (f, v), ks in groups.items():
        x = cache.load([names[k] for k in ks], flip=f, view=v)
        if out is None:
            out = torch.empty((len(names), *x.shape[1:]), dtype=x.dtype)
        out[ks] = x
    return out


class _LazyBatches(torch.utils.data.Dataset):
    """Reads one batch per item from the cache; opens its own FeatureCache in each process."""

    def __init__(self, cache_path: str, names: list[str]):
        self.cache_path, self.names = str(cache_path), names
        self._cache, self._pid = None, None

    def __len__(self) -> int:  # not used (batch_size=None, explicit sampler)
        return len(self.names)

    def __getitem__(self, key: tuple[list[int], list[bool], list[int]]) -> torch.Tensor:
        if self._cache is None or self._pid != os.getpid():
            self._cache, self._pid = open_cache(self.cache_path), os.getpid()
        idx, flips, views = key
        return read_batch(self._cache, [self.names[i] for i in idx], flips, views)

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


class Lazy(Source):
    """Reads each batch from the HDF5 cache in `workers` DataLoader processes; serves up to
    `views` crop views and flips when `flip` (what the cache holds and the run may use)."""

    def __init__(self, cache_path: str, names: list[str], workers: int, pin: bool,
                 views: int = 0, flip: bool = False):
        self.views, self.has_flip = views, flip
        self.sampler = _EpochSampler()
        self.loader = torch.utils.data.DataLoader(
            _LazyBatches(cache_path, names), batch_size=None, sampler=self.sampler,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
            # an explicit generator keeps the loader from drawing on the global RNG, which the
            # model's dropout uses: lazy and preloaded runs then see the same dropout masks
            generator=torch.Generator().manual_seed(0),
            prefetch_factor=4 if workers > 0 else None)

    def batches(self, index_batches, flips=None, views=None):
        use_flip = flips is not None and self.has_flip
        use_views = views is not None and self.views > 0
        self.sampler.keys = [
            (idx.tolist(),
             flips[idx].tolist() if use_flip else [False] * len(idx),
             views[idx].tolist() if use_views else [0] * len(idx))
            for idx in index_batches]
        yield from self.loader

    def close(self) -> None:
        self.loader = None


def _load_views(cache, names: list[str], k: int, flip: bool, target: torch.device) -> torch.Tensor:
    """Crop views 1..k of `names`: float16 `[N, k, C, g, g]` on `target`, filled view by view
    (peak memory: the result plus one view)."""
    out = torch.empty((len(names), k, cache.channels, *cache.grid), dtype=torch.float16,
                      device=target)
    for j in range(1, k + 1):
        out[:, j - 1] = cache.load(names, flip=flip, view=j).to(target)
    return out


NONFINITE = ("fail", "skip")


def _nonfinite(cache_path, part: str, s: SplitPart, bad: list[str], on_nonfinite: str) -> None:
    """Refuse (on_nonfinite "fail") or leave out ("skip") the images `bad` of part `part`."""
    if not bad:
        return
    if on_nonfinite == "fail":
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise CacheError(f"{cache_path}: {len(bad)} of {len(s)} {part} images hold NaN/Inf "
                         f"features ({shown}); `amnet-cache verify {cache_path}` lists them all; "
                         "pass --on-nonfinite skip (train.on_nonfinite: skip in params.yaml) to "
                         "leave them out")
    log.warning("%s: left out %d of %d %s images holding NaN/Inf features: %s", cache_path,
                len(bad), len(s), part, ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else ""))
    s.drop(bad)
    if not len(s):
        raise CacheError(f"{cache_path}: every {part} image holds NaN/Inf features; "
                         "re-extract the cache")


def attach_sources(cache_path, cache, parts: dict[str, SplitPart],
                   needs: dict[str, tuple[int, bool]], preload: str, workers: int,
                   device: torch.device, on_nonfinite: str = "fail",
                   ram_budget: int | None = None) -> str:
    """Give each part a source; returns where the data lives: device, ram or lazy.

    needs: part name -> (crop views K it must serve, whether it serves flips); parts not
    named serve the plain view only. preload: auto | device | ram | lazy. on_nonfinite: what
    to do with images whose features (of the views the part serves) hold NaN/Inf: "fail"
    (CacheError naming them) or "skip" (left out of the part, listed in its `skipped`).
    ram_budget: bytes of RAM this run may use (None: what is available); "auto" preloads into
    RAM only what fits in half of the smaller of the two, else reads lazily."""
    if on_nonfinite not in NONFINITE:
        raise ValueError(f"on_nonfinite must be fail or skip, not {on_nonfinite!r}")
    per_image = 2 * cache.channels * cache.grid[0] * cache.grid[1]          # float16 bytes
    need = {k: needs.get(k, (0, False)) for k in parts}
    total = sum(len(s) * per_image * (1 + need[k][0]) * (2 if need[k][1] else 1)
                for k, s in parts.items())
    mode = preload
    if mode == "auto":
        ram = available_ram() if ram_budget is None else min(ram_budget, available_ram() or ram_budget)
        if device.type == "cuda" and total <= 0.5 * torch.cuda.mem_get_info(device)[0]:
            mode = "device"
        elif total <= 0.5 * ram:
            mode = "ram"
        else:
            mode = "lazy"
    if mode not in ("device", "ram", "lazy"):
        raise ValueError(f"preload must be auto, device, ram or lazy, not {preload!r}")
    log.info("data: %d images, %.2f GB float16 -> %s", sum(map(len, parts.values())), total / 1e9, mode)
    if mode == "lazy":
        n_workers = workers if workers >= 0 else min(8, os.cpu_count() or 1)
        for k, s in parts.items():
            n_views, flip = need[k]
            _nonfinite(cache_path, k, s, cache.nonfinite(s.names, flip, n_views), on_nonfinite)
            s.source = Lazy(str(cache_path), s.names, n_workers, pin=device.type == "cuda",
                            views=n_views, flip=flip)
        return mode
    target = device if mode == "device" else torch.device("cpu")
    for k, s in parts.items():
        n_views, flip = need[k]
        feats = torch.as_tensor(cache.load(s.names)).to(target)
        feats_flip = torch.as_tensor(cache.load(s.names, flip=True)).to(target) if flip else None
        views = _load_views(cache, s.names, n_views, False, target) if n_views else None
        views_flip = _load_views(cache, s.names, n_views, True, target) if n_views and flip else None
        loaded = [t for t in (feats, feats_flip, views, views_flip) if t is not None]
        ok = np.logical_and.reduce([finite_rows(t) for t in loaded])
        _nonfinite(cache_path, k, s, [n for n, good in zip(s.names, ok) if not good],
                   on_nonfinite)
        if not ok.all():  # skipped: keep the other rows (a copy, in this rare case only)
            keep = torch.from_numpy(ok).to(target)
            feats, feats_flip, views, views_flip = (None if t is None else t[keep] for t in
                                                    (feats, feats_flip, views, views_flip))
        s.source = Preloaded(feats, feats_flip, views, views_flip)
    return mode
