"""Resumable training: the state `train_split` writes after every epoch, and reads back.

The state holds all a run needs to go on exactly as if it had never stopped: the head's and the
optimizer's state dicts, every random generator it draws from (torch's global CPU one -- dropout
--, the feeding generator -- batch order, flips, views --, numpy's, python's and CUDA's), the best
epoch so far (its weights and metrics) and the history rows so far. It is written atomically
(temp file, fsync, rename) after each epoch, so a run killed at any point continues from its last
finished epoch, and on CPU ends with the same checkpoint and metrics as an uninterrupted one.

It lives in `.train-state/` beside the checkpoint (`models/.train-state/1.pt.state` for the DVC
stage `train@1`): outside the declared outputs, which DVC deletes before re-running a stage. A
state is used only by a run with the same fingerprint (settings, head config, cache file, split
files' contents, torch version); any other run starts fresh and says so. `train_split` removes it once the
run's outputs are published.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amnet.core.atomic import atomic_path, remove_stale_temps
from amnet.core.diskspace import disk_full_guard
from amnet.core.errors import load_failure
from amnet.head.checkpoint import save_size, torch_save

log = logging.getLogger("amnet.train")

STATE_DIR = ".train-state"
STATE_VERSION = 1


def state_path(checkpoint: str | os.PathLike) -> Path:
    """Where the resumable state of the run writing `checkpoint` lives."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / STATE_DIR / f"{checkpoint.name}.state"


def fingerprint(settings: dict[str, Any], cache_path: str | os.PathLike,
                cache_attrs: dict[str, Any], split_files: dict[str, Any]) -> str:
    """sha256 over what decides a run's results: `settings` (training + head config, device,
    precision), the cache (its resolved path, size, modification time and attributes) and the
    split files' contents (`split_files[part]["sha256"]`). The split files' paths are left out:
    the same files named another way (relative, absolute, a copy elsewhere) resume the run."""
    st = os.stat(cache_path)
    split_hashes = {part: (None if f is None else f["sha256"]) for part, f in split_files.items()}
    doc = {"version": STATE_VERSION, "settings": settings, "torch": str(torch.__version__),
           "cache": {"path": str(Path(cache_path).resolve()), "size": st.st_size,
                     "mtime_ns": st.st_mtime_ns, "attrs": cache_attrs},
           "splits": split_hashes}
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def rng_states(gen: torch.Generator) -> dict[str, Any]:
    """Every random generator's state, in types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {"torch": torch.get_rng_state(), "feeding": gen.get_state(),
              "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos),
                        int(has_gauss), float(gauss)],
              "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    gen.set_state(states["feeding"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically: a kill leaves the previous epoch's state or this one, and so
    does a full disk (one DiskFullError line saying which epoch the rerun goes on from)."""
    def kept() -> str:
        if not path.is_file():
            return "no epoch was saved yet: the rerun starts afresh"
        return f"the state of epoch {state['epoch'] - 1} is kept in {path}: the rerun goes on from it"
    with disk_full_guard(path, lambda: save_size(state), kept):
        with atomic_path(path) as tmp:
            torch_save(state, tmp)


def load_state(path: Path, fp: str) -> dict[str, Any] | None:
    """The state at `path` when it belongs to a run with fingerprint `fp`; else None (a state of
    another run, or an unreadable one, is removed with a one-line note)."""
    remove_stale_temps(path)        # state writes that a kill interrupted
    if not path.is_file():
        return None
    why = ""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable state means: start fresh
        state, why = None, f"unreadable training state ({load_failure(exc)})"
    else:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            state, why = None, "not a training state of this amnet version"
        elif state.get("fingerprint") != fp:
            state, why = None, "training state of a run with other settings or inputs"
    if state is None:
        log.warning("%s: %s; starting fresh", path, why)
        remove_state(path)
    return state


def remove_state(path: Path) -> None:
    """Delete the state (and its folder once empty)."""
    path.unlink(missing_ok=True)
    remove_stale_temps(path)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # not empty (another run's state) or already gone
