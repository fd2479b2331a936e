"""Scoring many inputs with a Predictor: what to score (image files, folders, list files ->
`InputItem`s) and the batch loops, over images (`predict_items`: decoded in DataLoader workers by
amnet.extract.decode_workers, as extraction does) or over a feature cache by name (`predict_cached`).
Both yield one `ItemResult` per item in input order; a failed item carries its reason in `error`.

A score is never NaN: cached features holding NaN/Inf are found per loaded chunk (vectorised,
before the head runs) and an input whose score comes out non-finite anyway (weights, or backbone
features from an image) is a failed item with the reason -- or, with on_error "fail", the error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from amnet.core.errors import AmnetError, CacheError, ImageError
from amnet.core.progress import progress_bar
from amnet.data.listfiles import read_name_list
from amnet.extract.backbone import normalize_uint8
from amnet.cache.schema import finite_rows
from amnet.extract.decode_workers import ImageRows, collate_rows
from amnet.extract.image_files import IMAGE_SUFFIXES, list_image_folder, load_resized_uint8
from amnet.predict.predictor import Prediction, Predictor

LIST_EXTS = {".txt", ".lst", ".list"}


@dataclass
class InputItem:
    """One thing to score: `name` (CSV/figure name, cache key), `path` (image file or None), `gt`."""
    name: str
    path: Path | None
    gt: float | None = None


@dataclass
class ItemResult:
    item: InputItem
    error: str = ""
    score: float | None = None
    note: str = ""                               # e.g. a multi-frame file: its first frame used
    step_scores: np.ndarray | None = None        # [T]
    per_checkpoint: np.ndarray | None = None     # [K]
    attention: np.ndarray | None = None          # [T, g, g]
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 [S, S, 3], for figures


# ---- inputs --------------------------------------------------------------------------------------

def _read_list(path: Path) -> list[tuple[str, float | None]]:
    # a name listed twice is scored twice (harmless here, unlike in a cache)
    return read_name_list(path, unique=False)


def list_root(list_path: Path, images_root: Path | None = None) -> Path:
    """Where a list file's names live: `images_root`, else data/<ds>/images for a data/<ds>/splits
    file (the canonical layout), else the list file's folder."""
    if images_root is not None:
        return Path(images_root)
    parent = list_path.parent
    if parent.name == "splits" and (parent.parent / "images").is_dir():
        return parent.parent / "images"
    return parent


def collect_inputs(args: Iterable[str | Path], images_root: Path | None = None,
                   skipped: list[tuple[str, str]] | None = None) -> list[InputItem]:
    """Expand image files, folders (recursive, sorted) and list files into items. `skipped`
    gets what the folder listings left out (`amnet.extract.image_files.list_image_folder`), names prefixed
    with their folder."""
    items: list[InputItem] = []
    for a in args:
        p = Path(a)
        # os.path, not Path.is_dir: it raises on a path in an unreadable folder (a traceback)
        if os.path.isdir(p):
            # same walk as `amnet-cache extract` (same suffixes and rules, sorted)
            left: list[tuple[str, str]] = []
            items += [InputItem(name, f) for name, f in list_image_folder(p, left)]
            if skipped is not None:
                skipped += [((p / name).as_posix(), why) for name, why in left]
        elif p.suffix.lower() in LIST_EXTS and os.path.isfile(p):
            root = list_root(p, images_root)
            # names are not checked for existence here: a missing image becomes an error row
            items += [InputItem(name, root / name, gt) for name, gt in _read_list(p)]
        elif os.path.exists(p) or p.suffix.lower() in IMAGE_SUFFIXES:
            items.append(InputItem(p.name, p))  # a missing/bad image becomes an error row
        else:
            raise AmnetError(f"{p}: no such image, folder or list file")
    return items


# ---- batch loops ---------------------------------------------------------------------------------

NONFINITE_SCORE = "non-finite score (NaN/Inf): the head's weights or the features hold NaN/Inf"


def _fill(results: list[ItemResult], pred: Prediction, on_error: str = "skip") -> None:
    """Put the predictions into `results`; a non-finite score makes a failed item (on_error
    "skip") or an AmnetError ("fail")."""
    finite = np.isfinite(pred.step_scores).all(axis=1) & np.isfinite(pred.score)
    for j, r in enumerate(results):
        if not finite[j]:
            if on_error == "fail":
                raise AmnetError(f"{r.item.path or r.item.name}: {NONFINITE_SCORE}")
            r.error = NONFINITE_SCORE
            continue
        r.score = float(pred.score[j])
        r.step_scores = pred.step_scores[j]
        r.per_checkpoint = pred.per_checkpoint[j]
        r.attention = pred.attention[j]


def predict_items(predictor: Predictor, items: list[InputItem], *, batch_size: int = 32,
                  workers: int = 0, on_error: str = "skip", keep_images: bool = False,
                  progress: bool = True) -> Iterator[ItemResult]:
    """Score image items in input order, one result per item (failed ones carry `error`).
    on_error "fail" raises ImageError at the first bad image. keep_images: also return each
    image squashed to the model input size (for figures)."""
    # the uint8 image the model sees is also what the figures show
    data = ImageRows([it.path for it in items], [it.name for it in items], range(len(items)),
                     predictor.image_size, any_error=True)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_rows)
    with progress_bar(len(items), "predict", enabled=progress) as bar:
        for batch in loader:
            if batch.failed and on_error == "fail":
                raise ImageError(batch.failed[0][1])
            results = {i: ItemResult(items[i], error=why) for i, why in batch.failed}
            notes = dict(batch.notes)
            ok = [ItemResult(items[i], note=notes.get(i, "")) for i in batch.rows]
            if ok:
                x = batch.images[:, 0]                                   # uint8 [b, 3, S, S]
                if keep_images:
                    for r, img in zip(ok, x):
                        r.image = img.permute(1, 2, 0).numpy()
                x = normalize_uint8(x.to(predictor.device, non_blocking=True),
                                    predictor.provenance.mean, predictor.provenance.std)
                _fill(ok, predictor.predict_images(x), on_error)
                results.update(zip(batch.rows, ok))
            bar.update(len(results))
            yield from (results[i] for i in sorted(results))


def _cache_reason(cache: Any, name: str) -> str:
    why = getattr(cache, "failed", {}).get(name)
    return f"not in the feature cache ({why})" if why else "not in the feature cache"


def predict_cached(predictor: Predictor, cache: Any, items: list[InputItem], *,
                   batch_size: int = 256, on_error: str = "skip", keep_images: bool = False,
                   progress: bool = True) -> Iterator[ItemResult]:
    """Score items by name from a FeatureCache (no backbone, no images needed). keep_images loads
    `item.path` when it exists, for figures."""
    missing = set(cache.missing([it.name for it in items]))
    if missing and on_error == "fail":
        raise CacheError(f"{cache.path if hasattr(cache, 'path') else 'cache'}: "
                         f"{len(missing)} names not in the cache, e.g. {sorted(missing)[0]!r}")
    with progress_bar(len(items), "predict (cache)", enabled=progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            results = [ItemResult(it, error=_cache_reason(cache, it.name) if it.name in missing
                                  else "") for it in chunk]
            ok = [r for r in results if not r.error]
            if ok:
                feats = cache.load([r.item.name for r in ok])
                finite = finite_rows(feats)
                if not finite.all():
                    bad = [r for r, good in zip(ok, finite) if not good]
                    where = getattr(cache, "path", "the feature cache")
                    if on_error == "fail":
                        raise CacheError(f"{where}: NaN/Inf features for {len(bad)} inputs, e.g. "
                                         f"{bad[0].item.name!r}; `amnet-cache verify {where}` "
                                         "lists them all")
                    for r in bad:
                        r.error = f"NaN/Inf features in the feature cache {where}"
                    ok = [r for r, good in zip(ok, finite) if good]
                    feats = feats[torch.from_numpy(finite)]
            if ok:
                _fill(ok, predictor.predict_features(feats), on_error)
                if keep_images:
                    for r in ok:
                        if not r.error and r.item.path is not None and Path(r.item.path).is_file():
                            try:  # the figure is a bonus here: no image, no figure
                                x = load_resized_uint8(r.item.path, predictor.image_size)
                                r.image = x.permute(1, 2, 0).numpy()
                            except AmnetError:
                                pass
            bar.update(len(chunk))
            yield from results
