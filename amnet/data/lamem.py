"""LaMem (Khosla et al. 2015): `images/` + `splits/{train,val,test}_{1..5}.txt`, LaMem format.

Source root: `<root>/images/` and `<root>/splits/` (or one or two folders below `<root>`, as the
archive unpacks). When they are absent:
  - an archive already at `<root>/lamem.tar.gz` (put there by hand) is unpacked;
  - else, with `download=True`, the archive is fetched from the official URL with resume (HTTP
    Range; a `.part` file survives interruptions and a re-run continues it), its size checked
    against the server's (and `expected_size` / `sha256` when given), then unpacked with
    tarfile's "data" filter (no absolute paths, links out or devices);
  - else, or offline: one AmnetError saying where to put the files by hand.

`convert_lamem_format` is shared with `sun` (same format; missing val files are carved from
train with a recorded seed, so model selection never looks at test).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from amnet.core.errors import AmnetError
from amnet.core.progress import progress_bar
from amnet.core.provenance import file_sha256
from amnet.data import build
from amnet.data.listfiles import RootChecker, read_split

LAMEM_URL = "http://memorability.csail.mit.edu/lamem.tar.gz"
DOWNLOAD_PAGE = "http://memorability.csail.mit.edu/download.html"
ARCHIVE_NAME = "lamem.tar.gz"
DOWNLOAD_RECORD = "lamem.download.json"  # url, size, sha256 of the archive we fetched
_CHUNK = 1 << 20


def find_layout(root: Path, depth: int = 2) -> Path | None:
    """The folder at or below `root` (up to `depth` levels) holding images/ and splits/train_1.txt."""
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            if (folder / "images").is_dir() and (folder / "splits" / "train_1.txt").is_file():
                return folder
            if folder.is_dir():
                nxt += sorted(p for p in folder.iterdir()
                              if p.is_dir() and not p.name.startswith(".") and p.name != "images")
        level = nxt
    return None


def _hand_message(url: str, root: Path) -> str:
    return (f"download {ARCHIVE_NAME} by hand from {DOWNLOAD_PAGE} ({url}) and either put it at "
            f"{root / ARCHIVE_NAME} or unpack it so that {root}/images/ and "
            f"{root}/splits/train_1.txt exist, then run prepare again")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from 'bytes start-end/total' (total may be '*')."""
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    if not m:
        m2 = re.match(r"bytes\s+\*/(\d+)", value or "")
        return (None, int(m2.group(1))) if m2 else (None, None)
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def _attempt(url: str, part: Path, timeout: float) -> int | None:
    """One request continuing `part`; returns the full size if the server said it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "amnet-prepare"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left past offset: complete, or part is too long
            _, total = _content_range(e.headers.get("Content-Range"))
            if total == offset:
                return total
            part.unlink()  # our own partial file is inconsistent with the server's: restart
            return _attempt(url, part, timeout)
        raise
    with resp:
        total = None
        if offset and resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                raise http.client.HTTPException(f"server resumed at byte {start}, not {offset}")
            mode = "ab"
        else:  # 200: the server ignored Range (or nothing to resume); start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            offset, mode = 0, "wb"
        bar = progress_bar(total, ARCHIVE_NAME, initial=offset, unit="B", unit_scale=True)
        try:
            with open(part, mode) as f:
                while block := resp.read(_CHUNK):
                    f.write(block)
                    bar.update(len(block))
        finally:
            bar.close()
    return total


def fetch(url: str, dest: str | Path, *, expected_size: int | None = None,
          sha256: str | None = None, timeout: float = 60.0, retries: int = 3) -> dict[str, Any]:
    """Download `url` to `dest`, resuming `dest.part`; check size (and sha256); return both.

    Raises AmnetError when unreachable, interrupted more than `retries` times (the .part file is
    kept: run again to resume), or when the size or checksum is wrong (the .part is removed).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        total = None
        for attempt in range(int(retries) + 1):
            try:
                total = _attempt(url, part, timeout)
            except urllib.error.HTTPError as e:
                raise AmnetError(f"cannot download {url}: HTTP {e.code} {e.reason}; "
                                 f"{_hand_message(url, dest.parent)}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                have = part.stat().st_size if part.exists() else 0
                if have == 0 or attempt == retries:
                    reason = getattr(e, "reason", None) or e
                    what = (f"download of {url} interrupted after {have} bytes (kept in {part}; "
                            "run again to resume)" if have else f"cannot download {url} ({reason})")
                    raise AmnetError(f"{what}; or {_hand_message(url, dest.parent)}") from None
                continue
            have = part.stat().st_size if part.exists() else 0
            if total is None or have == total:
                break
            if have > total:
                part.unlink()
                raise AmnetError(f"{part} is larger than the file on the server ({have} > {total}"
                                 " bytes); removed it, run again")
            if attempt == retries:
                raise AmnetError(f"download of {url} incomplete: {have} of {total} bytes (kept "
                                 f"in {part}; run again to resume)")
        os.replace(part, dest)
    size = dest.stat().st_size
    if expected_size is not None and size != int(expected_size):
        dest.unlink()
        raise AmnetError(f"{dest} has {size} bytes, expected {expected_size}: removed it; "
                         "run again, or check expected_size")
    digest = file_sha256(dest)
    if sha256 is not None and digest.lower() != sha256.lower():
        dest.unlink()
        raise AmnetError(f"{dest} has sha256 {digest}, expected {sha256}: removed it; run again")
    return {"url": url, "size": size, "sha256": digest}


def unpack(archive: Path, root: Path) -> None:
    """Unpack `archive` into `root` via a temporary folder (an interrupted unpack leaves no
    half-filled images/ that would look complete)."""
    tmp = root / ".unpack.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AmnetError(f"{archive}: cannot unpack ({e}); delete it and run again, or unpack "
                         f"it by hand into {root}") from None
    for entry in sorted(tmp.iterdir()):
        target = root / entry.name
        if target.exists() or target.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            raise AmnetError(f"{archive}: would overwrite {target}; move it away and run again")
        os.rename(entry, target)
    tmp.rmdir()


def locate(root: str | Path, *, download: bool = False, url: str = LAMEM_URL,
           expected_size: int | None = None, sha256: str | None = None,
           keep_archive: bool = False, timeout: float = 60.0, retries: int = 3
           ) -> tuple[Path, dict | None]:
    """Find (fetching and unpacking if allowed) the LaMem layout under `root`."""
    root = Path(root)
    record = root / DOWNLOAD_RECORD
    layout = find_layout(root)
    if layout is not None:
        return layout, (json.loads(record.read_text()) if record.is_file() else None)
    archive = root / ARCHIVE_NAME
    fetched = None
    if not archive.exists():
        if not download:
            raise AmnetError(f"LaMem not found under {root} (no images/ + splits/train_1.txt); "
                             f"set download: true to fetch it, or {_hand_message(url, root)}")
        fetched = fetch(url, archive, expected_size=expected_size, sha256=sha256,
                        timeout=timeout, retries=retries)
        # Kept beside the data so every later prepare.json records the same size and sha256.
        record.write_text(json.dumps(fetched, indent=2, sort_keys=True) + "\n")
    unpack(archive, root)
    layout = find_layout(root)
    if layout is None:
        raise AmnetError(f"{archive} unpacked into {root} but no images/ + splits/train_1.txt "
                         f"was found; {_hand_message(url, root)}")
    if not keep_archive:
        archive.unlink()  # 2.7 GB we no longer need: the unpacked layout is found next time
    return layout, fetched


def convert_lamem_format(stage: Path, layout: Path, *, splits, val_fraction: float, seed: int,
                         score_range, link: str) -> dict[str, Any]:
    """Copy (re-write) LaMem-format splits from `layout/splits`, carving val where it is absent."""
    split_dir = layout / "splits"
    available = sorted(int(m.group(1)) for p in split_dir.glob("train_*.txt")
                       if (m := re.fullmatch(r"train_(\d+)", p.stem))
                       and (split_dir / f"test_{m.group(1)}.txt").is_file())
    if not available:
        raise AmnetError(f"{split_dir}: no train_<k>.txt with a matching test_<k>.txt")
    ks = build.parse_splits(splits, available=available)
    missing = [k for k in ks if k not in available]
    if missing:
        raise AmnetError(f"{split_dir}: split(s) {missing} not found (train_<k>.txt and "
                         f"test_<k>.txt); available: {available}")
    checker = RootChecker(layout / "images")
    val_source: dict[str, str] = {}
    names: set[str] = set()
    for k in ks:
        read = lambda part: read_split(split_dir / f"{part}_{k}.txt", score_range=score_range,
                                       images_root=checker)  # noqa: E731
        train, test = read("train"), read("test")
        if (split_dir / f"val_{k}.txt").is_file():
            val = read("val")
            val_source[str(k)] = "file"
        else:
            # Never select models on test (AMNet did for SUN): hold out part of train instead.
            train, val = build.carve(train, build.check_fraction("val_fraction", val_fraction),
                                     build.rng_for(seed, k))
            val_source[str(k)] = "carved from train"
        build.write_parts(stage, k, train, val, test)
        names.update(n for part in (train, val, test) for n, _ in part)
    source = build.link_images(stage, layout / "images", link,
                               names=None if link == "symlink" else sorted(names))
    return {"source": str(Path(os.path.realpath(layout))), "images_source": str(source),
            "splits": ks, "seed": int(seed),
            "val": {"per_split": val_source, "fraction": float(val_fraction),
                    "rng": "numpy.random.default_rng([seed, k]).permutation"}}


def convert(stage: Path, *, root: str | Path, splits: int | Sequence[int] | None = None,
            download: bool = False, url: str = LAMEM_URL, expected_size: int | None = None,
            sha256: str | None = None, keep_archive: bool = False, timeout: float = 60.0,
            retries: int = 3, val_fraction: float = 0.1, seed: int = 0,
            score_range: tuple[float, float] | None = (0.0, 1.0),
            link: str = "symlink") -> dict[str, Any]:
    """LaMem from `root` (see the module docstring); splits: None = all found (1..5)."""
    layout, fetched = locate(root, download=download, url=url, expected_size=expected_size,
                             sha256=sha256, keep_archive=keep_archive, timeout=timeout,
                             retries=retries)
    info = convert_lamem_format(stage, layout, splits=splits, val_fraction=val_fraction,
                                seed=seed, score_range=score_range, link=link)
    info["options"] = {"link": link, "download": bool(download), "url": url}
    if fetched is not None:
        info["download"] = fetched
    return info
