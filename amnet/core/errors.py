"""User-facing errors: each carries one clear line saying what went wrong, where, and what to do.

The CLIs turn any `AmnetError` into a one-line message and a non-zero exit.
"""
import re


class AmnetError(Exception):
    """Base of every error a user can fix (bad input, missing file, mismatched settings)."""


class ImageError(AmnetError):
    """An image that cannot be decoded; the message names the file and the reason."""


class SplitError(AmnetError):
    """A malformed split or list file; the message names `file:line` and the problem."""


class CacheError(AmnetError):
    """A feature cache that lacks names, was made with other settings, or is damaged."""


class DamagedCacheError(CacheError):
    """A feature cache file that is truncated or corrupt (not merely in use, nor made with other
    settings): `amnet-cache repair` salvages its complete rows."""


class CacheInUseError(CacheError):
    """A feature cache file that another process holds open (HDF5's lock on it): not damaged,
    nor made with other settings; the message says to wait for that process or stop it."""


class WeightsError(AmnetError):
    """Backbone or head weights that cannot be loaded (offline, wrong file, wrong layout)."""


class TrainingError(AmnetError):
    """Training that cannot go on: a non-finite loss or non-finite weights; the message names the
    epoch and batch, and nothing of that epoch is saved."""


class DiskFullError(AmnetError):
    """No space left on the device (or the disk quota used up) while writing a file: the message
    names the file, the free space and about how much more is needed; work done so far is kept
    (amnet.core.diskspace builds it from the OSError)."""


class ParamsError(AmnetError):
    """A settings file (params.yaml) with an unknown key or a bad value: one line naming the
    file, the key and what is allowed."""


class LockedError(AmnetError):
    """An output file that another live process is writing (amnet/core/lockfile.py): the message names
    the holder (pid, host, command) and says to wait for it or stop it."""


class LockLostError(AmnetError):
    """A writer whose lock file was deleted or taken over: it must not rename anything onto the
    file another process may now be writing."""


class RunInterrupted(AmnetError):
    """A long run stopped by Ctrl-C (SIGINT) that keeps its work: the message says what was kept
    and that a rerun resumes. Exit code 130, as a shell reports a SIGINT."""
    exit_code = 130


class ExportError(AmnetError):
    """A model export that cannot be written (exporter libraries missing, unknown format) or
    whose saved file does not reproduce the torch model."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_failure(exc: BaseException) -> str:
    """Why `torch.load` could not load a file, for an error line: when the safe loader
    (`weights_only=True`) refused a pickle, what it refused (`unsupported GLOBAL posix.system
    ...`), not torch's paragraph of advice (which suggests `weights_only=False`); else the
    exception's type and first line."""
    text = _ANSI.sub("", str(exc))
    if "Weights only load failed" in text:
        i = text.find("WeightsUnpickler error:")
        m = re.search(r"Trying to load unsupported [^\n]+", text)
        what = text[i + len("WeightsUnpickler error:"):] if i >= 0 else m.group(0) if m else ""
        what = " ".join(re.split(r"Please use|Check the documentation", what)[0].split())
        return f"the safe loader refused it: {what.rstrip('. ') or 'not plain tensors'}"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
