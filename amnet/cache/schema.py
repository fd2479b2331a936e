"""The HDF5 feature cache: schema, settings, creation and rows for the writer, opening it.
The reader, `FeatureCache`, is amnet/cache/reader.py.

Schema (docs/cache-format.md, format version 2): `features` float16 `[N, C, h, w]` (one chunk
per image, uncompressed, all chunks allocated at creation), optional `features_flip` (same),
optional `views` / `views_flip` float16 `[N, K, C, h, w]` (K seeded random-resized-crop views per
image, one chunk per view), `names` utf-8 `[N]`, `done` bool `[N]`, group `failed` with
`names`/`reasons` of skipped images, and attributes recording how the features were made
(SETTINGS decide whether two files are compatible). Version-1 files (no views) read as K = 0.
A cache cut inside a stage (`layer` "layer4.1") also holds group `trunk_top`: the unfolded
float32 weights of the blocks above the cut (attribute `trunk_top`: their names), which stage two
may train; an older reader ignores the group (the format version stays 2).

Crash safety: all chunks are allocated when the file is created, so the writer only overwrites
raw data in place afterwards and the HDF5 metadata never changes mid-run; `done[i]` is set only
after image i's features were written. A process killed at any point leaves a readable file whose
`done` rows are all valid (with every view: `done[i]` follows the last of row i's datasets).

Layout: `names`, `done` and `failed` are created (and allocated) before the feature datasets, so
they sit at the front of the file and a truncated copy keeps them: `amnet-cache repair`
(amnet.cache.repair) salvages every row whose chunks survived. Files made before this order
keep `names`/`done` at the end, where a truncation loses them.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from amnet.core.errors import CacheError, CacheInUseError, DamagedCacheError
from amnet.core.provenance import BackboneRecord, versions, weights_difference
from amnet.data.views import view_transform_description

FORMAT = "amnet-feature-cache"
FORMAT_VERSION = 2  # 1: no views; 2: optional `views`/`views_flip` and their attributes
# attributes that must match for two files (or a file and a command) to be compatible
SETTINGS = ("backbone", "layer", "weights_sha256", "image_size", "mean", "std", "flip",
            "precision", "channels", "grid", "views", "view_seed", "trunk_top_sha256")
TOP_GROUP = "trunk_top"  # the blocks above a cut inside a stage (writer.write_top)
# what a file without the attribute (format version 1) means
_SETTING_DEFAULTS = {"views": 0, "view_seed": 0}


def settings_attrs(spec, image_size: int, flip: bool, channels: int,
                   grid: tuple[int, int], views: int = 0, view_seed: int = 0) -> dict[str, Any]:
    """The attributes describing features made with backbone `spec` (an
    `amnet.extract.backbone.BackboneSpec`, or a `BackboneRecord`) at `image_size`, with `views` seeded
    crop views per image (0: the plain view only)."""
    record = spec if isinstance(spec, BackboneRecord) else BackboneRecord.from_spec(spec)
    record = replace(record, image_size=int(image_size))
    extra: dict[str, Any] = {"views": int(views), "view_seed": int(view_seed)}
    if views:
        extra["view_transform"] = view_transform_description(image_size)
    v = versions()
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, **record.to_attrs(),
        "flip": bool(flip), "dtype": "float16", "channels": int(channels),
        "grid": np.asarray(grid, dtype=np.int64), "resize": "squash, PIL bilinear (antialiased)",
        "torch_version": v["torch"], "torchvision_version": v["torchvision"],
        "amnet_version": v["amnet"], **extra,
    }


def _stats_attr(v) -> Any:
    return "none" if v is None else np.asarray(v, dtype=np.float64)


def _plain(v: Any) -> Any:
    """An h5py attribute value as plain Python (str, bool, int, float, list, None for 'none')."""
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if v == "none":
        return None
    return v


def read_attrs(f: h5py.File) -> dict[str, Any]:
    return {k: _plain(v) for k, v in f.attrs.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        if a is None or b is None or np.shape(a) != np.shape(b):
            return False
        return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=1e-9))
    return a == b


def settings_differences(have: dict, want: dict) -> list[str]:
    """Human-readable differences between two attribute dicts over SETTINGS."""
    diffs = []
    views = [int(_plain(d.get("views")) or 0) for d in (have, want)]
    for key in SETTINGS:
        a, b = (_plain(d.get(key, _SETTING_DEFAULTS.get(key))) for d in (have, want))
        if key == "view_seed" and not any(views):
            continue  # no views: the seed is irrelevant
        if _same(a, b):
            continue
        if key == "weights_sha256":
            diffs.append(weights_difference(
                (_plain(have.get("weights_id")), str(a), _plain(have.get("layer"))),
                (_plain(want.get("weights_id")), str(b), _plain(want.get("layer")))))
        else:
            diffs.append(f"{key} {a} vs {b}")
    return diffs


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def feature_datasets(n: int, c: int, grid: tuple[int, int], flip: bool, views: int
                     ) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, shape, chunks) of every float16 dataset of a cache: `features` [N, C, h, w],
    `features_flip` (flip), `views` [N, K, C, h, w] (views > 0), `views_flip` (both)."""
    h, w = grid
    out = [("features", (n, c, h, w), (1, c, h, w))]
    if flip:
        out.append(("features_flip", (n, c, h, w), (1, c, h, w)))
    if views:
        out.append(("views", (n, views, c, h, w), (1, 1, c, h, w)))
        if flip:
            out.append(("views_flip", (n, views, c, h, w), (1, 1, c, h, w)))
    return out


def row_bytes(attrs: dict[str, Any]) -> int:
    """Bytes one image takes over every feature dataset of a cache with these attributes
    (float16; its flip and crop views included): what a row still to write needs on disk."""
    grid = tuple(int(g) for g in (_plain(attrs.get("grid")) or (0, 0)))
    layout = feature_datasets(1, int(_plain(attrs.get("channels")) or 0), grid,
                              bool(_plain(attrs.get("flip"))), int(_plain(attrs.get("views")) or 0))
    return sum(2 * int(np.prod(shape)) for _, shape, _ in layout)


_FP16_EXPONENT = 0x7C00  # float16: all exponent bits set = Inf or NaN


def finite_rows(x: torch.Tensor | np.ndarray, block: int = 64) -> np.ndarray:
    """bool `[N]`: whether row n of `x` (`[N, ...]`, e.g. float16 features `[N, C, h, w]` or
    views `[N, K, C, h, w]`) holds only finite values. Vectorised, `block` rows at a time (the
    temporaries stay ~25 MB); float16 on the CPU by its exponent bits (bench/nonfinite.py)."""
    n = int(x.shape[0])
    out = np.ones(n, dtype=bool)
    if isinstance(x, torch.Tensor) and x.device.type != "cpu":
        for s in range(0, n, block):
            out[s:s + block] = torch.isfinite(x[s:s + block].flatten(1)).all(1).cpu().numpy()
        return out
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.reshape(n, -1)
    for s in range(0, n, block):
        part = a[s:s + block]
        if part.dtype == np.float16:
            out[s:s + block] = (part.view(np.uint16) & _FP16_EXPONENT).max(axis=1) != _FP16_EXPONENT
        else:
            out[s:s + block] = np.isfinite(part).all(axis=1)
    return out


def read_failed(f: h5py.File) -> dict[str, str]:
    if "failed" not in f:
        return {}
    g = f["failed"]
    return dict(zip(g["names"].asstr()[:].tolist(), g["reasons"].asstr()[:].tolist()))


_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def open_error(path: str | os.PathLike, e: OSError) -> CacheError:
    """The one-line CacheError for HDF5's error opening `path`: in use by another process (a
    lock: CacheInUseError), truncated, not HDF5 at all, or otherwise damaged (DamagedCacheError for the last
    three). HDF5's "truncated file" message names `sblock`, which holds "lock": a lock is told by
    its errno (EAGAIN) or HDF5's "unable to lock file", never by the word alone."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    low = msg.lower()
    if (isinstance(e, BlockingIOError) or e.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
            or "unable to lock file" in low):
        return CacheInUseError(f"{path}: in use by another process (an extraction still running?); "
                          f"wait for it or stop it ({msg})")
    repair = f"salvage its complete rows with `amnet-cache repair {path} FIXED.h5`"
    m = _TRUNCATED.search(msg)
    if m:
        have, want = int(m.group(1)), int(m.group(2))
        return DamagedCacheError(f"{path}: truncated: {have:,} of {want:,} bytes (an interrupted "
                                 f"copy or download, or a full disk?); {repair}, or extract it "
                                 "again")
    if "signature not found" in low:
        return DamagedCacheError(f"{path}: not an HDF5 file (no HDF5 signature; damaged, or "
                                 "another kind of file); extract it again")
    return DamagedCacheError(f"{path}: damaged HDF5 file ({msg}); {repair}, or extract it again")


def open_h5(path: str | os.PathLike, mode: str = "r", **kwargs) -> h5py.File:
    """`h5py.File(path, mode)`, its errors turned into one CacheError line (`open_error`)."""
    try:
        return h5py.File(path, mode, **kwargs)
    except FileNotFoundError:
        raise CacheError(f"{path}: feature cache not found") from None
    except OSError as e:
        raise open_error(path, e) from None


def open_existing(path: Path, mode: str = "r") -> h5py.File:
    """Open a cache file, turning HDF5's errors into one CacheError line."""
    f = open_h5(path, mode, **({"rdcc_nbytes": 0} if mode != "r" else {}))
    if f.attrs.get("format") not in (FORMAT, FORMAT.encode()) or "features" not in f:
        f.close()
        raise CacheError(f"{path}: not an amnet feature cache (no '{FORMAT}' format attribute)")
    version = int(f.attrs.get("format_version", 1))
    if version > FORMAT_VERSION:
        f.close()
        raise CacheError(f"{path}: feature cache format version {version} is newer than this amnet "
                         f"reads (up to {FORMAT_VERSION}); upgrade amnet")
    return f
