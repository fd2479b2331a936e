"""Split and list files: LaMem's `<name> <score>` format and plain image lists, with the checks
every reader goes through.

A split file holds one `<image name> <score>` pair per line, space-separated, no header, e.g.
`00051110.jpg 0.675000`. Names are paths relative to the data set's `images/` folder, written
with `/`. Blank lines are ignored; anything else that is not exactly two fields is an error.
A list file (extract / predict inputs) holds `<image name>` or `<image name> <score>` per line.

Names are normalised as they are read (`normalize_name`): `./0001.jpg`, `0001.jpg` and
`.//0001.jpg` are one name, `0001.jpg`, so a split file, a list file and the cache agree on it
(and a list naming one image both ways is a duplicate). `..` is never resolved: a name with a
`..` component is refused, even one that would stay inside the root.

Every problem a user can fix raises `SplitError` with one line: `file:line: what is wrong`.
`read_split` rejects: malformed lines, non-finite scores, scores outside `score_range`, duplicate
names, names that escape the images root (`..`, absolute paths, symlinks resolving outside it),
missing images or ones that are no regular file (a FIFO, socket, device or folder; when
`images_root` is given) and files without any entry.

A data set's `images` may itself be a symlink to an external folder (`data/lamem/images ->
/datasets/lamem/images`): the root is resolved first, so only links *inside* it that point
elsewhere are rejected, never the root link that `prepare` makes.

In `amnet.data`, below both stages (setup.cfg's import contracts): used by stage one (`amnet.extract.image_files`), stage two
(`amnet.head.run`), `amnet.predict` and `amnet.data`; imports only `amnet.core.errors` and
`amnet.core.atomic`. `split_path` names a split file of the canonical layout,
`<dataset>/splits/{train,val,test}_<k>.txt`.
"""
from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from amnet.core.atomic import atomic_write_text
from amnet.core.errors import SplitError

PARTS = ("train", "val", "test")


def split_path(dataset_dir: str | Path, part: str, k: int) -> Path:
    """`<dataset_dir>/splits/<part>_<k>.txt` (part in train/val/test, k counted from 1)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    return Path(dataset_dir) / "splits" / f"{part}_{int(k)}.txt"


def normalize_name(name: str) -> str:
    """The one spelling of an image name: posix, no `.` components, no doubled or trailing `/`
    (`./a//b/./c.jpg` -> `a/b/c.jpg`). `..` components are kept, for `check_name` to refuse:
    resolving them lexically would be wrong where a folder on the way is a symlink."""
    if not name or ("//" not in name and "/." not in name and name[0] != "."
                    and name[-1] != "/"):
        return name  # already normal (the usual case: ~6 us saved per name, 58k LaMem names)
    return str(PurePosixPath(name))


def file_kind(mode: int) -> str:
    """What an `os.stat` mode is, for messages: "a FIFO", "a socket", "a folder", ..."""
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return what
    return "not a regular file"


def check_name(name: str) -> str | None:
    """Why `name` cannot be an image name relative to a root, or None when it can.

    Rejects absolute paths (POSIX or Windows drive/UNC), `..` components, backslashes (ambiguous
    across systems), whitespace (the split format is space-separated) and the root itself (`.`).
    """
    if not name:
        return "empty image name"
    if name == ".":
        return "image name '.' names the images folder itself, not an image"
    if any(c.isspace() for c in name):
        return f"image name {name!r} contains whitespace (the split format is space-separated)"
    if "\\" in name:
        return f"image name {name!r} contains a backslash; use '/' as the separator"
    if name.startswith("/") or re.match(r"[A-Za-z]:/", name):
        return f"image name {name!r} is an absolute path; names must be relative to the images root"
    if ".." in PurePosixPath(name).parts:
        return (f"image name {name!r} contains '..': names must stay inside the images root "
                "and are never resolved through '..'")
    return None


class RootChecker:
    """Checks that names are files under one images root and do not leave it through symlinks.

    Pass one as `images_root=` to several `read_split` calls over the same root (LaMem: 15
    files naming the same 58,741 images) so each name is resolved once (~20 us per name).
    """

    def __init__(self, images_root: str | Path):
        root = Path(images_root)
        if not root.is_dir():
            raise SplitError(f"{root}: images folder not found (or not a folder)")
        # Resolve the root itself first: a data set's `images` is often our own symlink.
        self.root = os.path.realpath(root)
        self.prefix = self.root.rstrip(os.sep) + os.sep
        self._ok: set[str] = set()

    def problem(self, name: str) -> str | None:
        if name in self._ok:
            return None
        real = os.path.realpath(os.path.join(self.root, name))
        if not real.startswith(self.prefix):
            return f"image {name!r} is a symlink that resolves outside the images root {self.root}"
        try:
            mode = os.stat(real).st_mode
        except OSError:
            return f"image {name!r} not found under {self.root}"
        if not stat.S_ISREG(mode):
            return f"image {name!r} under {self.root} is {file_kind(mode)}, not an image file"
        self._ok.add(name)
        return None


def _parse_score(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a BOM from Windows editors
            return f.read().splitlines()
    except FileNotFoundError:
        raise SplitError(f"{path}: split file not found") from None
    except UnicodeDecodeError as e:
        raise SplitError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except OSError as e:
        raise SplitError(f"{path}: cannot read ({e.strerror})") from None


def _records(path: Path) -> Iterator[tuple[int, str, list[str], str]]:
    """(line number, "file:line", whitespace-split fields, the line) of each non-blank line."""
    for lineno, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if fields:
            yield lineno, f"{path}:{lineno}", fields, line


def where_listed(path: str | Path, name: str) -> str:
    """`file:line` of the first line of a split or list file naming `name` (as written or
    normalised), or the file alone: for errors found after reading it (an image the cache
    lacks)."""
    path = Path(path)
    try:
        for _, where, fields, _ in _records(path):
            if normalize_name(fields[0]) == name:
                return where
    except SplitError:
        pass
    return str(path)


def _checker(images_root: str | Path | RootChecker | None) -> RootChecker | None:
    if images_root is None or isinstance(images_root, RootChecker):
        return images_root
    return RootChecker(images_root)


def _checked_name(raw: str, where: str, checker: RootChecker | None) -> str:
    """`raw` normalised, or SplitError("file:line: why") when it cannot name an image."""
    name = normalize_name(raw)
    problem = check_name(name)
    if problem is None and checker is not None:
        problem = checker.problem(name)
    if problem is not None:
        raise SplitError(f"{where}: {problem}")
    return name


def _duplicate(name: str, raw: str, where: str, first: int) -> SplitError:
    spelt = f" (written {raw!r})" if raw != name else ""
    return SplitError(f"{where}: duplicate image name {name!r}{spelt} (first on line {first})")


def read_split(path: str | Path, *, score_range: tuple[float, float] | None = (0.0, 1.0),
               images_root: str | Path | RootChecker | None = None) -> list[tuple[str, float]]:
    """Read a LaMem-format split file into `[(name, score), ...]` in file order, names
    normalised (`normalize_name`).

    score_range: inclusive (low, high) every score must lie in; None skips the range check.
    images_root: when given, each name must be a regular file under it (after resolving
    symlinks). Raises SplitError("file:line: reason") on the first problem found.
    """
    path = Path(path)
    checker = _checker(images_root)
    items: list[tuple[str, float]] = []
    seen: dict[str, int] = {}
    for lineno, where, fields, line in _records(path):
        if len(fields) != 2:
            raise SplitError(f"{where}: expected '<image name> <score>', got {line.strip()!r}")
        raw, token = fields
        score = _parse_score(token)
        if score is None:
            raise SplitError(f"{where}: score {token!r} is not a finite number")
        if score_range is not None and not (score_range[0] <= score <= score_range[1]):
            raise SplitError(f"{where}: score {score:g} is outside the declared range "
                             f"[{score_range[0]:g}, {score_range[1]:g}]")
        name = _checked_name(raw, where, checker)
        if name in seen:
            raise _duplicate(name, raw, where, seen[name])
        seen[name] = lineno
        items.append((name, score))
    if not items:
        raise SplitError(f"{path}: empty split (no '<image name> <score>' lines)")
    return items


def read_name_list(path: str | Path, *, unique: bool = True,
                   images_root: str | Path | RootChecker | None = None
                   ) -> list[tuple[str, float | None]]:
    """Read a list of images, `name score` or just `name` per line (for extract/predict lists).

    Blank lines are ignored. With `unique`, a repeated name is an error (a cache holds each
    name once; `./a.jpg` and `a.jpg` are one name). Names are normalised and checked like split
    names (no `..`, not absolute, no whitespace; with `images_root`, a regular file under it).
    """
    path = Path(path)
    checker = _checker(images_root)
    items: list[tuple[str, float | None]] = []
    seen: dict[str, int] = {}
    for lineno, where, fields, line in _records(path):
        if len(fields) > 2:
            raise SplitError(f"{where}: expected '<image name>' or '<image name> <score>', "
                             f"got {line.strip()!r}")
        raw = fields[0]
        score = None
        if len(fields) == 2:
            score = _parse_score(fields[1])
            if score is None:
                raise SplitError(f"{where}: score {fields[1]!r} is not a finite number")
        name = _checked_name(raw, where, checker)
        if unique and name in seen:
            raise _duplicate(name, raw, where, seen[name])
        seen.setdefault(name, lineno)
        items.append((name, score))
    if not items:
        raise SplitError(f"{path}: empty list (no image names)")
    return items


def write_split(path: str | Path, items: Iterable[tuple[str, float]]) -> None:
    """Write `"%s %.6f"` lines atomically (temp file + rename), creating parent folders.

    Raises SplitError for names the format cannot hold or non-finite scores, before writing.
    """
    path = Path(path)
    lines = []
    for name, score in items:
        name = normalize_name(name)
        problem = check_name(name)
        if problem is not None:
            raise SplitError(f"{path}: cannot write: {problem}")
        score = float(score)
        if not math.isfinite(score):
            raise SplitError(f"{path}: cannot write: score of {name!r} is {score}")
        lines.append(f"{name} {score:.6f}\n")
    atomic_write_text(path, "".join(lines), newline="\n")
