"""Writer locks: one process at a time writes an output file, and no process replaces, renames or
recreates a file that a live process holds.

`hold(path, wait)` creates `<path>.lock` with `O_CREAT | O_EXCL` (of processes racing for it,
exactly one succeeds), holding one JSON object: the holder's pid, host, process start time (from
psutil: tells a reused pid apart), a random token, its command line and the time. Another writer
of `path` that finds the lock file:
  - holder alive (this host, that pid running with that start time), or on another host (whose
    processes cannot be checked from here): polls for up to `wait` seconds, then raises
    LockedError with one line naming the holder and what to do;
  - holder dead (this host; the pid is gone, a zombie, or reused by a process started at another
    time): the lock is stale. It is removed and taken, with a warning. Removal happens under a
    short `<path>.lock.break` mutex and only if the lock file is still the stale one, so two
    processes breaking the same stale lock can never remove the fresh lock one of them made.

Locks are re-entrant within a process (pipeline/extract.py holds its partial file's lock across
`extract()` and its final rename). Before a rename the holder calls `Lock.check()`: it raises
LockLostError when the lock file no longer carries its token (deleted by hand, or broken by a
process on another host), so a process that lost its lock never replaces what another wrote.

Not a lock for readers: h5py's own file locking keeps readers off a file being written.

That HDF5 lock belongs to the open file, and a child forked while the file is open shares it: a
writer killed with kill -9 can leave children that hold it for a while (DataLoader workers, until
they notice). amnet.extract forks its workers before it opens the file, so none holds it; should
another child hold it anyway, `wait_for_leftovers` waits for the dead writer's children, saying
which pids hold the file, and names any other process that does.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from amnet.core.errors import AmnetError, LockedError, LockLostError

log = logging.getLogger("amnet.lock")

POLL_SECONDS = 0.5
# a lock file that is empty or not JSON was left by a process killed between creating and
# writing it (writing takes microseconds) once it is this old; younger, it is being written
UNREADABLE_STALE_SECONDS = 10.0
# a break mutex this old was left by a process killed while breaking a stale lock
BREAK_STALE_SECONDS = 30.0
# how long a new writer waits for the processes a killed writer left holding the file open
LEFTOVER_WAIT_SECONDS = 60.0

_held: dict[str, list] = {}  # lock file (absolute) -> [Lock, depth] of the locks this process holds


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of `path`: `feats.h5` -> `feats.h5.lock`, beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written in its lock file."""
    pid: int
    host: str
    started: float  # psutil create_time of the process
    token: str
    command: str = ""
    since: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (since {self.since}: {self.command})"


@dataclass(frozen=True)
class _Seen:
    """One look at a lock file: its bytes and identity (to break exactly the lock judged stale)."""
    raw: bytes
    ino: int
    mtime_ns: int
    holder: Holder | None  # None: empty or not a lock file's JSON


def _process_start(pid: int) -> float:
    import psutil
    return psutil.Process(pid).create_time()


def _me() -> Holder:
    cmd = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return Holder(pid=os.getpid(), host=socket.gethostname(), started=_process_start(os.getpid()),
                  token=secrets.token_hex(8), command=cmd[:200],
                  since=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _look(lock: Path) -> _Seen | None:
    """The lock file now (None if there is none)."""
    try:
        with open(lock, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read(4096)
    except FileNotFoundError:
        return None
    try:
        d = json.loads(raw)
        holder = Holder(pid=int(d["pid"]), host=str(d["host"]), started=float(d["started"]),
                        token=str(d["token"]), command=str(d.get("command", "")),
                        since=str(d.get("since", "")))
    except (ValueError, KeyError, TypeError):
        holder = None
    return _Seen(raw, st.st_ino, st.st_mtime_ns, holder)


def holder_alive(h: Holder) -> bool | None:
    """True/False for a holder on this host (pid running with the recorded start time); None
    for another host: its processes cannot be checked from here."""
    if h.host != socket.gethostname():
        return None
    import psutil
    try:
        p = psutil.Process(h.pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        # start times are boot time + ticks, and the boot time Linux reports can move by a
        # second after a clock adjustment: judging a live writer dead would break its lock, a
        # pid reused within a second of the dead writer's start is merely waited for
        return abs(p.create_time() - h.started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process: it exists
        return True


def _stale(seen: _Seen) -> bool:
    if seen.holder is None:
        return time.time() - seen.mtime_ns / 1e9 > UNREADABLE_STALE_SECONDS
    return holder_alive(seen.holder) is False


def _break(lock: Path, seen: _Seen) -> Holder | None:
    """Remove the stale lock file `seen`, unless it changed meanwhile; the holder removed."""
    brk = lock.with_name(lock.name + ".break")
    try:
        os.close(os.open(brk, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:  # another process is breaking it; or a killed one left its mutex
        try:
            if time.time() - brk.stat().st_mtime > BREAK_STALE_SECONDS:
                brk.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
        return None
    try:
        now = _look(lock)
        if now is not None and (now.raw, now.ino, now.mtime_ns) == (seen.raw, seen.ino,
                                                                     seen.mtime_ns):
            lock.unlink(missing_ok=True)
            who = seen.holder.describe() if seen.holder else "a process killed while creating it"
            log.warning(f"{lock}: removed a stale lock of {who}, which no longer runs")
            return seen.holder
    finally:
        brk.unlink(missing_ok=True)
    return None


def _try_create(lock: Path, me: Holder) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as e:  # a read-only folder, no space, ...
        raise AmnetError(f"{lock}: cannot create this writer lock ({e.strerror}); write the "
                         "output into a folder where you may create files") from None
    try:
        os.write(fd, json.dumps(me.__dict__).encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        lock.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


class Lock:
    """A held lock on `path` (see the module docstring); `replaced`: the dead holder whose stale
    lock this one replaced (None if there was none)."""

    def __init__(self, path: Path, holder: Holder, replaced: Holder | None = None):
        self.path, self.file, self.holder = path, lock_path(path), holder
        self.replaced = replaced

    def owned(self) -> Holder | None:
        """None while the lock file still carries this lock's token, else who holds it now
        (a Holder with pid 0 when the file is gone or unreadable)."""
        seen = _look(self.file)
        if seen is not None and seen.holder is not None and seen.holder.token == self.holder.token:
            return None
        if seen is not None and seen.holder is not None:
            return seen.holder
        return Holder(pid=0, host="", started=0.0, token="")

    def check(self) -> None:
        """Raise LockLostError if this process no longer holds the lock: call it right before
        renaming anything onto (or away from) `path`."""
        other = self.owned()
        if other is None:
            return
        now = (f"it is now held by {other.describe()}" if other.pid else
               "its lock file was deleted")
        raise LockLostError(f"{self.path}: this process (pid {os.getpid()}) lost its writer lock "
                            f"{self.file} ({now}); it leaves {self.path} as it is: rerun the "
                            "command once no other process writes it")

    def release(self) -> None:
        if self.owned() is None:  # never remove another process's lock
            self.file.unlink(missing_ok=True)


def acquire(path: str | os.PathLike, wait: float = 0.0) -> Lock:
    """Take the lock of `path`, waiting up to `wait` seconds for a live holder; LockedError
    (one line naming the holder and what to do) when it is still held then."""
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = _me()
    deadline = time.monotonic() + max(0.0, wait)
    replaced = None
    while True:
        if _try_create(lock, me):
            return Lock(path, me, replaced)
        seen = _look(lock)
        if seen is None:
            continue  # released between the two calls
        if _stale(seen):
            replaced = _break(lock, seen) or replaced
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockedError(_busy_message(path, lock, seen, wait))
        time.sleep(min(POLL_SECONDS, left))


def _busy_message(path: Path, lock: Path, seen: _Seen, wait: float) -> str:
    waited = f" (waited {wait:g} s)" if wait > 0 else ""
    h = seen.holder
    if h is None:
        return (f"{path}: {lock} is being created by another process{waited}; rerun in a few "
                f"seconds (or delete {lock} if no process writes {path})")
    if holder_alive(h) is None:
        return (f"{path}: being written by {h.describe()}{waited}; wait for it (--wait SECONDS), "
                f"or, if no such process runs on {h.host} any more, delete {lock}")
    return (f"{path}: being written by {h.describe()}{waited}; wait for it to finish "
            f"(--wait SECONDS) or stop it (kill {h.pid}), then rerun")


def processes_holding(path: str | os.PathLike) -> list:
    """The psutil processes besides this one that have `path` open (of those whose open files
    this user may read: on Linux, its own)."""
    import psutil
    try:
        st = os.stat(path)
    except OSError:
        return []
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            for of in p.open_files():
                try:  # the open file itself (Linux), else the file at the path it was opened by
                    s = os.stat(f"/proc/{p.pid}/fd/{of.fd}" if of.fd >= 0 else of.path)
                except OSError:
                    continue
                if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                    found.append(p)
                    break
        except psutil.Error:
            continue
    return found


def _describe(p) -> str:
    import psutil
    try:
        return f"pid {p.pid} ({' '.join(p.cmdline())[:120]})"
    except psutil.Error:
        return f"pid {p.pid}"


def _left_by(p, dead: Holder) -> bool:
    """Whether process `p` started after the dead writer `dead` did: a child it left behind (say
    a DataLoader worker), or else a process that opened the file since it died."""
    import psutil
    try:
        return p.create_time() >= dead.started - 1.0
    except psutil.Error:
        return False


def wait_for_leftovers(lock: Lock, timeout: float = LEFTOVER_WAIT_SECONDS) -> None:
    """`lock.path` could not be opened for writing although this process holds its writer lock:
    other processes hold the file open. When each of them started after the dead writer whose
    stale lock this one replaced (its children, which inherited the file and HDF5's lock on it,
    or a process that opened it since), wait up to `timeout` seconds for them to let go,
    naming them. Returns once no process can be seen holding it (the caller opens it again);
    LockedError naming each process that holds it otherwise."""
    path, dead = lock.path, lock.replaced
    holders = processes_holding(path)
    if not holders:
        return
    which = ", ".join(_describe(p) for p in holders)
    if dead is None or not all(_left_by(p, dead) for p in holders):
        raise LockedError(f"{path}: in use by {which}; wait for it to finish or stop it, then "
                          "rerun") from None
    log.warning(f"{path}: still open in {which}, which started after the killed writer pid "
                f"{dead.pid} (its children?); waiting up to {timeout:g} s for them to let go")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        holders = processes_holding(path)
        if not holders:
            return
        if not all(_left_by(p, dead) for p in holders):
            break
    which = ", ".join(_describe(p) for p in holders)
    raise LockedError(f"{path}: still open in {which} (the writer pid {dead.pid} was killed, "
                      f"waited for up to {timeout:g} s); stop them (kill "
                      f"{' '.join(str(p.pid) for p in holders)}), then rerun") from None


@contextmanager
def hold(path: str | os.PathLike, wait: float = 0.0) -> Iterator[Lock]:
    """`with hold(out, wait) as lock:` write `out` (re-entrant within a process)."""
    key = os.path.abspath(lock_path(path))
    if key in _held:
        _held[key][1] += 1
        try:
            yield _held[key][0]
        finally:
            _held[key][1] -= 1
        return
    lk = acquire(path, wait)
    _held[key] = [lk, 1]
    try:
        yield lk
    finally:
        del _held[key]
        lk.release()


__all__ = ["hold", "acquire", "Lock", "Holder", "lock_path", "holder_alive", "processes_holding",
           "wait_for_leftovers"]
