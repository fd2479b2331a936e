"""Machinery the converters share: a staging folder swapped in at the end, image links, seeded
random splits and version stamps (file hashes: amnet.core.provenance).

Why a staging folder: a failed or interrupted `prepare` must never leave a half-built data set
in place of a good one. Converters write into `<parent>/.<name>.prepare-<pid>/`; only when every
split has been written and checked does `commit` move it to `<parent>/<name>` (the old one is
moved aside first and deleted only after the new one is in place).
"""
from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from amnet.core.atomic import pid_alive
from amnet.core.errors import AmnetError
from amnet.data.listfiles import PARTS, split_path, write_split

Items = list[tuple[str, float]]
LINK_MODES = ("symlink", "hardlink", "copy")


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree (never following symlinks out of it)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def new_stage(out_dir: Path) -> Path:
    """Create an empty staging folder beside `out_dir`; clean up leftovers of dead runs."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.parent.glob(f".{out_dir.name}.prepare-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove(leftover)  # our own staging folder from a run that was killed
    stage = out_dir.parent / f".{out_dir.name}.prepare-{os.getpid()}"
    _remove(stage)
    stage.mkdir()
    return stage


def discard_stage(stage: Path) -> None:
    _remove(stage)


def commit(stage: Path, out_dir: Path) -> None:
    """Move a finished staging folder to `out_dir`, replacing what was there only at the end."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        _remove(old)
        os.rename(out_dir, old)
    os.rename(stage, out_dir)
    if old is not None:
        _remove(old)


def link_images(stage: Path, root: Path, mode: str = "symlink",
                names: Sequence[str] | None = None) -> Path:
    """Make `stage/images` refer to an external images folder `root`.

    symlink: one absolute link `images -> realpath(root)` (instant; the checks resolve the root
      first, so this link is never taken for an escape; per-file links would be, by design).
    hardlink / copy: the files in `names` (all files when None), same relative paths.
    Returns the resolved source root.
    """
    if mode not in LINK_MODES:
        raise AmnetError(f"link must be one of {', '.join(LINK_MODES)}, not {mode!r}")
    src = Path(os.path.realpath(root))
    dst = stage / "images"
    if mode == "symlink":
        os.symlink(src, dst, target_is_directory=True)
        return src
    if names is None:
        names = [p.relative_to(src).as_posix() for p in sorted(src.rglob("*")) if p.is_file()]
    for name in names:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "hardlink":
            try:
                os.link(src / name, target)
                continue
            except OSError:
                pass  # another file system: fall back to a copy
        shutil.copy2(src / name, target)
    return src


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator determined by (seed, *keys) only: split k's draw does not depend on others."""
    return np.random.default_rng([int(seed), *map(int, keys)])


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise AmnetError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), not {value}")
    return value


def carve(items: Items, fraction: float, rng: np.random.Generator) -> tuple[Items, Items]:
    """Split `items` into (rest, carved) with round(fraction * n) (at least 1) carved at random.

    Both keep the input order, so split files stay readable.
    """
    n = len(items)
    n_carved = max(1, int(round(fraction * n)))
    if n_carved >= n:
        raise AmnetError(f"cannot carve {n_carved} of {n} images (fraction {fraction}): "
                         "too few images; lower the fraction or add images")
    chosen = set(rng.permutation(n)[:n_carved].tolist())
    rest = [it for i, it in enumerate(items) if i not in chosen]
    carved = [it for i, it in enumerate(items) if i in chosen]
    return rest, carved


def random_parts(items: Items, fractions: Sequence[float],
                 rng: np.random.Generator) -> tuple[Items, Items, Items]:
    """Shuffle `items` into train/val/test by `fractions` (train, val, test; summing to 1).

    val and test get round(f * n) images, at least one each; train gets the rest.
    """
    f_train, f_val, f_test = (float(f) for f in fractions)
    if min(f_train, f_val, f_test) <= 0 or abs(f_train + f_val + f_test - 1) > 1e-6:
        raise AmnetError(f"fractions must be three positive numbers (train, val, test) "
                         f"summing to 1, not {list(fractions)}")
    n = len(items)
    n_val, n_test = max(1, round(f_val * n)), max(1, round(f_test * n))
    if n - n_val - n_test < 1:
        raise AmnetError(f"{n} images are too few for train/val/test fractions {list(fractions)}")
    order = rng.permutation(n)
    part_of = np.zeros(n, dtype=np.int8)  # 0 train, 1 val, 2 test
    part_of[order[:n_val]] = 1
    part_of[order[n_val:n_val + n_test]] = 2
    parts: tuple[Items, Items, Items] = ([], [], [])
    for i, it in enumerate(items):
        parts[part_of[i]].append(it)
    return parts


def write_parts(stage: Path, k: int, train: Items, val: Items, test: Items) -> None:
    for part, items in zip(PARTS, (train, val, test)):
        if not items:
            raise AmnetError(f"split {k}: {part} would be empty; add images or change the fractions")
        write_split(split_path(stage, part, k), items)


def parse_splits(splits, *, available: Sequence[int] | None = None, default: int | None = None,
                 maximum: int | None = None) -> list[int]:
    """`splits` as a sorted list of split numbers (from 1).

    None: all `available` (or 1..default); an int n: 1..n; a list: those numbers.
    """
    if splits is None:
        if available is not None:
            ks = list(available)
        else:
            ks = list(range(1, int(default) + 1))
    elif isinstance(splits, (int, np.integer)) and not isinstance(splits, bool):
        ks = list(range(1, int(splits) + 1))
    elif isinstance(splits, str) and splits.strip().isdigit():
        ks = list(range(1, int(splits) + 1))
    else:
        try:
            ks = [int(k) for k in splits]
        except (TypeError, ValueError):
            raise AmnetError(f"splits must be a count or a list of split numbers, not {splits!r}") \
                from None
    if not ks:
        raise AmnetError("no splits selected (splits is empty or zero)")
    if len(set(ks)) != len(ks) or min(ks) < 1:
        raise AmnetError(f"splits must be distinct numbers >= 1, not {ks}")
    if maximum is not None and max(ks) > maximum:
        raise AmnetError(f"split {max(ks)} requested but the source has only {maximum}")
    return sorted(ks)


def parse_score_range(score_range) -> tuple[float, float] | None:
    if score_range is None:
        return None
    try:
        low, high = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise AmnetError(f"score_range must be [low, high] or null, not {score_range!r}") from None
    if not low < high:
        raise AmnetError(f"score_range must have low < high, not {[low, high]}")
    return low, high


def versions(*extra: str) -> dict[str, str]:
    """Versions that can change what `prepare` writes (recorded in prepare.json)."""
    import PIL

    from amnet._version import __version__

    out = {"amnet": __version__, "python": platform.python_version(),
           "numpy": np.__version__, "pillow": PIL.__version__}
    for name in extra:
        module = __import__(name)
        out[name] = getattr(module, "__version__", "unknown")
    return out
