"""The embedded default data set: synthetic images scored by one target among look-alikes.

Generated offline and deterministically: image i is drawn from
`numpy.random.default_rng([seed, i])` alone, so the same options give the same bytes (same
numpy/Pillow), and the first n images do not depend on `n_images`.

The task is built so that *where* the model looks matters (issue 22, item 7): the score is set
by one small target, and 2..`max_distractors` look-alike disks that do not count are spread over
the rest of the frame. Pooling the whole map mixes their gratings into the target's; attention
can pick the target out. `python bench/demo.py --time` measures both: the paper's no-attention
ablation against the committed run, and the share of the attention on the target (README).

Each `image_size` x `image_size` RGB image (sizes below are for 224; they scale with the size):
- background: a smooth colour field (4 x 4 random colours, bicubic-upsampled) plus a grey
  mid-frequency texture (S/8 x S/8 noise, bilinear), and 0..3 smooth Gaussian blobs (sigma
  9-27 px, brighter or darker);
- the target: a RED disk filled with a high-frequency square-wave grating (period 4-7 px, random
  orientation and phase), its centre uniformly random in the frame's central box (side 0.4 x
  image_size; the disk stays inside the frame), as a photographer centres the subject;
- 2..`max_distractors` GREY disks with the same kind of grating, size and contrast drawn from the
  target's ranges, centred outside the central box, none overlapping another disk;
- grey pixel noise N(0, 0.015); JPEG quality 90 (or PNG).

Score rule (in [0, 1]; mean about 0.70, sd about 0.10, LaMem-like), from the target only:

    size     s ~ U(0, 1)    radius   = (0.05 + 0.11 s) * image_size   (11 .. 36 px at 224)
    contrast c ~ U(0, 1)    grating amplitude = 0.12 + 0.33 c         (on a [0, 1] intensity scale)
    score = clip(0.45 + 0.5 * (0.5 s + 0.5 c) + N(0, noise), 0, 1),   noise = 0.03 by default

`objects.csv` beside the splits records the target of every image (centre, radius, size,
contrast, clean and noisy score, the number of distractors) for checking attention maps.

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

RULE = ("score = clip(0.45 + 0.5*(0.5*s + 0.5*c) + N(0, noise), 0, 1); s: the red target's size, "
        "c: its contrast; the grey look-alike disks do not count")
RADIUS = (0.05, 0.16)       # disk radii, as fractions of image_size (target and distractors)
AMPLITUDE = (0.12, 0.45)    # grating amplitudes (target and distractors)
CENTRAL_BOX = 0.4           # the target's centre lies in the central box of this side (fraction)
TARGET_TINT = np.array([0.82, 0.34, 0.34], np.float32)   # red
DISTRACTOR_TINT = np.array([0.5, 0.5, 0.5], np.float32)  # grey


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


def _striped_disk(canvas: np.ndarray, rng: np.random.Generator, cx: float, cy: float,
                  radius: float, amplitude: float, tint: np.ndarray, scale: float) -> None:
    """Paint a disk filled with a square-wave grating (random period, orientation, phase) in
    place: an anti-aliased edge, rich in high frequencies."""
    size = canvas.shape[0]
    period = rng.uniform(4, 7) * scale
    theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    x0, x1 = max(0, int(cx - radius) - 1), min(size, int(cx + radius) + 2)
    y0, y1 = max(0, int(cy - radius) - 1), min(size, int(cy + radius) + 2)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    mask = np.clip(radius + 0.5 - np.hypot(xs - cx, ys - cy), 0, 1)[..., None]
    wave = np.sign(np.cos(2 * np.pi * (xs * np.cos(theta) + ys * np.sin(theta)) / period + phase))
    disk = tint + amplitude * wave[..., None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - mask) + disk * mask


def _central_box(size: int) -> tuple[float, float]:
    """The central box's first and last pixel coordinate (the same on both axes)."""
    return (0.5 - CENTRAL_BOX / 2) * size, (0.5 + CENTRAL_BOX / 2) * size


def _distractor_places(rng: np.random.Generator, size: int, count: int,
                       target: tuple[float, float, float]) -> list[tuple[float, float, float]]:
    """Up to `count` (cx, cy, radius) outside the central box, apart from the target and each
    other (a place that 50 draws cannot find is skipped)."""
    lo, hi = _central_box(size)
    gap = 4 * size / 224
    placed, out = [target], []
    for _ in range(count):
        for _try in range(50):
            r = rng.uniform(*RADIUS) * size
            x, y = rng.uniform(r, size - r, 2)
            if lo <= x <= hi and lo <= y <= hi:
                continue
            if all(np.hypot(x - px, y - py) > r + pr + gap for px, py, pr in placed):
                placed.append((x, y, r))
                out.append((x, y, r))
                break
    return out


def render(rng: np.random.Generator, size: int = 224, max_distractors: int = 3,
           noise: float = 0.03) -> tuple[np.ndarray, dict[str, float]]:
    """One image `[size, size, 3]` uint8 and its target/score record (see the module docstring)."""
    scale = size / 224
    colour = _upsample((rng.random((4, 4, 3)) * 255).astype(np.uint8), size, Image.BICUBIC)
    texture = _upsample((rng.random((max(2, size // 8),) * 2) * 255).astype(np.uint8), size,
                        Image.BILINEAR)
    # In-place float32 arithmetic throughout: a 224 x 224 image takes a few ms.
    img = colour
    img *= 0.45
    img += (0.25 * texture + (0.2 - 0.125))[..., None]
    for _ in range(int(rng.integers(0, 4))):
        sigma = rng.uniform(9, 27) * scale
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32) * rng.choice([-0.3, 0.3])
        _blob(img, rng.uniform(0, size), rng.uniform(0, size), sigma, tint)

    s, c = rng.random(), rng.random()
    radius = (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * s) * size
    amplitude = AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * c
    lo, hi = _central_box(size)
    cx, cy = rng.uniform(max(radius, lo), min(size - radius, hi), 2)
    count = int(rng.integers(min(2, max_distractors), max_distractors + 1))
    distractors = _distractor_places(rng, size, count, (cx, cy, radius))
    for x, y, r in distractors:
        _striped_disk(img, rng, x, y, r, rng.uniform(*AMPLITUDE), DISTRACTOR_TINT, scale)
    _striped_disk(img, rng, cx, cy, radius, amplitude, TARGET_TINT, scale)

    grain = rng.standard_normal(img.shape[:2], dtype=np.float32)  # grey grain: 3x fewer draws
    grain *= 0.015 * 255
    img *= 255
    img += grain[..., None]
    img += 0.5  # round to nearest on the cast below
    np.clip(img, 0, 255, out=img)
    pixels = img.astype(np.uint8)
    clean = 0.45 + 0.5 * (0.5 * s + 0.5 * c)
    score = float(np.clip(clean + rng.normal(0, noise), 0, 1))
    return pixels, {"cx": float(cx), "cy": float(cy), "radius": float(radius),
                    "size": float(s), "contrast": float(c), "clean_score": float(clean),
                    "score": score, "distractors": len(distractors)}


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
        fields = ["cx", "cy", "radius", "size", "contrast", "clean_score", "score",
                  "distractors"]
        writer.writerow(["name", *fields])
        for i in range(n_images):
            pixels, record = render(build.rng_for(seed, i), image_size, int(max_distractors),
                                    float(noise))
            name = f"{i:0{width}d}.{fmt}"
            Image.fromarray(pixels).save(images / name, **save_args)
            writer.writerow([name, *(f"{record[k]:.6f}" for k in fields[:-1]),
                             record["distractors"]])
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
