"""Finding images (a folder or a list file) and decoding them robustly to RGB.

Decoding follows the original code (PIL, `.convert("RGB")`) and adds what real collections need:
EXIF orientation is applied; 16-bit and 32-bit grayscale are scaled to 8 bits instead of being
clipped to white; CMYK, palette, LA/RGBA (alpha dropped, as the original did) become RGB.
Anything PIL cannot decode -- truncated, zero-byte, not an image, or over PIL's decompression-bomb
limit (`PIL.Image.MAX_IMAGE_PIXELS` x 2, ~179 megapixels) -- raises `ImageError` naming the file,
and so does a path that is no regular file (a FIFO, socket or device named `x.jpg`: refused
before anything reads from it, so it can never block) or one that cannot be read (permissions).

A file with several frames (animated GIF, PNG or WebP, multi-page TIFF) gives its first frame,
as PIL's `convert("RGB")` in the original did; callers that pass `notes` learn which files those
were (extract and predict report them).

Folder listing rules (`list_image_folder`, the same for `amnet-cache extract` and `amnet predict`):
see its docstring and the README's stage-one section.
"""
from __future__ import annotations

import os
import stat
import warnings
from collections import deque
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from amnet.core.errors import ImageError, SplitError
from amnet.data.listfiles import RootChecker, file_kind, read_name_list
from amnet.data.views import random_resized_crop_params, view_generator, view_pre_size

# The suffixes a folder listing takes (any case). A fixed list, not "whatever this PIL reads":
# the listing decides a cache's names, so it must not change with the PIL build. Still images
# only, plus formats whose first frame is the picture (GIF, APNG, WebP, TIFF).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".webp", ".gif",
                  ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")
# formats that may hold several frames, and what to call such a file in a note
_MULTI_FRAME = {"GIF": "an animated GIF", "PNG": "an animated PNG", "WEBP": "an animated WebP",
                "TIFF": "a multi-page TIFF"}


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading; ImageError unless it is a regular file (after
    symlinks). The type is checked before opening and again on the open descriptor, which is
    opened non-blocking: a FIFO swapped in between cannot block either."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path}: {file_kind(mode)}, not an image file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageError(f"{path}: {file_kind(mode)}, not an image file")
        return os.fdopen(fd, "rb")  # O_NONBLOCK changes nothing for a regular file
    except BaseException:
        os.close(fd)
        raise


def open_image_rgb(path: str | Path, notes: list[str] | None = None) -> Image.Image:
    """Decode `path` fully into an 8-bit RGB PIL image (EXIF-transposed). Raises ImageError.

    A multi-frame file gives its first frame; `notes` (when given) then gets `"<path> (an
    animated GIF)"` (or PNG, WebP; "a multi-page TIFF")."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # the 1x..2x MAX_IMAGE_PIXELS band only warns; PIL raises above it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_regular(path) as fh, Image.open(fh) as img:
                if (notes is not None and img.format in _MULTI_FRAME
                        and getattr(img, "is_animated", False)):   # before load(): it seeks
                    notes.append(f"{path} ({_MULTI_FRAME[img.format]})")
                img.load()  # decode now so truncation surfaces here, not later
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else -1
        what = "empty file (0 bytes)" if size == 0 else "not an image PIL can identify"
        raise ImageError(f"{path}: {what}") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except PermissionError:
        raise ImageError(f"{path}: cannot read (permission denied)") from None
    except (OSError, ValueError, SyntaxError) as e:
        reason = str(e) or type(e).__name__
        raise ImageError(f"{path}: cannot decode ({reason})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy() if img.readonly else img
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grayscale: PIL's convert would clip at 255 (mostly white); scale instead
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        else:
            top = 65535.0 if img.mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
        a = np.clip(np.nan_to_num(a) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning; alpha is then dropped like RGBA's
    return img.convert("RGB")


def load_resized_uint8(path: str | Path, size: int):
    """`path` -> uint8 tensor `[3, size, size]`: the test transform's squash-resize (PIL bilinear,
    antialiased), without ToTensor/Normalize (done in bulk on the device)."""
    import torch
    img = open_image_rgb(path).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


# ---- cached augmentation views (the recipe itself is amnet.data.views: no PIL there) ------------

def load_views_uint8(path: str | Path, size: int, name: str, views: int, view_seed: int = 0,
                     notes: list[str] | None = None):
    """`path` -> uint8 `[1 + views, 3, size, size]`: row 0 the plain view (`load_resized_uint8`),
    rows 1..views seeded random resized crops of the `view_pre_size` squash-resize (the
    original's train transform without its random flip). Raises ImageError. `notes`: as for
    `open_image_rgb` (a multi-frame file)."""
    import torch
    img = open_image_rgb(path, notes)
    out = [img.resize((size, size), Image.BILINEAR)]
    if views > 0:
        pre = view_pre_size(size)
        big = img.resize((pre, pre), Image.BILINEAR)
        for j in range(1, views + 1):
            top, left, h, w = random_resized_crop_params(pre, pre, view_generator(view_seed, name, j))
            out.append(big.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR))
    a = np.stack([np.asarray(im) for im in out])                # [V, size, size, 3]
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


# ---- listing ---------------------------------------------------------------------------------

# formats PIL only identifies (stubs) or that are no pictures: never worth a "left out" line
_NOT_PICTURES = {"MPEG", "IPTC"}


def unlisted_formats() -> dict[str, str]:
    """suffix -> PIL format of what this PIL decodes but the listing does not take (`.ico`,
    `.psd`, `.jp2`, ...): a folder listing reports such files as left out."""
    Image.init()
    out = {}
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if (ext in IMAGE_SUFFIXES or factory is None or fmt in _NOT_PICTURES
                or (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))):
            continue
        out[ext] = fmt
    return out


def _folder_key(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)  # follows symlinks: the real folder
    return st.st_dev, st.st_ino


def list_image_folder(folder: str | Path, skipped: list[tuple[str, str]] | None = None
                      ) -> list[tuple[str, Path]]:
    """All images under `folder`, as `(relative posix name, path)`, sorted by name.

    - Recursive. Links to folders are followed, but each real folder (by `(st_dev, st_ino)`)
      is listed once: a link to a folder listed already -- a loop such as `sub/up -> ..`, or a
      second link to one folder -- is not followed. Real folders are walked before any link,
      so a folder keeps its own name; among links to one folder, the first by name wins.
    - Files whose suffix (any case) is in `IMAGE_SUFFIXES`; hidden files and folders (a name
      starting with `.`) are skipped silently.
    - An entry with an image suffix that is no regular file (a FIFO, socket, device or dangling
      link) is listed: decoding refuses it without reading from it, so `amnet-cache extract`
      records the reason for that name (`--on-error skip`) or stops naming it (`fail`), and
      `amnet predict` writes it in its error column, as for any bad image.
    - `skipped`, when given, receives `(name, reason)` for what was left out that a user may
      have meant to include: files in other formats PIL reads (`unlisted_formats`), sub-folders
      that cannot be read, links to folders listed already.

    Raises SplitError when `folder` itself cannot be read.
    """
    folder = Path(folder)
    other = unlisted_formats() if skipped is not None else {}

    def leave_out(name: str, reason: str) -> None:
        if skipped is not None:
            skipped.append((name, reason))

    try:
        listed = {_folder_key(folder): ""}       # real folder -> the name it is listed under
    except OSError as e:
        raise SplitError(f"{folder}: cannot read this folder ({e.strerror})") from None
    real: deque[tuple[str, Path]] = deque([("", folder)])
    links: deque[tuple[str, Path]] = deque()
    items = []
    while real or links:
        if real:
            rel, path = real.popleft()
        else:
            rel, path = links.popleft()
            try:
                key = _folder_key(path)
            except OSError as e:   # vanished since it was seen
                leave_out(rel, f"cannot read this folder ({e.strerror})")
                continue
            if key in listed:
                first = f"'{listed[key]}'" if listed[key] else "the top folder"
                leave_out(rel, f"a link to {first}, listed already; not followed")
                continue
            listed[key] = rel
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if not rel:
                raise SplitError(f"{folder}: cannot read this folder ({e.strerror})") from None
            leave_out(rel, f"cannot read this folder ({e.strerror})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()       # follows links; False for a dangling one
            except OSError:
                is_dir = False
            if is_dir and entry.is_symlink():
                links.append((name, Path(entry.path)))
                continue
            if is_dir:
                try:
                    key = _folder_key(entry.path)
                except OSError as e:   # vanished since it was listed
                    leave_out(name, f"cannot read this folder ({e.strerror})")
                    continue
                if key in listed:      # a bind mount of a folder listed already
                    leave_out(name, f"the same folder as '{listed[key] or '.'}', listed already")
                    continue
                listed[key] = name
                real.append((name, Path(entry.path)))
                continue
            suffix = os.path.splitext(entry.name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                items.append((name, Path(entry.path)))
            elif suffix in other:
                leave_out(name, f"{other[suffix]}: not a format the listing takes; convert "
                                "it to PNG or JPEG to include it")
    items.sort(key=lambda t: t[0])
    return items


def left_out_line(where: str | Path, skipped: list[tuple[str, str]], shown: int = 3) -> str:
    """One line naming what a folder listing left out (`list_image_folder(..., skipped)`)."""
    parts = [f"{name} ({reason})" for name, reason in skipped[:shown]]
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    n = len(skipped)
    return f"{where}: left out {n} entr{'y' if n == 1 else 'ies'}: {'; '.join(parts)}{more}"


def read_image_list(list_file: str | Path, images_root: str | Path | None = None
                    ) -> list[tuple[str, Path]]:
    """A list file (`name score` or `name` per line) -> `(name, path)` in file order, with names
    normalised and resolved against `images_root` (default: the list file's folder). Raises
    SplitError naming the list file and line for names escaping the root or naming no regular
    file."""
    list_file = Path(list_file)
    root = Path(images_root) if images_root is not None else list_file.parent
    # checks format, '..', absolute names, duplicates, and that each name is a file under root
    entries = read_name_list(list_file, images_root=RootChecker(root))
    return [(name, root / name) for name, _ in entries]


def collect_images(images: str | Path, images_root: str | Path | None = None,
                   skipped: list[tuple[str, str]] | None = None) -> list[tuple[str, Path]]:
    """IMAGES argument of `amnet-cache extract`: a folder (listed recursively by
    `list_image_folder`, which fills `skipped`) or a list file."""
    images = Path(images)
    if os.path.isdir(images):
        if images_root is not None:
            raise SplitError(f"--images-root applies to a list file; {images} is a folder")
        items = list_image_folder(images, skipped)
        if not items:
            raise SplitError(f"{images}: no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) "
                             "in this folder")
        return items
    if not os.path.exists(images):
        raise SplitError(f"{images}: no such folder or list file")
    return read_image_list(images, images_root)
