"""Finding images (a folder or a list file) and decoding them robustly to RGB.

Decoding follows the original code (PIL, `.convert("RGB")`) and adds what real collections need:
EXIF orientation is applied; 16-bit and 32-bit grayscale are scaled to 8 bits instead of being
clipped to white; CMYK, palette, LA/RGBA (alpha dropped, as the original did) become RGB.
Anything PIL cannot decode -- truncated, zero-byte, not an image, or over PIL's decompression-bomb
limit (`PIL.Image.MAX_IMAGE_PIXELS` x 2, ~179 megapixels) -- raises `ImageError` naming the file.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from amnet.errors import ImageError, SplitError
from amnet.listfiles import RootChecker, read_name_list
# the view recipe, re-exported: part of this module's API since views were added
from amnet.views import (VIEW_PRE_RESIZE, VIEW_RATIO, VIEW_SCALE, random_resized_crop_params,  # noqa: F401
                         view_generator, view_pre_size, view_transform_description)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def open_image_rgb(path: str | Path) -> Image.Image:
    """Decode `path` fully into an 8-bit RGB PIL image (EXIF-transposed). Raises ImageError."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # the 1x..2x MAX_IMAGE_PIXELS band only warns; PIL raises above it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now so truncation surfaces here, not later
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else -1
        what = "empty file (0 bytes)" if size == 0 else "not an image PIL can identify"
        raise ImageError(f"{path}: {what}") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
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


# ---- cached augmentation views (the recipe itself is amnet.views: no PIL there) ------------

def load_views_uint8(path: str | Path, size: int, name: str, views: int, view_seed: int = 0):
    """`path` -> uint8 `[1 + views, 3, size, size]`: row 0 the plain view (`load_resized_uint8`),
    rows 1..views seeded random resized crops of the `view_pre_size` squash-resize (the
    original's train transform without its random flip). Raises ImageError."""
    import torch
    img = open_image_rgb(path)
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

def list_image_folder(folder: str | Path) -> list[tuple[str, Path]]:
    """All images under `folder` (recursive; jpg/jpeg/png/bmp/webp, any case), as
    `(relative posix name, path)`, sorted by name. Hidden files and folders are skipped."""
    folder = Path(folder)
    items = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith(".") or not fn.lower().endswith(IMAGE_SUFFIXES):
                continue
            p = Path(dirpath) / fn
            items.append((p.relative_to(folder).as_posix(), p))
    items.sort(key=lambda t: t[0])
    return items


def read_image_list(list_file: str | Path, images_root: str | Path | None = None
                    ) -> list[tuple[str, Path]]:
    """A list file (`name score` or `name` per line) -> `(name, path)` in file order, with names
    resolved against `images_root` (default: the list file's folder). Raises SplitError naming
    the list file and the name for names escaping the root or naming no file."""
    list_file = Path(list_file)
    root = Path(images_root) if images_root is not None else list_file.parent
    entries = read_name_list(list_file)  # checks format, '..', absolute names, duplicates
    checker = RootChecker(root)
    out = []
    for name, _ in entries:
        problem = checker.problem(name)
        if problem is not None:
            raise SplitError(f"{list_file}: {problem}")
        out.append((name, root / name))
    return out


def collect_images(images: str | Path, images_root: str | Path | None = None
                   ) -> list[tuple[str, Path]]:
    """IMAGES argument of `amnet-cache extract`: a folder (listed recursively) or a list file."""
    images = Path(images)
    if images.is_dir():
        if images_root is not None:
            raise SplitError(f"--images-root applies to a list file; {images} is a folder")
        items = list_image_folder(images)
        if not items:
            raise SplitError(f"{images}: no images (jpg/jpeg/png/bmp/webp) in this folder")
        return items
    if not images.exists():
        raise SplitError(f"{images}: no such folder or list file")
    return read_image_list(images, images_root)
