"""The embedded default data set: synthetic images whose score depends on one localized object.

Generated offline and deterministically: image i is drawn from
`numpy.random.default_rng([seed, i])` alone, so the same options give the same bytes (same
numpy/Pillow), and the first n images do not depend on `n_images`.

Each `image_size` x `image_size` RGB image (sizes below are for 224; they scale with the size):
- background: a smooth colour field (4 x 4 random colours, bicubic-upsampled) plus a grey
  mid-frequency texture (S/8 x S/8 noise, bilinear), and 0..`max_distractors` smooth Gaussian
  blobs (sigma 9-27 px, brighter or darker) that do NOT affect the score;
- the object: a disk at a uniformly random position (fully inside the image) filled with a
  high-frequency square-wave grating (period 4-7 px, random orientation and phase, random tint);
- grey pixel noise N(0, 0.015); JPEG quality 90 (or PNG).

Score rule (in [0, 1]; mean about 0.70, sd about 0.11, LaMem-like):

    size     s ~ U(0, 1)    radius   = (0.04 + 0.18 s) * image_size   (9 .. 49 px at 224)
    contrast c ~ U(0, 1)    grating amplitude = 0.12 + 0.33 c         (on a [0, 1] intensity scale)
    score = clip(0.45 + 0.5 * (0.6 s + 0.4 c) + N(0, noise), 0, 1),   noise = 0.03 by default

so the score is a smooth (linear) function of the object's size and contrast plus small label
noise, the object's place is random and the distractors look different (smooth, no grating):
a model must find the object to score the image. `objects.csv` beside the splits records every
object (centre, radius, contrast, clean and noisy score) for checking attention maps.

Splits k = 1..`splits`: `numpy.random.default_rng([seed, 1_000_000 + k])` shuffles the images into
train/val/test by `fractions` (default 0.7/0.15/0.15); test sets of different splits overlap,
as in LaMem.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from amnet.core.errors import AmnetError
from amnet.data import build

RULE = "score = clip(0.45 + 0.5*(0.6*s + 0.4*c) + N(0, noise), 0, 1); s: object size, c: contrast"


def _upsample(small: np.ndarray, size: int, resample: int) -> np.ndarray:
    """uint8 [h, w(, 3)] -> float32 [size, size(, 3)] in [0, 1]."""
    image = Image.fromarray(small).resize((size, size), resample)
    return np.asarray(image, dtype=np.float32) * (1 / 255)


def _blob(canvas: np.ndarray, cx: float, cy: float, sigma: float, colour: np.ndarray) -> None:
    """Add a Gaussian blob in place, computed on its 3-sigma window only (fast)."""
    size = canvas.shape[0]
    x0, x1 = max(0, int(cx - 3 * sigma)), min(size, int(cx + 3 * sigma) + 1)
    y0, y1 = max(0, int(cy - 3 * sigma)), min(size, int(cy + 3 * sigma) + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma * sigma))
    canvas[y0:y1, x0:x1] += g[..., None] * colour


def render(rng: np.random.Generator, size: int = 224, max_distractors: int = 3,
           noise: float = 0.03) -> tuple[np.ndarray, dict[str, float]]:
    """One image `[size, size, 3]` uint8 and its object/score record (see the module docstring)."""
    scale = size / 224
    colour = _upsample((rng.random((4, 4, 3)) * 255).astype(np.uint8), size, Image.BICUBIC)
    texture = _upsample((rng.random((max(2, size // 8),) * 2) * 255).astype(np.uint8), size,
                        Image.BILINEAR)
    # In-place float32 arithmetic throughout: a 224 x 224 image takes ~3 ms, not ~5.
    img = colour
    img *= 0.45
    img += (0.25 * texture + (0.2 - 0.125))[..., None]

    for _ in range(int(rng.integers(0, max_distractors + 1))):
        sigma = rng.uniform(9, 27) * scale
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32) * rng.choice([-0.3, 0.3])
        _blob(img, rng.uniform(0, size), rng.uniform(0, size), sigma, tint)

    s, c = rng.random(), rng.random()
    radius = (0.04 + 0.18 * s) * size
    amplitude = 0.12 + 0.33 * c
    cx, cy = rng.uniform(radius, size - radius, 2)
    period = rng.uniform(4, 7) * scale
    theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    tint = rng.uniform(0.45, 0.75, 3).astype(np.float32)
    x0, x1 = int(cx - radius) - 1, int(cx + radius) + 2
    y0, y1 = int(cy - radius) - 1, int(cy + radius) + 2
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size, x1), min(size, y1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    # Anti-aliased disk mask; a square-wave grating so the object is rich in high frequencies.
    mask = np.clip(radius + 0.5 - np.hypot(xs - cx, ys - cy), 0, 1)[..., None]
    wave = np.sign(np.cos(2 * np.pi * (xs * np.cos(theta) + ys * np.sin(theta)) / period + phase))
    obj = tint + amplitude * wave[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - mask) + obj * mask

    grain = rng.standard_normal(img.shape[:2], dtype=np.float32)  # grey grain: 3x fewer draws
    grain *= 0.015 * 255
    img *= 255
    img += grain[..., None]
    img += 0.5  # round to nearest on the cast below
    np.clip(img, 0, 255, out=img)
    pixels = img.astype(np.uint8)
    clean = 0.45 + 0.5 * (0.6 * s + 0.4 * c)
    score = float(np.clip(clean + rng.normal(0, noise), 0, 1))
    return pixels, {"cx": float(cx), "cy": float(cy), "radius": float(radius),
                    "size": float(s), "contrast": float(c), "clean_score": float(clean),
                    "score": score}


def convert(stage: Path, *, n_images: int = 2000, image_size: int = 224, splits: Any = 3,
            fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, noise: float = 0.03,
            max_distractors: int = 3, image_format: str = "jpg", quality: int = 90,
            score_range: tuple[float, float] | None = (0.0, 1.0)) -> dict[str, Any]:
    """Generate the demo into `stage/images` (+ objects.csv) and write its splits."""
    n_images, image_size = int(n_images), int(image_size)
    if n_images < 10:
        raise AmnetError(f"n_images must be at least 10, not {n_images}")
    if image_size < 32:
        raise AmnetError(f"image_size must be at least 32, not {image_size}")
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("jpg", "png"):
        raise AmnetError(f"image_format must be jpg or png, not {image_format!r}")
    save_args = {"format": "JPEG", "quality": int(quality)} if fmt == "jpg" else {"format": "PNG"}
    images = stage / "images"
    images.mkdir()
    width = max(5, len(str(n_images - 1)))
    items: list[tuple[str, float]] = []
    with open(stage / "objects.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        fields = ["cx", "cy", "radius", "size", "contrast", "clean_score", "score"]
        writer.writerow(["name", *fields])
        for i in range(n_images):
            pixels, record = render(build.rng_for(seed, i), image_size, int(max_distractors),
                                    float(noise))
            name = f"{i:0{width}d}.{fmt}"
            Image.fromarray(pixels).save(images / name, **save_args)
            writer.writerow([name, *(f"{record[k]:.6f}" for k in fields)])
            items.append((name, round(record["score"], 6)))
    ks = build.parse_splits(splits, default=3)
    for k in ks:
        build.write_parts(stage, k, *build.random_parts(items, fractions,
                                                        build.rng_for(seed, 1_000_000 + k)))
    scores = np.array([s for _, s in items])
    return {"source": "generated (amnet.data.demo)", "rule": RULE, "splits": ks,
            "seed": int(seed), "n_images": n_images,
            "score_stats": {"mean": round(float(scores.mean()), 6),
                            "sd": round(float(scores.std()), 6),
                            "min": round(float(scores.min()), 6),
                            "max": round(float(scores.max()), 6)},
            "options": {"n_images": n_images, "image_size": image_size,
                        "fractions": [float(f) for f in fractions], "noise": float(noise),
                        "max_distractors": int(max_distractors), "image_format": fmt,
                        "quality": int(quality)}}
