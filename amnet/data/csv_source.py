"""A user's CSV of `path,score` rows -> k seeded random train/val/test splits (any image regression).

- Header row optional. With a header, columns are found by name: `path` (or image, file,
  filename, name), `score` (or label, target, value), optional `split` (or set, subset). Without
  one, columns are path, score[, split]. A first row whose second field is not a number is a header.
- Paths are relative to `images_root` (default: the CSV's folder); absolute paths are accepted
  only inside it. `..`, symlinks leading out, missing files, duplicates and scores outside
  `score_range` are errors naming `file:line`.
- Without a split column: for k in splits, `numpy.random.default_rng([seed, k])` shuffles the rows
  into train/val/test by `fractions` (default 0.8/0.1/0.1).
- With a split column (train / val / test; validation/valid also accepted): that one fixed split
  is written as split 1; asking for more than one split is an error.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Sequence

from amnet.core.errors import AmnetError, SplitError
from amnet.core.provenance import file_sha256
from amnet.data import build
from amnet.data.listfiles import RootChecker, check_name, normalize_name

PATH_COLUMNS = ("path", "image", "file", "filename", "name")
SCORE_COLUMNS = ("score", "label", "target", "value")
SPLIT_COLUMNS = ("split", "set", "subset")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns(header: list[str], where: str) -> tuple[int, int, int | None]:
    lower = [h.strip().lower() for h in header]

    def find(options: Sequence[str]) -> int | None:
        return next((lower.index(o) for o in options if o in lower), None)

    path_col, score_col, split_col = find(PATH_COLUMNS), find(SCORE_COLUMNS), find(SPLIT_COLUMNS)
    if path_col is None or score_col is None:
        raise SplitError(f"{where}: header {header} needs a path column ({', '.join(PATH_COLUMNS)})"
                         f" and a score column ({', '.join(SCORE_COLUMNS)})")
    return path_col, score_col, split_col


def _relative_name(raw: str, root: str) -> str | None:
    """`raw` as a '/'-separated name relative to `root` (None for an absolute path outside it)."""
    if os.path.isabs(raw):
        rel = os.path.relpath(os.path.normpath(raw), root)
        if rel == ".." or rel.startswith(".." + os.sep):
            return None
        raw = rel.replace(os.sep, "/")
    return normalize_name(raw)  # drops "./" and doubled slashes; keeps ".." for the check


def read_csv(path: Path, images_root: Path, score_range
             ) -> tuple[list[tuple[str, float]], list[str] | None]:
    """Rows as [(name, score)] plus their split values (None without a split column)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AmnetError(f"{path}: CSV not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmnetError(f"{path}: cannot read as UTF-8 text ({e})") from None
    checker = RootChecker(images_root)
    root = checker.root
    reader = csv.reader(text.splitlines())
    cols: tuple[int, int, int | None] | None = None
    items: list[tuple[str, float]] = []
    parts: list[str] = []
    seen: dict[str, int] = {}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any(field.strip() for field in row):
            continue
        if cols is None:
            if len(row) >= 2 and not _is_number(row[1].strip()):
                cols = _columns(row, where)
                continue
            cols = (0, 1, 2 if len(row) >= 3 else None)
        path_col, score_col, split_col = cols
        if len(row) <= max(c for c in cols if c is not None):
            raise SplitError(f"{where}: expected {1 + max(c for c in cols if c is not None)} "
                             f"fields, got {len(row)}: {','.join(row)!r}")
        raw, token = row[path_col].strip(), row[score_col].strip()
        name = _relative_name(raw, root) if raw else ""
        if name is None:
            raise SplitError(f"{where}: absolute path {raw!r} is outside the images root {root}")
        try:
            score = float(token)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise SplitError(f"{where}: score {token!r} is not a finite number")
        if score_range is not None and not (score_range[0] <= score <= score_range[1]):
            raise SplitError(f"{where}: score {score:g} is outside the declared range "
                             f"[{score_range[0]:g}, {score_range[1]:g}] (set score_range)")
        problem = check_name(name) or checker.problem(name)
        if problem is not None:
            raise SplitError(f"{where}: {problem}")
        if name in seen:
            raise SplitError(f"{where}: duplicate image {name!r} (first on line {seen[name]})")
        seen[name] = reader.line_num
        if split_col is not None:
            value = row[split_col].strip().lower()
            if value not in SPLIT_VALUES:
                raise SplitError(f"{where}: split {row[split_col]!r} is not train, val or test")
            parts.append(SPLIT_VALUES[value])
        items.append((name, score))
    if not items:
        raise SplitError(f"{path}: no rows (expected 'path,score' lines)")
    return items, (parts if cols is not None and cols[2] is not None else None)


def convert(stage: Path, *, path: str | Path, splits: int | Sequence[int] | None = None,
            fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
            images_root: str | Path | None = None,
            score_range: tuple[float, float] | None = (0.0, 1.0),
            link: str = "symlink") -> dict[str, Any]:
    """Splits from the CSV at `path`; splits: None = 3 random ones (1 with a split column)."""
    path = Path(path)
    root = Path(images_root) if images_root is not None else path.parent
    items, parts = read_csv(path, root, score_range)
    if parts is not None:
        ks = build.parse_splits(splits, default=1)
        if ks != [1]:
            raise AmnetError(f"{path} has a split column, which fixes one split; set splits to 1 "
                             f"(not {splits!r}) or drop the column for random splits")
        grouped = {p: [it for it, q in zip(items, parts) if q == p] for p in ("train", "val", "test")}
        build.write_parts(stage, 1, grouped["train"], grouped["val"], grouped["test"])
        how = "split column"
    else:
        ks = build.parse_splits(splits, default=3)
        for k in ks:
            build.write_parts(stage, k, *build.random_parts(items, fractions, build.rng_for(seed, k)))
        how = "random: numpy.random.default_rng([seed, k]) shuffles rows by fractions"
    source = build.link_images(stage, root, link,
                               names=None if link == "symlink" else [n for n, _ in items])
    return {"source": str(Path(os.path.realpath(path))), "source_sha256": file_sha256(path),
            "images_source": str(source), "splits": ks, "seed": int(seed), "assignment": how,
            "options": {"fractions": [float(f) for f in fractions], "link": link}}
