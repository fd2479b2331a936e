"""A full disk as one line: an OSError ENOSPC (or EDQUOT, a used-up quota) raised while writing
becomes a `DiskFullError` naming the file, the space free on its file system and about how much
more the write needs, and saying what was kept.

Writers wrap their writes in `disk_full_guard(path, needed=..., kept=...)`; the CLIs' error
boundary (amnet/cli/_errors.py) turns any ENOSPC that no guard caught into the same line, without
the estimate. Where the errno hides: h5py raises `OSError(28, "... filename = 'x.h5' ...")`
without `filename`, and `torch.save` into a file object raises a RuntimeError whose `__context__`
is the OSError -- `disk_full_cause` looks through both.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from amnet.core.errors import DiskFullError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

_H5_FILENAME = re.compile(r"filename = '([^']*)'")


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The OSError ENOSPC/EDQUOT behind `exc` (itself, or its cause / context chain), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free (to this user) on the file system holding `path` (its nearest existing
    folder); None when it cannot be told."""
    p = Path(path).absolute()
    for folder in (p, *p.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def human_bytes(n: float) -> str:
    """`401 KB`, `24.1 GB` (decimal units, as `df -H` and the docs use)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def disk_full_error(exc: OSError, path: str | os.PathLike | None = None,
                    needed: int | None = None, kept: str = "") -> DiskFullError:
    """The one-line DiskFullError for `exc`: the file (`path`, else the one the error names),
    the free space, `needed` bytes when known, and `kept` (what survived, how to go on)."""
    name = path or exc.filename
    if name is None:
        m = _H5_FILENAME.search(str(exc))
        name = m.group(1) if m else None
    where = str(name) if name is not None else "a file"
    free = free_bytes(name) if name is not None else None
    what = ("the disk quota is used up" if exc.errno == errno.EDQUOT
            else "no space left on device")
    facts = []
    if free is not None:
        facts.append(f"{human_bytes(free)} free there")
    if needed is not None and needed > 0:
        facts.append(f"about {human_bytes(needed)} more needed")
    detail = f" ({', '.join(facts)})" if facts else ""
    tail = f"; {kept}" if kept else ""
    return DiskFullError(f"{where}: {what}{detail}; free some space (or write to another disk) "
                         f"and rerun{tail}")


@contextmanager
def disk_full_guard(path: str | os.PathLike | None = None,
                    needed: int | Callable[[], int | None] | None = None,
                    kept: str | Callable[[], str] = "") -> Iterator[None]:
    """Turn a disk-full error raised inside the block into a DiskFullError about `path`.
    `needed` (bytes) and `kept` may be callables, evaluated when the error happens (what was
    kept grows as a loop goes on). Any other error passes through unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except BaseException as exc:
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        n = needed() if callable(needed) else needed
        k = kept() if callable(kept) else kept
        raise disk_full_error(cause, path, n, k) from exc


__all__ = ["disk_full_cause", "disk_full_error", "disk_full_guard", "free_bytes", "human_bytes"]
