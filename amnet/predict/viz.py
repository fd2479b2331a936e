"""Attention-map figures (paper Fig. 2) and a contact sheet of scored images.

Pure numpy / PIL / matplotlib (Agg backend, no display needed); no torch. Inputs are the arrays
`amnet.predict` returns: per-step attention maps `[T, grid, grid]` (each summing to 1) and per-step
scores `[T]` (summing to the final score).

The overlay follows the official code's `--att-maps-out` (spec section 6): the image squashed to
the model input size, each step's map min-max scaled on its own, bicubic-upsampled to the image,
coloured with the jet colour map and blended 50/50 with the image. Added here (the original's
maps had neither): a colour bar for that scale, and a caption saying how the step scores make the
score (`STEP_SUM_CAPTION`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; never try to open a window (CI, ssh, workers)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

# What the step panels' numbers are (amnet.head.model.AMNet.step_scores): the head's score is the MEAN
# of its T per-step regressions, de-normalised (the original code averages; the paper says the
# steps are "added" -- the same up to a factor T the regressor absorbs, spec 2.8). The display
# score of step t is out_t / (T * target_scale) + target_mean / T, so the T step scores add up
# to the score exactly (up to float rounding; the 3-decimal labels may be 0.001 off). Several
# checkpoints averaged (amnet.predict.predictor) keep this: the mean of sums is the sum of means.
STEP_SUM_CAPTION = (
    "The step scores add up to the score: {terms} = {score:.3f} (3 decimals).\n"
    "The score is the mean of the head's {steps} step outputs, de-normalised, as in the original "
    "code; step t shows its share, out_t / ({steps} \u00b7 target_scale) + target_mean / {steps}.")


def _as_rgb_array(image: Image.Image | np.ndarray, size: int | None = None) -> np.ndarray:
    """A uint8 `[H, W, 3]` array; squashed to `size x size` (aspect not kept, like the model) if given."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            # floats in [0, 1] (e.g. a de-normalised tensor); anything else is clipped
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        image = Image.fromarray(arr[..., :3])
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def normalize_map(att: np.ndarray) -> np.ndarray:
    """Min-max scale one map `[g, g]` to [0, 1]; a constant map (no-attention ablation) becomes 0."""
    att = np.asarray(att, dtype=np.float32)
    lo, hi = float(att.min()), float(att.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(att)
    return (att - lo) / (hi - lo)


def overlay(image: Image.Image | np.ndarray, att: np.ndarray, *, cmap: str = "jet",
            blend: float = 0.5) -> np.ndarray:
    """Blend one attention map over an image.

    image: PIL image or uint8 `[H, W, 3]` (shown at its own size; squash it first for Fig. 2).
    att: `[g, g]` attention map (any scale; min-max scaled here).
    Returns uint8 `[H, W, 3]` = (1 - blend) * image + blend * colour-mapped map.
    """
    img = _as_rgb_array(image)
    h, w = img.shape[:2]
    norm = normalize_map(att)
    # bicubic upsampling on a float image ("F" mode) then clip: bicubic overshoots a little, as in
    # the original (which clipped through uint8)
    up = np.asarray(Image.fromarray(norm, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)
    up = np.clip(up, 0.0, 1.0)
    heat = matplotlib.colormaps[cmap](up)[..., :3] * 255.0
    out = (1.0 - blend) * img.astype(np.float32) + blend * heat
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def attention_figure(image: Image.Image | np.ndarray, attention: np.ndarray,
                     step_scores: Sequence[float], score: float, *, gt: float | None = None,
                     title: str | None = None, size: int | None = None,
                     cmap: str = "jet") -> Figure:
    """The paper's Fig. 2 for one image: the image, then one panel per LSTM step.

    image: the input image (PIL or uint8 `[H, W, 3]`); squashed to `size x size` (the model input
    size; default: the image's larger side) as the model saw it.
    attention: `[T, g, g]` maps; step_scores: `[T]`; score: the final score (sum of step scores);
    gt: ground truth shown in the title when known.
    Returns a figure whose first T + 1 axes are the panels, then one colour bar (`fig.axes[-1]`);
    its caption (`fig.supxlabel`) writes the step scores out as a sum equal to the score
    (`step_sum_caption`). Close it with `plt.close(fig)`.
    """
    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim != 3:
        raise ValueError(f"attention must be [T, g, g], got shape {attention.shape}")
    steps = attention.shape[0]
    if len(step_scores) != steps:
        raise ValueError(f"{len(step_scores)} step scores for {steps} attention maps")
    if size is None:
        size = max(_as_rgb_array(image).shape[:2])
    img = _as_rgb_array(image, size)

    fig, axes = plt.subplots(1, steps + 1, figsize=(2.3 * (steps + 1) + 0.6, 3.6), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    panels = [(img, "image")] + [
        (overlay(img, attention[t], cmap=cmap), f"step {t + 1}: {float(step_scores[t]):.3f}")
        for t in range(steps)
    ]
    for ax, (arr, label) in zip(axes, panels):
        ax.imshow(arr)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(label, fontsize=9)
    # one bar for all step panels: each map is min-max scaled on its own (normalize_map), so the
    # bar's ends are "that map's lowest / highest weight", not shared numbers
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=cmap), ax=list(axes[1:]),
                       fraction=0.05, pad=0.02, ticks=[0.0, 1.0])
    bar.ax.set_yticklabels(["min", "max"], fontsize=7)
    bar.set_label("attention (each map: its min to max)", fontsize=7)
    head = f"score {float(score):.3f}"
    if gt is not None and not (isinstance(gt, float) and math.isnan(gt)):
        head += f"   (gt {float(gt):.3f})"
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=10)
    fig.supxlabel(step_sum_caption(step_scores, score), fontsize=7, color="0.25")
    return fig


def step_sum_caption(step_scores: Sequence[float], score: float) -> str:
    """The figure's caption: the step scores `[T]` written out as a sum equal to `score`."""
    terms = " + ".join(f"{float(v):.3f}" for v in step_scores)
    return STEP_SUM_CAPTION.format(terms=terms, score=float(score), steps=len(step_scores))


def save_attention_figure(path: str | Path, image: Image.Image | np.ndarray, attention: np.ndarray,
                          step_scores: Sequence[float], score: float, *, gt: float | None = None,
                          title: str | None = None, size: int | None = None,
                          dpi: int = 100) -> Path:
    """Draw `attention_figure` and write it as a PNG at `path` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = attention_figure(image, attention, step_scores, score, gt=gt, title=title, size=size)
    try:
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


@dataclass
class SheetItem:
    """One cell of a contact sheet. `image` is a PIL image, a uint8 array, or a path for `loader`."""
    image: object
    score: float
    label: str = ""
    gt: float | None = None


def contact_sheet(items: Sequence[SheetItem], path: str | Path, *, columns: int = 8,
                  thumb: int = 160, per_page: int = 400,
                  loader: Callable[[object], Image.Image] | None = None,
                  title: str | None = None) -> list[Path]:
    """Draw all items sorted from most to least memorable, with rank, score (and gt) per cell.

    Items whose image is a path are opened with `loader` one at a time (so a large folder is never
    held in memory at full size). More than `per_page` items go to further pages named
    `<stem>_2<suffix>`, `<stem>_3<suffix>` ... next to `path` (a single Agg canvas is limited to
    2^16 pixels a side). Returns the paths written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ranked = sorted(items, key=lambda it: -float(it.score))
    pages = [ranked[i:i + per_page] for i in range(0, len(ranked), per_page)] or [[]]
    written = []
    for p, page in enumerate(pages):
        out = path if p == 0 else path.with_name(f"{path.stem}_{p + 1}{path.suffix}")
        _draw_sheet_page(page, out, start=p * per_page, columns=columns, thumb=thumb,
                         loader=loader, title=title)
        written.append(out)
    return written


def _draw_sheet_page(items: Sequence[SheetItem], out: Path, *, start: int, columns: int,
                     thumb: int, loader, title: str | None) -> None:
    n = max(len(items), 1)
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    cell_w, cell_h = 1.7, 2.0  # inches: square thumbnail plus two lines of text
    fig, axes = plt.subplots(rows, cols, figsize=(cell_w * cols, cell_h * rows + 0.4),
                             squeeze=False, layout="constrained")
    try:
        for k, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(items):
                ax.set_axis_off()
                continue
            it = items[k]
            img = it.image
            if not isinstance(img, (Image.Image, np.ndarray)):
                if loader is None:
                    raise ValueError("contact_sheet: item image is a path but no loader was given")
                img = loader(img)
            ax.imshow(_as_rgb_array(img, thumb))
            text = f"#{start + k + 1}  {float(it.score):.3f}"
            if it.gt is not None and not (isinstance(it.gt, float) and math.isnan(it.gt)):
                text += f" (gt {float(it.gt):.3f})"
            label = it.label if len(it.label) <= 24 else "…" + it.label[-23:]
            ax.set_title(f"{text}\n{label}", fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
