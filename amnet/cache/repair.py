"""`amnet-cache repair IN OUT`: salvage every complete row of a damaged feature cache (truncated by
an interrupted copy or a full disk, or with rows holding NaN/Inf) into a new, valid cache.

A truncated HDF5 file does not open: HDF5 compares the file's size with the end-of-file address
its superblock stores. Here it is read through a file object that returns zeros past the real end
(`_Padded`), so every object whose bytes survived can be read. A row is saved when `done` says it
was extracted, every chunk of it (plain view, flip, each crop view) lies inside the real file,
it reads back, and all its values are finite; the rest is *lost*. OUT keeps IN's names (same
order) and settings, so it is a cache of the same images: lost rows are recorded as failed
(`lost="fail"`: OUT is complete and `amnet-cache verify` passes) or left to extract
(`lost="resume"`: `amnet-cache extract IMAGES --out OUT` extracts just those).

Files made since the cache layout puts `names`, `done` and `failed` first (amnet.cache.writer.create)
keep them when truncated; in older files they sat at the end, and a truncation loses them (and
with them every row): repair then says so.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from amnet.core.atomic import atomic_path, remove_stale_temps
from amnet.core.diskspace import disk_full_guard
from amnet.core.errors import CacheError, DamagedCacheError
from amnet.core.lockfile import Lock, hold
from amnet.cache import schema as C, writer as W

LOST = ("fail", "resume")
_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FEATURES = ("features", "features_flip", "views", "views_flip")
_READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError)  # what h5py raises
_BLOCK = 64  # rows copied per step (divided by 1 + K with K crop views)


def superblock_eof(path: str | os.PathLike) -> tuple[int, int] | None:
    """(base address, end-of-file address) stored in an HDF5 file's superblock (versions 0-3),
    or None when there is no HDF5 signature. The file must be at least base + eof long."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        pos = 0
        while pos + 48 <= size:          # the signature sits at 0, 512, 1024, 2048, ...
            fh.seek(pos)
            head = fh.read(48)
            if head[:8] == _SIGNATURE:
                break
            pos = 512 if pos == 0 else pos * 2
        else:
            return None
    version = head[8]
    if version in (0, 1):
        width, at = head[13], 24 + (4 if version == 1 else 0)
    elif version in (2, 3):
        width, at = head[9], 12
    else:
        return None
    fh_bytes = head[at:at + 3 * width]
    base = int.from_bytes(fh_bytes[:width], "little")
    eof = int.from_bytes(fh_bytes[2 * width:3 * width], "little")
    return base, eof


class _Padded(io.RawIOBase):
    """A read-only file that reads as `size` bytes long: its real bytes, then zeros (what a
    truncated file's lost tail is taken to be; no row is saved from there)."""

    def __init__(self, path: str | os.PathLike, size: int):
        self._f = open(path, "rb")
        self.real = os.fstat(self._f.fileno()).st_size
        self._size, self._pos = max(size, self.real), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = start + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        end = min(self._pos + len(view), self._size)
        n = max(0, end - self._pos)
        got = 0
        if self._pos < self.real:
            self._f.seek(self._pos)
            got = self._f.readinto(view[:min(end, self.real) - self._pos]) or 0
        view[got:n] = bytes(n - got)
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class _Source:
    """The damaged file, open for reading: `f` (h5py), `real` (its size), `stored` (the size its
    superblock claims, when it is truncated)."""

    def __init__(self, path: Path):
        self.path, self.raw = path, None
        self.real, self.stored = path.stat().st_size, None
        try:
            self.f = h5py.File(path, "r")
            return
        except FileNotFoundError:
            raise CacheError(f"{path}: feature cache not found") from None
        except OSError as e:
            error = C.open_error(path, e)
        if not isinstance(error, DamagedCacheError):
            raise error                   # in use by another process: not damage
        eof = superblock_eof(path)
        if eof is None:
            raise DamagedCacheError(f"{path}: not an HDF5 file (no HDF5 signature): nothing to "
                                    "salvage; extract it again") from None
        self.stored = eof[0] + eof[1]
        self.raw = _Padded(path, self.stored)
        try:
            self.f = h5py.File(self.raw, "r")
        except OSError as e:
            self.raw.close()
            why = str(e).splitlines()[0]
            raise DamagedCacheError(f"{path}: damaged beyond repair (its HDF5 superblock or root "
                                    f"is lost: {why}); extract it again") from None

    def inside(self, offset: int | None, size: int) -> bool:
        """Whether bytes [offset, offset + size) lie in the real file."""
        return offset is not None and offset + size <= self.real

    def close(self) -> None:
        self.f.close()                    # before the file object it reads through
        if self.raw is not None:
            self.raw.close()


def _lost(path: Path, what: str) -> DamagedCacheError:
    return DamagedCacheError(f"{path}: {what}: no row can be salvaged; extract it again")


def _read_meta(src: _Source) -> tuple[dict[str, Any], list[str], np.ndarray, dict[str, str]]:
    """attrs, names, done `[N]` and the failed images of the damaged file."""
    f, path = src.f, src.path
    attrs: dict[str, Any] = {}
    try:
        keys = list(f.attrs.keys())
    except _READ_ERRORS:
        raise _lost(path, "its settings (root attributes) are lost") from None
    for k in keys:  # one by one: a lost `updated` must not cost the settings
        try:
            attrs[k] = C._plain(f.attrs[k])
        except _READ_ERRORS:
            pass
    if attrs.get("format") != C.FORMAT:
        raise CacheError(f"{path}: not an amnet feature cache (no '{C.FORMAT}' format attribute)")
    gone = [k for k in C.SETTINGS if k in keys and k not in attrs]
    if gone:
        raise _lost(path, f"its settings are damaged ({', '.join(gone)} unreadable)")
    names = _read_names(src)
    try:
        ds = src.f["done"]
        ok = ds.shape == (len(names),) and src.inside(ds.id.get_offset(), ds.id.get_storage_size())
        done = ds[:].astype(bool) if ok else None
    except _READ_ERRORS:
        done = None
    failed: dict[str, str] | None
    try:
        failed = {n: why for n, why in C.read_failed(f).items() if n in set(names)}
    except _READ_ERRORS:
        failed = None                    # its chunks sat at the end (appended late)
    if done is None:
        if not attrs.get("complete") or failed is None:
            raise _lost(path, "its done flags are lost (files made before amnet kept them at the "
                              "front lose them when truncated)")
        done = np.array([n not in failed for n in names], dtype=bool)  # complete: all but failed
    if failed is None:
        # every image not done had failed in a complete file; else they may be unextracted
        failed = ({n: "failed when extracted (the reason was lost with the damage)"
                   for n, d in zip(names, done) if not d} if attrs.get("complete") else {})
    return attrs, names, done, failed


def _read_names(src: _Source) -> list[str]:
    try:
        ds = src.f["names"]
        if not src.inside(ds.id.get_offset(), ds.id.get_storage_size()):
            raise OSError("stored past the end")
        names = ds.asstr()[:].tolist()
    except _READ_ERRORS:
        raise _lost(src.path, "its image names are lost (files made before amnet kept them at the "
                              "front lose them when truncated)") from None
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise _lost(src.path, "its image names are damaged")
    return names


def _dataset_rows(src: _Source, name: str, rows: np.ndarray) -> np.ndarray:
    """bool over `rows`: the row's chunks of dataset `name` all lie inside the real file."""
    ok = np.zeros(len(rows), dtype=bool)
    try:
        ds = src.f[name]
    except _READ_ERRORS:
        return ok                      # its object header is lost: no row of it survives
    views = ds.shape[1] if ds.ndim == 5 else 0
    zeros = (0,) * (ds.ndim - 1 - (1 if views else 0))
    for k, i in enumerate(rows):
        coords = [(int(i), j, *zeros) for j in range(views)] if views else [(int(i), *zeros)]
        try:
            ok[k] = all(src.inside(c.byte_offset, c.size) for c in
                        (ds.id.get_chunk_info_by_coord(co) for co in coords))
        except _READ_ERRORS:
            pass                       # its chunk index is lost
    return ok


def repair(src_path: str | os.PathLike, out: str | os.PathLike, *, lost: str = "fail",
           overwrite: bool = False, wait: float = 0.0) -> dict[str, Any]:
    """Copy every complete, finite row of the (damaged) cache `src_path` into a new cache `out`
    with the same names and settings; returns counts {"in", "out", "images", "saved", "lost",
    "lost_names" (first 5), "failed", "pending", "complete", "truncated" ((size, stored size) or
    None)}. lost: "fail" records lost rows as failed, "resume" leaves them to extract.
    `out` may be `src_path` itself (replaced once the new file is complete). `out` is written
    under its writer lock (amnet.core.lockfile; waits up to `wait` seconds for another writer)."""
    if lost not in LOST:
        raise ValueError(f"lost must be one of {LOST}, not {lost!r}")
    src_path, out = Path(src_path), Path(out)
    with hold(out, wait) as lock:
        if out.exists() and not overwrite and out.resolve() != src_path.resolve():
            raise CacheError(f"{out}: already exists; pass --overwrite to replace it")
        return _repair_locked(src_path, out, lost, lock)


def _repair_locked(src_path: Path, out: Path, lost: str, lock: Lock) -> dict[str, Any]:
    src = _Source(src_path)
    try:
        attrs, names, done, failed = _read_meta(src)
        k, flip = int(attrs.get("views") or 0), bool(attrs.get("flip"))
        grid = tuple(int(g) for g in attrs.get("grid") or ())
        wanted = [d for d, *_ in C.feature_datasets(len(names), int(attrs.get("channels", 0)),
                                                     grid, flip, k)]
        rows = np.flatnonzero(done)
        ok = np.ones(len(rows), dtype=bool)
        for d in wanted:
            ok &= _dataset_rows(src, d, rows)
        counts = _copy(src, out, names, attrs, rows[ok], wanted, lost, failed,
                       lost_rows=rows[~ok], check=lock.check)
    finally:
        src.close()
    return counts | {"truncated": (src.real, src.stored) if src.stored else None}


def _copy(src: _Source, out: Path, names: list[str], attrs: dict[str, Any], rows: np.ndarray,
          wanted: list[str], lost: str, failed: dict[str, str], lost_rows: np.ndarray,
          check) -> dict[str, Any]:
    """Write `out` from the candidate `rows` (those read back finite are saved); the counts."""
    new_attrs = {key: (C._stats_attr(v) if key in ("mean", "std") else
                       np.asarray(v) if isinstance(v, list) else v)
                 for key, v in attrs.items() if key not in ("created", "complete", "updated")}
    new_attrs["repaired_from"] = str(src.path)
    remove_stale_temps(out, "repairing")
    saved_rows: list[int] = []
    dropped: dict[int, str] = {int(i): "its features did not survive" for i in lost_rows}
    with disk_full_guard(out, len(rows) * C.row_bytes(attrs),
                         f"{src.path} is untouched and nothing was written to {out}"), \
            atomic_path(out, tag="repairing", check=check) as tmp:
        with W.create(tmp, names, new_attrs) as g:
            _copy_top(src.f, g)
            step = max(1, _BLOCK // (1 + int(attrs.get("views") or 0)))   # ~50 MB at 224
            for start in range(0, len(rows), step):
                part = rows[start:start + step]
                good = np.ones(len(part), dtype=bool)
                data = {}
                for d in wanted:
                    data[d], readable = _read_rows(src.f[d], part)
                    good &= readable & C.finite_rows(data[d])
                for j, i in enumerate(part):
                    if not good[j]:
                        dropped[int(i)] = "its features hold NaN/Inf or do not read back"
                        continue
                    for d in wanted:
                        g[d][int(i)] = data[d][j]
                    g["done"][int(i)] = True
                    saved_rows.append(int(i))
            lost_names = [names[i] for i in sorted(dropped)]
            if not saved_rows:
                raise DamagedCacheError(f"{src.path}: no complete row to salvage "
                                        f"({len(lost_names)} lost); extract it again")
            records = list(failed.items())
            if lost == "fail":
                records += [(names[i], f"lost: {dropped[i]} in the damaged {src.path} "
                                       "(amnet-cache repair)") for i in sorted(dropped)]
            if records:
                W.append_failed(g, records)
            pending = len(names) - len(saved_rows) - len(records)
            g.attrs["complete"] = pending == 0
            g.attrs["updated"] = C.now()
    return {"in": str(src.path), "out": str(out), "images": len(names), "saved": len(saved_rows),
            "lost": len(lost_names), "lost_names": lost_names[:5], "failed": len(failed),
            "pending": pending, "complete": pending == 0}


def _copy_top(src: h5py.File, dst: h5py.File) -> None:
    """Carry the trunk top (the weights of the blocks above a cut) over when it reads back; else
    the repaired file no longer claims one (its features still serve a frozen head)."""
    try:
        W.copy_top(src, dst)
    except _READ_ERRORS:
        if C.TOP_GROUP in dst:
            del dst[C.TOP_GROUP]  # a part of it
    if C.TOP_GROUP not in dst:
        for key in ("trunk_top", "trunk_top_sha256"):
            if key in dst.attrs:
                del dst.attrs[key]


def _read_rows(ds: h5py.Dataset, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` of `ds` (float16) and whether each read back (a damaged chunk does not)."""
    out = np.zeros((len(rows), *ds.shape[1:]), dtype=np.float16)
    readable = np.ones(len(rows), dtype=bool)
    for j, i in enumerate(rows):
        try:
            ds.read_direct(out, source_sel=np.s_[int(i)], dest_sel=np.s_[j])
        except _READ_ERRORS:
            readable[j] = False
    return out, readable


__all__ = ["repair", "superblock_eof", "LOST"]
