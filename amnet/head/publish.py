"""Writing a run's output files so that a crash never leaves a mix of two runs.

Each file is written to a temp name beside its final path (`.<stem>.staged-<pid><ext>`,
amnet.core.atomic's naming) and flushed to disk (fsync); only when every file of the run is staged are
they renamed into place, the completion file (metrics) last.
Before the first rename the old completion file is removed, so a crash in the middle of
publishing leaves new files without metrics -- never a new head beside an old run's metrics --
and the caller (which keeps its resumable state until `publish` returns) redoes it on rerun.

Staged files of a run that fails (a full disk) are removed at once (`discard`); those of a run
that was killed are removed by the next run (`clean`: only temps of dead processes, so a run
writing the same outputs right now keeps its own).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from amnet.core.atomic import fsync_dir, fsync_file, remove_stale_temps, temp_path
from amnet.core.diskspace import disk_full_guard
from amnet.head.checkpoint import plain


STAGED = "staged"  # the temp files' tag


def tmp_path(path: Path) -> Path:
    """Where `Outputs` stages `path`: `.<stem>.staged-<pid><ext>` beside it."""
    return temp_path(path, STAGED)


def _legacy_tmp(path: Path) -> Path:
    """Where earlier amnet versions staged `path` (no pid): `<name>.tmp`."""
    return path.with_name(path.name + ".tmp")


def json_text(obj: Any) -> str:
    """Strict JSON (no NaN), indented, newline-terminated: metrics files are diffed by DVC."""
    return json.dumps(plain(obj), indent=2, allow_nan=False) + "\n"


class Outputs:
    """The files of one run, published together. `paths`: key -> final path; `marker`: the key
    renamed last (its presence says the set is complete)."""

    def __init__(self, paths: Mapping[str, str | os.PathLike], marker: str = "metrics",
                 kept: str = ""):
        self.paths = {k: Path(p) for k, p in paths.items()}
        self.marker = marker
        self.kept = kept          # what survives a full disk while staging (said in its line)
        self.staged: set[str] = set()

    def clean(self) -> list[Path]:
        """Remove the temp files that earlier runs, killed while staging, left beside these
        outputs (only those of dead processes); returns them."""
        removed = []
        for p in self.paths.values():
            removed += remove_stale_temps(p, STAGED)
            if _legacy_tmp(p).is_file():
                _legacy_tmp(p).unlink()
                removed.append(_legacy_tmp(p))
        return removed

    def discard(self) -> None:
        """Remove this run's staged files (a run that cannot publish: they only take space)."""
        for key in self.staged:
            tmp_path(self.paths[key]).unlink(missing_ok=True)
        self.staged.clear()

    @contextmanager
    def together(self) -> Iterator["Outputs"]:
        """Stage the files in the block; when it ends, publish them together. On any error
        (a full disk, an interrupt) this run's staged files are removed and the error raised."""
        try:
            yield self
            self.publish()
        except BaseException:
            self.discard()
            raise

    def stage(self, key: str, write: Callable[[Path], None], needed: int | None = None) -> None:
        """`write(temp path)` for output `key`, flushed to disk; published by `publish`. A full
        disk is one DiskFullError naming the file (`needed`: its size, when known)."""
        path = self.paths[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        with disk_full_guard(path, needed, self.kept):
            try:
                write(tmp_path(path))
                fsync_file(tmp_path(path))
            except BaseException:
                tmp_path(path).unlink(missing_ok=True)   # half a file: gone before the message
                raise
        self.staged.add(key)

    def stage_json(self, key: str, obj: Any) -> None:
        text = json_text(obj)
        self.stage(key, lambda p: p.write_text(text))

    def stage_csv(self, key: str, df) -> None:
        self.stage(key, lambda p: df.to_csv(p, index=False))

    def publish(self) -> None:
        """Rename every staged file into place, the marker last. An output of the set that this
        run did not stage (say, predictions of a run without a test file) is removed: it would
        be an earlier run's."""
        if self.marker not in self.staged:
            raise ValueError(f"publish needs the {self.marker!r} file staged")
        marker = self.paths[self.marker]
        marker.unlink(missing_ok=True)
        fsync_dir(marker.parent)
        dirs = set()
        for key, path in self.paths.items():
            if key == self.marker:
                continue
            if key in self.staged:
                os.replace(tmp_path(path), path)
            else:
                path.unlink(missing_ok=True)
            dirs.add(path.parent)
        for d in dirs:
            fsync_dir(d)
        os.replace(tmp_path(marker), marker)
        fsync_dir(marker.parent)
