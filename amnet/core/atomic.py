"""Atomic file writes: a file at its final path is always complete, never half written.

Every writer goes through `atomic_path`: the content goes to a temporary file next to the target
(same folder, hence same file system), which is flushed to disk (`os.fsync`) and then renamed
over the target (`os.replace`, atomic on POSIX and Windows); on any error, KeyboardInterrupt
included, the temporary file is removed and the target is left as it was.

Temporary names are recognisable: `.<stem>.<tag>-<pid><extension>` (hidden, next to the target;
`tag` says who writes it: `tmp` by default, `creating` for a new feature cache, `merging` for a
merge, `relisting` for a cache rewritten for a shorter image list, `repairing` for a salvaged
cache, `partial` for a predictions CSV), so a leftover of a killed process is easy to spot, and
`remove_stale_temps` removes those whose process is dead.

Plain `open` (not `mkstemp`) so the file gets the usual umask permissions, not 0600. One writer
per target per process (the pid tells processes apart, not threads).

Bottom layer: imports nothing from amnet.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator


_COMPRESSED = {".gz", ".bz2", ".xz", ".zst", ".zip"}


def temp_path(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """The temporary name `atomic_path` writes `path` under, beside it: `.<stem>.<tag>-<pid><ext>`
    (`feats.h5` -> `.feats.creating-123.h5`). The extension stays last because libraries pick
    a format from it (numpy appends `.npy` otherwise, pandas infers `.csv.gz` compression)."""
    path = Path(path)
    ext = "".join(path.suffixes[-2:]) if path.suffix in _COMPRESSED else path.suffix
    stem = path.name[:len(path.name) - len(ext)] if ext else path.name
    return path.with_name(f".{stem}.{tag}-{os.getpid()}{ext}")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (signal 0 probes without sending; a process
    of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover -- e.g. a platform without kill: assume the worst
        return True
    return True


def remove_stale_temps(path: str | os.PathLike, tag: str = "tmp") -> list[Path]:
    """Delete the temporary files `atomic_path(path, tag)` left beside `path` by processes that
    died (killed mid-write, or a power cut); returns them. A temp of a live process (another
    run writing the same target right now) is left alone, and so is one of this process."""
    pattern = temp_path(path, tag).name.replace(f"-{os.getpid()}", "-*", 1)
    head, _, tail = pattern.partition("*")
    removed = []
    for p in sorted(Path(path).parent.glob(pattern)):
        pid = p.name[len(head):len(p.name) - len(tail)]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every OS/file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, tag: str = "tmp",
                check: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path for `path`; when the block ends normally, the file written there
    is fsynced and renamed to `path`. For libraries that write a file themselves:

        with atomic_path(out) as tmp:
            torch.save(obj, tmp)      # or h5py.File(tmp, "w"), df.to_csv(tmp), ...

    Parent folders are created. On an error the temporary file is removed and the error raised.
    `check`, if given, is called right before the rename and may raise to prevent it (a writer
    lock's `Lock.check`: a process that lost its lock must not replace `path`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, tag)
    try:
        yield tmp
        fsync_file(tmp)
        if check is not None:
            check()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", tag: str = "tmp",
                **open_kwargs) -> Iterator[IO]:
    """`open(...)` of the temporary file of `atomic_path(path, tag)`, for writers that stream:

        with atomic_open(out, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    """
    with atomic_path(path, tag) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8",
                      newline: str | None = None) -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_open(path, "w", encoding=encoding, newline=newline) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


__all__ = ["atomic_path", "atomic_open", "atomic_write_text", "atomic_write_bytes", "temp_path",
           "remove_stale_temps", "pid_alive"]
