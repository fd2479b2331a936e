"""Writing a run's output files so that a crash never leaves a mix of two runs.

Each file is written to `<name>.tmp` beside its final path and flushed to disk (fsync); only when
every file of the run is staged are they renamed into place, the completion file (metrics) last.
Before the first rename the old completion file is removed, so a crash in the middle of
publishing leaves new files without metrics -- never a new head beside an old run's metrics --
and the caller (which keeps its resumable state until `publish` returns) redoes it on rerun.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from amnet.atomic import fsync_dir, fsync_file
from amnet.checkpoint import plain


def tmp_path(path: Path) -> Path:
    """Where `Outputs` stages `path` (a fixed name, so that a later run finds and cleans it)."""
    return path.with_name(path.name + ".tmp")


def json_text(obj: Any) -> str:
    """Strict JSON (no NaN), indented, newline-terminated: metrics files are diffed by DVC."""
    return json.dumps(plain(obj), indent=2, allow_nan=False) + "\n"


class Outputs:
    """The files of one run, published together. `paths`: key -> final path; `marker`: the key
    renamed last (its presence says the set is complete)."""

    def __init__(self, paths: Mapping[str, str | os.PathLike], marker: str = "metrics"):
        self.paths = {k: Path(p) for k, p in paths.items()}
        self.marker = marker
        self.staged: set[str] = set()

    def clean(self) -> None:
        """Remove temp files an earlier, interrupted run left beside these outputs."""
        for p in self.paths.values():
            tmp_path(p).unlink(missing_ok=True)

    def stage(self, key: str, write: Callable[[Path], None]) -> None:
        """`write(temp path)` for output `key`, flushed to disk; published by `publish`."""
        path = self.paths[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path(path))
        fsync_file(tmp_path(path))
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
