"""Stage one's one path to a cache file: `extract_to`, which `amnet-cache extract` and the DVC
stage `extract` both call, so a file they find is treated the same way by both.

Around `amnet.extract.run.extract` (the loop, which resumes a file made with the same settings)
it adds what a run does with the file it finds and leaves:
  - the writer lock (amnet.core.lockfile) of the file written, held from the first write to the
    end (the final rename included): a live writer is waited for (`wait`) or named, never
    disturbed;
  - a damaged file (truncated by a full disk or a crash, corrupt): every complete row is
    salvaged in place (amnet.cache.repair, lost rows left to extract), then the run resumes;
  - Ctrl-C: RunInterrupted, one line saying how many rows the file keeps and that a rerun
    resumes (instead of click's bare `Aborted!`);
  - `via_partial`: the run writes `<stem>.partial<suffix>` beside OUT and renames it to OUT once
    complete. The DVC stage uses it: DVC deletes a stage's outputs before it runs the stage, so
    rows written into OUT itself would be lost with it, while the partial file (no output)
    survives for the next `dvc repro` to resume. A partial file made with other settings or
    images is the stage's own left-over, not a user's file: it is replaced, not resumed.
    The CLI writes OUT itself (its `complete` attribute says whether it is finished): OUT is the
    file a user resumes, inspects (`amnet-cache info`, `verify`), repairs or merges mid-way, and a
    file made with other settings is refused unless --overwrite.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from amnet.cache import schema
from amnet.cache.repair import repair
from amnet.core.errors import CacheError, DamagedCacheError, RunInterrupted
from amnet.core.lockfile import hold
from amnet.extract import run  # run.extract looked up at call time (tests pause it there)
from amnet.extract.shards import resolve_shard, shard_path

log = logging.getLogger("amnet.extract")


def partial_path(out: str | os.PathLike) -> Path:
    """The file a `via_partial` run writes: `feats.h5` -> `feats.partial.h5`, beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def rows_kept(path: Path) -> str:
    """`<done> of <images> images` the cache at `path` holds, for a line after an interruption."""
    if not path.exists():
        return "no image was extracted yet"
    try:
        with schema.open_existing(path) as f:
            done, n = int(f["done"][:].sum()), len(f["names"])
    except (CacheError, OSError, KeyError):
        return f"what was extracted is kept in {path}"
    return f"{done} of {n} images extracted are kept in {path}"


def extract_to(items: list[tuple[str, Path]], out: str | os.PathLike, *, via_partial: bool = False,
               overwrite: bool = False, shard: tuple[int, int] | str | None = None,
               wait: float = 0.0, note: Callable[[str], None] | None = None,
               resume_hint: str = "rerun the same command to resume", **options) -> dict:
    """Extract `items` into `out` as the CLI and the DVC stage do (the module docstring): the
    writer lock, a damaged file salvaged then resumed, Ctrl-C as RunInterrupted, and with
    `via_partial` the partial file renamed to `out` when complete. `options` are those of
    `amnet.extract.run.extract` (weights, image_size, ..., on_error, progress, source).
    `note(line)` receives what is done to a file found (salvaged, replaced); default: a
    warning on the `amnet.extract` logger. Returns extract's summary; its `out` is the file
    the rows are in now (`out` itself once a partial file was renamed)."""
    say = note or log.warning
    out = Path(out)
    shard = resolve_shard(out, shard)
    target = partial_path(out) if via_partial else out   # what extract is given (and the shard)
    written = shard_path(target, shard) if shard is not None else target
    final = shard_path(out, shard) if shard is not None else out

    def extract(overwrite: bool) -> dict:
        return run.extract(items, target, overwrite=overwrite, shard=shard, **options)

    with hold(written, wait) as lock:  # Ctrl-C while waiting for it: a plain KeyboardInterrupt
        try:
            try:
                summary = _resume_or_salvage(extract, written, overwrite, say)
            except CacheError as e:
                if not (via_partial and written.exists()):
                    raise
                # A left-over of a killed run made with other params or images (no process
                # holds it: we hold its lock): the params are what the user wants now.
                say(f"not resuming {written}: {e}")
                summary = extract(overwrite=True)
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted: {rows_kept(written)}; {resume_hint}") from None
        if via_partial and summary["complete"]:
            lock.check()  # still ours: never rename a file another process now writes
            os.replace(written, final)
            summary["out"] = str(final)
    return summary


def _resume_or_salvage(extract: Callable[[bool], dict], written: Path, overwrite: bool,
                       say: Callable[[str], None]) -> dict:
    """extract(overwrite); a damaged `written` is first salvaged (its complete rows kept, the
    rest left to extract) and then resumed."""
    try:
        return extract(overwrite)
    except DamagedCacheError as e:  # its hint to pass --overwrite is for the refusal, not here
        say(f"{str(e).split('; or pass --overwrite')[0]}; salvaging its complete rows")
    try:
        s = repair(written, written, lost="resume", overwrite=True)
    except CacheError as e:  # nothing to salvage (not an HDF5 file, no row whole)
        raise DamagedCacheError(f"{e} (--overwrite starts it afresh)") from None
    say(f"kept {s['saved']} of {s['images']} rows of {written}; extracting the rest")
    return extract(False)
