"""Images -> memorability scores (+ attention maps), end to end: backbone + one or more heads.

The backbone comes from the checkpoints' provenance (weights id + sha256 of the trunk); every
checkpoint must name the same one, and weights the user passes must match it. Several checkpoints
(e.g. the 5 LaMem splits) are averaged: the score, the per-step scores and the attention maps are
means over checkpoints (each averaged map still sums to 1).

    p = Predictor.from_checkpoint(["models/1/head.pt", "models/2/head.pt"])
    r = p.predict("photo.jpg")        # r.score: float, r.step_scores: [T], r.attention: [T, g, g]
    r = p.predict(batch)              # batch [B, 3, S, S] preprocessed -> [B], [B, T], [B, T, g, g]

`predict_items` / `predict_cached` are the batch loops; `write_predictions` drives `amnet predict`
(CSV, attention figures, contact sheet).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from amnet.atomic import atomic_open
from amnet.errors import AmnetError, CacheError, ImageError, WeightsError
from amnet.progress import progress_bar
from amnet.provenance import BackboneRecord, as_record, check_compatible

LIST_EXTS = {".txt", ".lst", ".list"}


# ---- results -------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """Scores and attention. Batched inputs: score `[B]`, step_scores `[B, T]`, attention
    `[B, T, g, g]`, per_checkpoint `[B, K]`; a single image: float, `[T]`, `[T, g, g]`, `[K]`.
    All numpy float32 (score a Python float when single). Also readable as a dict (`r["score"]`).
    """
    score: Any
    step_scores: np.ndarray
    attention: np.ndarray
    per_checkpoint: np.ndarray

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["score", "step_scores", "attention", "per_checkpoint"]

    def _single(self) -> "Prediction":
        return Prediction(float(self.score[0]), self.step_scores[0], self.attention[0],
                          self.per_checkpoint[0])


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
    step_scores: np.ndarray | None = None        # [T]
    per_checkpoint: np.ndarray | None = None     # [K]
    attention: np.ndarray | None = None          # [T, g, g]
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 [S, S, 3], for figures


# ---- provenance ----------------------------------------------------------------------------------

def _provenance(meta: dict, path: Path) -> BackboneRecord:
    """The backbone a checkpoint's head expects (layer3 and 224 where older files omit them)."""
    b = meta.get("backbone")
    if not isinstance(b, dict) or "weights_id" not in b:
        raise WeightsError(f"{path}: checkpoint has no backbone provenance; re-save it with amnet")
    rec = BackboneRecord.from_dict(b)
    return replace(rec, layer=rec.layer or "layer3", image_size=rec.image_size or 224)


def _check_same_backbone(provs: list[BackboneRecord], paths: list[Path]) -> BackboneRecord:
    # weights_id may differ when the sha256 agrees: the same file: weights at two paths
    for prov, path in zip(provs[1:], paths[1:]):
        check_compatible(prov, provs[0], f"checkpoint {path}", f"checkpoint {paths[0]}",
                         error=WeightsError, hint="checkpoints averaged together must come from "
                         "one feature cache/backbone")
    return provs[0]


def check_cache_provenance(attrs: dict, prov: BackboneRecord | dict, cache_path: Path,
                           ckpt: Path) -> None:
    """Refuse a cache whose features were made with another backbone than the checkpoint's.
    `prov`: the checkpoint's BackboneRecord (or its `backbone` dict)."""
    check_compatible(BackboneRecord.from_attrs(attrs), as_record(prov),
                     f"feature cache {cache_path}", f"checkpoint {ckpt}", error=CacheError,
                     hint="score it with a head trained on this cache")


def _load_trunk(prov: BackboneRecord, weights: str | None, ckpt: Path, precision: str = "auto",
                device: torch.device | str = "cpu"):
    """Build the backbone the checkpoint was trained on; `weights` (user's) must be the same.
    `precision`: a trunk precision ("auto" resolved for `device`)."""
    from amnet.backbone import load_backbone

    wanted = prov.weights_id
    if weights is not None and weights != wanted and not weights.startswith("file:"):
        raise WeightsError(f"--weights {weights} does not match {ckpt}, trained on backbone weights "
                           f"{wanted}; drop --weights or pass those weights")
    source = weights or wanted
    try:
        trunk, spec = load_backbone(source, precision, device)
    except WeightsError as e:
        hint = (f"; pass --weights file:<local copy of {wanted[5:]}>" if weights is None
                and wanted.startswith("file:") else "")
        raise WeightsError(f"{e} (backbone of {ckpt}){hint}") from e
    # normalisation belongs to the weight source; it must be what the head was trained on
    check_compatible(BackboneRecord.from_spec(spec), prov, f"backbone weights {source}",
                     f"checkpoint {ckpt}", error=WeightsError,
                     hint="pass the weights the head was trained on")
    return trunk, spec


# ---- the predictor -------------------------------------------------------------------------------

class Predictor:
    """Backbone (optional: cached features need none) + one or more AMNet heads, in eval mode."""

    def __init__(self, heads: list[torch.nn.Module], provenance: BackboneRecord, checkpoints: list[Path],
                 device: torch.device, trunk: torch.nn.Module | None = None, spec: Any = None,
                 batch_size: int = 32, round_fp16: bool = False) -> None:
        self.heads = heads
        self.provenance = as_record(provenance)  # the backbone the heads expect
        self.checkpoints = checkpoints
        self.device = device
        self.trunk = trunk
        self.spec = spec
        self.batch_size = batch_size
        self.round_fp16 = round_fp16
        cfg = heads[0].config
        self.grid: int = int(cfg.grid)
        self.steps: int = int(cfg.steps_out)
        self.image_size: int = int(self.provenance.image_size)
        self._transform = None

    @classmethod
    def from_checkpoint(cls, path_or_paths: str | Path | Sequence[str | Path], device: str = "auto",
                        *, weights: str | None = None, backbone: bool = True,
                        batch_size: int = 32, precision: str = "auto",
                        match_cache: bool = False) -> "Predictor":
        """Load heads (all must share one backbone provenance) and, unless `backbone=False` (for
        scoring cached features), the backbone they were trained on. `weights`: optional weights
        id the user insists on; it must match the checkpoints' (for `file:` by sha256).
        `precision`: the trunk's numerics (amnet.device): "auto" (mixed where bf16 is native,
        else fp32), "mixed", "bf16" or "fp32" -- with "fp32" the whole route from image to score
        is fp32, no rounding anywhere. `match_cache`: reproduce the cached path instead: the
        trunk precision the checkpoint's cache was made with, and features rounded through
        float16 as the cache stores them (then image and cached scores agree)."""
        from amnet.device import resolve_device
        from amnet.checkpoint import load_checkpoint

        paths = [Path(path_or_paths)] if isinstance(path_or_paths, (str, Path)) else \
            [Path(p) for p in path_or_paths]
        if not paths:
            raise AmnetError("no checkpoint given")
        heads, provs = [], []
        for p in paths:
            if not p.is_file():
                raise WeightsError(f"{p}: checkpoint not found")
            model, meta = load_checkpoint(p, map_location="cpu")
            heads.append(model.eval())
            provs.append(_provenance(meta, p))
        prov = _check_same_backbone(provs, paths)
        for h, p in zip(heads[1:], paths[1:]):
            for key in ("grid", "lstm_steps", "in_channels"):
                if getattr(h.config, key) != getattr(heads[0].config, key):
                    raise WeightsError(f"{p}: head {key} {getattr(h.config, key)} differs from "
                                       f"{paths[0]}'s {getattr(heads[0].config, key)}")
        if heads[0].config.grid * 16 != prov.image_size:
            raise WeightsError(f"{paths[0]}: head grid {heads[0].config.grid} does not fit input "
                               f"size {prov.image_size} (layer3 output is size/16)")
        dev = resolve_device(device)
        trunk = spec = None
        if backbone:
            if match_cache:
                precision = prov.precision or "mixed"
            trunk, spec = _load_trunk(prov, weights, paths[0], precision, dev)
            trunk = trunk.to(dev).eval()
        elif weights is not None and weights != prov.weights_id:
            _load_trunk(prov, weights, paths[0])  # only to verify a file: by its sha256
        heads = [h.to(dev) for h in heads]
        return cls(heads, prov, paths, dev, trunk, spec, batch_size, round_fp16=match_cache)

    # -- preprocessing ---------------------------------------------------------------------------
    @property
    def transform(self):
        """PIL image -> `[3, S, S]` (squash-resize, ToTensor, the weights' normalisation)."""
        if self._transform is None:
            from amnet.backbone import image_transform
            self._transform = image_transform(self.image_size, self.provenance.mean,
                                              self.provenance.std)
        return self._transform

    def load_image(self, path: str | Path) -> Image.Image:
        from amnet.backbone import open_image_rgb
        return open_image_rgb(path)

    def _to_batch(self, x: Any) -> tuple[torch.Tensor, bool]:
        if isinstance(x, torch.Tensor):
            if x.ndim == 3:
                return x.unsqueeze(0), True
            if x.ndim == 4:
                return x, False
            raise ValueError(f"expected a tensor [B, 3, S, S] or [3, S, S], got {tuple(x.shape)}")
        if isinstance(x, np.ndarray):
            x = Image.fromarray(x)
        if isinstance(x, (str, Path)):
            x = self.load_image(x)
        if isinstance(x, Image.Image):
            return self.transform(x.convert("RGB")).unsqueeze(0), True
        if isinstance(x, (list, tuple)):
            return torch.cat([self._to_batch(v)[0] for v in x]), False
        raise TypeError(f"cannot predict on a {type(x).__name__}")

    # -- inference -------------------------------------------------------------------------------
    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 3, S, S]` -> layer3 features `[B, 1024, g, g]` float32.

        With `round_fp16` (from `match_cache`) rounded through float16 as the cache stores them,
        so that end-to-end scores match the cached path's; otherwise left as the trunk made them."""
        if self.trunk is None:
            raise AmnetError("this Predictor was built without a backbone (backbone=False)")
        from amnet.backbone import features
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected input {self.image_size}x{self.image_size} (the checkpoint's "
                             f"image_size), got {tuple(x.shape[-2:])}")
        f = features(self.trunk, x, self.device)
        return f.to(torch.float16).float() if self.round_fp16 else f

    @torch.inference_mode()
    def predict_features(self, f: torch.Tensor) -> Prediction:
        """Score layer3 features `[B, C, g, g]` (e.g. from a FeatureCache); always batched."""
        f = f.to(self.device, torch.float32)
        scores, steps, atts = [], [], []
        for head in self.heads:
            s, st, a = head.predict(f)
            scores.append(s.float())
            steps.append(st.float())
            atts.append(a.float())
        per_ck = torch.stack(scores, 1)                                      # [B, K]
        att = torch.stack(atts).mean(0)                                      # [B, T, L]
        att = att.reshape(att.shape[0], att.shape[1], self.grid, self.grid)  # l = y*g + x
        return Prediction(per_ck.mean(1).cpu().numpy(), torch.stack(steps).mean(0).cpu().numpy(),
                          att.cpu().numpy(), per_ck.cpu().numpy())

    def predict(self, x: Any) -> Prediction:
        """Score a PIL image, an image path, a HxWx3 uint8 array, a preprocessed tensor `[3, S, S]`
        (single result) or `[B, 3, S, S]`, or a list of images/paths (batched result)."""
        batch, single = self._to_batch(x)
        parts = [self.predict_features(self.features(batch[i:i + self.batch_size]))
                 for i in range(0, len(batch), self.batch_size)]
        out = Prediction(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                           ("score", "step_scores", "attention", "per_checkpoint")))
        return out._single() if single else out

    @property
    def checkpoint_labels(self) -> list[str]:
        """Per-checkpoint CSV labels: file stems if unique, else parent folder names, else 1..K."""
        for labels in ([p.stem for p in self.checkpoints], [p.parent.name for p in self.checkpoints]):
            if len(set(labels)) == len(labels) and all(labels):
                return labels
        return [str(i + 1) for i in range(len(self.checkpoints))]


# ---- inputs --------------------------------------------------------------------------------------

def _read_list(path: Path) -> list[tuple[str, float | None]]:
    from amnet.listfiles import read_name_list
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


def collect_inputs(args: Iterable[str | Path], images_root: Path | None = None) -> list[InputItem]:
    """Expand image files, folders (recursive, sorted) and list files into items."""
    from amnet.images import IMAGE_SUFFIXES, list_image_folder
    items: list[InputItem] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            # same walk as `amnet-cache extract` (same suffixes, hidden files skipped, sorted)
            items += [InputItem(name, f) for name, f in list_image_folder(p)]
        elif p.suffix.lower() in LIST_EXTS and p.is_file():
            root = list_root(p, images_root)
            # names are not checked for existence here: a missing image becomes an error row
            items += [InputItem(name, root / name, gt) for name, gt in _read_list(p)]
        elif p.exists() or p.suffix.lower() in IMAGE_SUFFIXES:
            items.append(InputItem(p.name, p))  # a missing/bad image becomes an error row
        else:
            raise AmnetError(f"{p}: no such image, folder or list file")
    return items


# ---- batch loops ---------------------------------------------------------------------------------

class _Images(torch.utils.data.Dataset):
    """Decodes and squash-resizes to uint8 `[3, S, S]` in DataLoader workers, as extraction does
    (normalising happens on the device: a quarter of the bytes to move); the same uint8 image is
    what the figures show. A bad image yields its reason instead of raising."""

    def __init__(self, items: list[InputItem], size: int, keep_image: bool) -> None:
        # only plain data here: workers get a pickled copy (never the trunk/heads, maybe on CUDA)
        self.items, self.size, self.keep = items, size, keep_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path = self.items[i].path
        try:
            if path is None:
                raise ImageError(f"{self.items[i].name}: no image file")
            from amnet.images import load_resized_uint8
            x = load_resized_uint8(path, self.size)                 # uint8 [3, S, S]
            return i, x, (x.permute(1, 2, 0).numpy() if self.keep else None), ""
        except AmnetError as e:
            return i, None, None, str(e)
        except Exception as e:  # noqa: BLE001 - PIL/OS errors of one image must not end the run
            return i, None, None, f"{path}: {type(e).__name__}: {e}"


def _collate(batch):
    return batch


def _fill(results: list[ItemResult], pred: Prediction) -> None:
    for j, r in enumerate(results):
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
    data = _Images(items, predictor.image_size, keep_images)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers,
                                         collate_fn=_collate)
    with progress_bar(len(items), "predict", enabled=progress) as bar:
        for batch in loader:
            results, xs = [], []
            for i, x, disp, err in batch:
                r = ItemResult(items[i], error=err, image=disp)
                if err and on_error == "fail":
                    raise ImageError(err)
                results.append(r)
                if not err:
                    xs.append(x)
            ok = [r for r in results if not r.error]
            if ok:
                from amnet.backbone import normalize_uint8
                x = torch.stack(xs).to(predictor.device, non_blocking=True)
                x = normalize_uint8(x, predictor.provenance.mean, predictor.provenance.std)
                _fill(ok, predictor.predict_features(predictor.features(x)))
            bar.update(len(batch))
            yield from results


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
                _fill(ok, predictor.predict_features(feats))
                if keep_images:
                    from amnet.images import load_resized_uint8
                    for r in ok:
                        if r.item.path is not None and Path(r.item.path).is_file():
                            try:  # the figure is a bonus here: no image, no figure
                                x = load_resized_uint8(r.item.path, predictor.image_size)
                                r.image = x.permute(1, 2, 0).numpy()
                            except AmnetError:
                                pass
            bar.update(len(chunk))
            yield from results


# ---- amnet predict -------------------------------------------------------------------------------

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


def write_predictions(predictor: Predictor, items: list[InputItem], out: str | Path, *,
                      cache: str | Path | None = None, batch_size: int = 32, workers: int = 0,
                      on_error: str = "skip", attention_maps: str | Path | None = None,
                      grid: str | Path | None = None, progress: bool = True) -> dict:
    """Score `items` (from images, or from `cache` by name) and write the CSV (path, score[, gt],
    step_1..step_T, score_<checkpoint>..., error), one row per item in input order; optionally one
    attention figure per image into `attention_maps` and a contact sheet at `grid`.
    Returns counts {"n", "scored", "failed", "figures", "grid"}."""
    from amnet import viz

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    has_gt = any(it.gt is not None for it in items)
    labels = predictor.checkpoint_labels
    header = (["path", "score"] + (["gt"] if has_gt else [])
              + [f"step_{t + 1}" for t in range(predictor.steps)]
              + [f"score_{lab}" for lab in labels] + ["error"])
    fig_dir = Path(attention_maps) if attention_maps else None
    keep = fig_dir is not None
    fc = None
    if cache is not None:
        from amnet.cache import FeatureCache
        fc = FeatureCache(cache)
        check_cache_provenance(dict(fc.attrs), predictor.provenance, Path(cache),
                               predictor.checkpoints[0])
        results = predict_cached(predictor, fc, items, batch_size=max(batch_size, 1),
                                 on_error=on_error, keep_images=keep, progress=progress)
    else:
        results = predict_items(predictor, items, batch_size=batch_size, workers=workers,
                                on_error=on_error, keep_images=keep, progress=progress)
    counts = {"n": len(items), "scored": 0, "failed": 0, "figures": 0, "grid": []}
    sheet: list = []
    used: set[str] = set()
    try:  # a run stopped by --on-error fail leaves no CSV (amnet.atomic)
        with atomic_open(out, "w", tag="partial", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in results:
                it = r.item
                shown = str(it.path) if it.path is not None and fc is None else it.name
                if r.error:
                    counts["failed"] += 1
                    w.writerow([shown, ""] + ([_fmt(it.gt)] if has_gt else [])
                               + [""] * (predictor.steps + len(labels)) + [r.error])
                    continue
                counts["scored"] += 1
                w.writerow([shown, _fmt(r.score)] + ([_fmt(it.gt)] if has_gt else [])
                           + [_fmt(float(v)) for v in r.step_scores]
                           + [_fmt(float(v)) for v in r.per_checkpoint] + [""])
                if fig_dir is not None and r.image is not None:
                    viz.save_attention_figure(figure_path(fig_dir, it.name, used), r.image,
                                              r.attention, r.step_scores, r.score, gt=it.gt,
                                              title=it.name)
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


def summary_line(counts: dict, out: Path) -> str:
    """One line for the end of `amnet predict`."""
    msg = f"scored {counts['scored']} of {counts['n']} inputs -> {out}"
    if counts["failed"]:
        msg += f"; {counts['failed']} failed (see the error column)"
    if counts["figures"]:
        msg += f"; {counts['figures']} attention figures"
    if counts["grid"]:
        msg += f"; contact sheet {', '.join(counts['grid'])}"
    return msg
