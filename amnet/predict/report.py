"""`amnet predict`'s output: the CSV (one row per input, in input order), one attention figure
per image and a contact sheet, from the results of amnet.predict.scoring's batch loops.
"""
from __future__ import annotations

import csv
import io
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from PIL import Image

from amnet.core.atomic import atomic_open, remove_stale_temps
from amnet.core.diskspace import disk_full_guard
from amnet.core.errors import AmnetError
from amnet.predict.head_provenance import check_cache_provenance
from amnet.predict.predictor import Predictor
from amnet.predict.scoring import InputItem, ItemResult, predict_cached, predict_items


def figure_path(out_dir: Path, name: str, used: set[str]) -> Path:
    """`<dir>/<name without extension>_att.png`, sub-folders kept; `_2`, `_3`... on a clash."""
    rel = Path(name.lstrip("/")).with_suffix("")
    rel = Path(*[part for part in rel.parts if part not in ("..", ".")]) if rel.parts else Path("x")
    cand, k = f"{rel.as_posix()}_att.png", 1
    while cand in used:
        k += 1
        cand = f"{rel.as_posix()}_att_{k}.png"
    used.add(cand)
    return out_dir / cand


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def csv_header(predictor: Predictor, has_gt: bool) -> list[str]:
    """The CSV's columns: path, score, [gt], step_1..step_T, score_<checkpoint>..., error."""
    return (["path", "score"] + (["gt"] if has_gt else [])
            + [f"step_{t + 1}" for t in range(predictor.steps)]
            + [f"score_{lab}" for lab in predictor.checkpoint_labels] + ["error"])


def csv_row(predictor: Predictor, r: ItemResult, shown: str, has_gt: bool) -> list[str]:
    """One result as a CSV row under `csv_header` (6 decimals; a failed item: its reason in the
    error column and no numbers), `shown` in the path column."""
    gt = [_fmt(r.item.gt)] if has_gt else []
    if r.error:
        return [shown, ""] + gt + [""] * (predictor.steps + len(predictor.checkpoints)) + [r.error]
    return ([shown, _fmt(r.score)] + gt + [_fmt(float(v)) for v in r.step_scores]
            + [_fmt(float(v)) for v in r.per_checkpoint] + [""])


def write_predictions(predictor: Predictor, items: list[InputItem], out: str | Path | None, *,
                      cache: str | Path | None = None, batch_size: int = 32, workers: int = 0,
                      on_error: str = "skip", attention_maps: str | Path | None = None,
                      grid: str | Path | None = None, progress: bool = True,
                      title_suffix: str = "") -> dict:
    """Score `items` (from images, or from `cache` by name, after checking that the cache is the
    kind the checkpoint was trained on) and write the CSV `out` (path, score[, gt],
    step_1..step_T, score_<checkpoint>..., error), one row per item in input order (out=None:
    no CSV; the DVC stage `evaluate` draws its figures this way); optionally one attention
    figure per image into `attention_maps` (titled with the name, then `title_suffix`) and a
    contact sheet at `grid`.
    Returns counts {"n", "scored", "failed", "figures", "grid", "first_frame" (multi-frame
    files scored on their first frame), "warnings" (lines, amnet.core.caveats), "first_error" (the
    first failed input and its reason)}."""
    from amnet.predict import viz

    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out, "partial")      # CSVs of killed runs (dead processes only)
    has_gt = any(it.gt is not None for it in items)
    fig_dir = Path(attention_maps) if attention_maps else None
    keep = fig_dir is not None
    fc = None
    if cache is not None:
        from amnet.cache.reader import FeatureCache
        fc = FeatureCache(cache)
        check_cache_provenance(dict(fc.attrs), predictor.provenance, Path(cache),
                               predictor.checkpoints[0])
        caveat = predictor.precision_caveat(dict(fc.attrs), Path(cache))
        results = predict_cached(predictor, fc, items, batch_size=max(batch_size, 1),
                                 on_error=on_error, keep_images=keep, progress=progress)
    else:
        results = predict_items(predictor, items, batch_size=batch_size, workers=workers,
                                on_error=on_error, keep_images=keep, progress=progress)
        caveat = predictor.precision_caveat()
    counts = {"n": len(items), "scored": 0, "failed": 0, "figures": 0, "grid": [],
              "first_frame": 0, "warnings": [caveat] if caveat else [], "first_error": ""}
    sheet: list = []
    used: set[str] = set()
    try:  # a run stopped by --on-error fail (or a full disk) leaves no CSV (amnet.core.atomic)
        with _csv_file(out) as fh:
            w = csv.writer(fh if fh is not None else io.StringIO())  # out=None: no CSV kept
            w.writerow(csv_header(predictor, has_gt))
            for r in results:
                it = r.item
                shown = str(it.path) if it.path is not None and fc is None else it.name
                w.writerow(csv_row(predictor, r, shown, has_gt))
                if r.error:
                    counts["failed"] += 1
                    counts["first_error"] = counts["first_error"] or _named(shown, it, r.error)
                    continue
                counts["scored"] += 1
                counts["first_frame"] += bool(r.note)
                if fig_dir is not None and r.image is not None:
                    viz.save_attention_figure(figure_path(fig_dir, it.name, used), r.image,
                                              r.attention, r.step_scores, r.score, gt=it.gt,
                                              title=it.name + title_suffix)
                    counts["figures"] += 1
                if grid is not None and it.path is not None and (fc is None or r.image is not None
                                                                 or Path(it.path).is_file()):
                    sheet.append(viz.SheetItem(it.path, r.score, it.name, it.gt))
    finally:
        if fc is not None:
            fc.close()
    if grid is not None:
        def _thumb(path):
            try:
                return predictor.load_image(path)
            except AmnetError:
                return Image.new("RGB", (8, 8))  # vanished since scoring: a black cell
        counts["grid"] = [str(p) for p in viz.contact_sheet(sheet, grid, loader=_thumb)]
    return counts


@contextmanager
def _csv_file(out: Path | None) -> Iterator[TextIO | None]:
    """`out` opened for the CSV, written whole or not at all (amnet.core.atomic); None: none."""
    if out is None:
        yield None
        return
    with disk_full_guard(out, kept=f"no CSV was written to {out}"), \
            atomic_open(out, "w", tag="partial", newline="", encoding="utf-8") as fh:
        yield fh


def _named(shown: str, item, error: str) -> str:
    """`<input>: <reason>`, the input named once: an image's error (ImageError) already starts
    with its path."""
    if any(error.startswith(f"{name}: ") for name in (shown, str(item.path), item.name)):
        return error
    return f"{shown}: {error}"


def summary_line(counts: dict, out: Path) -> str:
    """One line for the end of `amnet predict`."""
    msg = f"scored {counts['scored']} of {counts['n']} inputs -> {out}"
    if counts["failed"]:
        msg += f"; {counts['failed']} failed (see the error column)"
    if counts.get("first_frame"):
        msg += f"; {counts['first_frame']} multi-frame images scored on their first frame"
    if counts["figures"]:
        msg += f"; {counts['figures']} attention figures"
    if counts["grid"]:
        msg += f"; contact sheet {', '.join(counts['grid'])}"
    return msg


def nothing_scored(counts: dict, out: Path) -> str:
    """The line `amnet predict` exits with (non-zero) when not one input got a score."""
    if not counts["n"]:
        return "no input was scored: IMAGES named no image (an empty folder or list?)"
    return (f"no input was scored: all {counts['n']} failed, e.g. {counts['first_error']} "
            f"(every reason is in {out})")
