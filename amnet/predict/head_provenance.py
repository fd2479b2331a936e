"""Which backbone a set of head checkpoints needs, and the checks around it (for the Predictor,
amnet/predict/predictor.py): each checkpoint's backbone record, heads grouped by trunk (imported
release splits each own theirs), the trunk built and checked against weights the user passes, a
feature cache checked against the heads, and why a checkpoint's scores mean nothing for photos
(a random-weight trunk, the synthetic demo data)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from amnet.core.errors import CacheError, WeightsError
from amnet.core.provenance import BackboneRecord, as_record, check_compatible


def checkpoint_backbone(meta: dict, path: Path) -> BackboneRecord:
    """The backbone a checkpoint's head expects (layer3 and 224 where older files omit them)."""
    b = meta.get("backbone")
    if not isinstance(b, dict) or "weights_id" not in b:
        raise WeightsError(f"{path}: checkpoint has no backbone provenance; re-save it with amnet")
    rec = BackboneRecord.from_dict(b)
    return replace(rec, layer=rec.layer or "layer3", image_size=rec.image_size or 224)


def check_same_backbone(provs: list[BackboneRecord], paths: list[Path]) -> BackboneRecord:
    # weights_id may differ when the sha256 agrees: the same file: weights at two paths
    for prov, path in zip(provs[1:], paths[1:]):
        check_compatible(prov, provs[0], f"checkpoint {path}", f"checkpoint {paths[0]}",
                         error=WeightsError, hint="checkpoints averaged together must come from "
                         "one feature cache/backbone")
    return provs[0]


def owns_backbone(meta: dict) -> bool:
    """An imported release checkpoint (amnet.predict.released_weights) is one whole model whose trunk belongs to
    that head alone (its drifted BatchNorm statistics); an amnet-trained head is not."""
    tc = meta.get("train_config")
    return isinstance(tc, dict) and bool(tc.get("imported_from"))


def group_by_backbone(provs: list[BackboneRecord], metas: list[dict], paths: list[Path]
                       ) -> list[list[int]]:
    """Checkpoint indices grouped by trunk (sha256, else weights id), in first-seen order.

    More than one group only when every checkpoint owns its backbone (imported release splits);
    they must still agree on everything but the weights (one preprocessing for all)."""
    groups: dict[str, list[int]] = {}
    for i, prov in enumerate(provs):
        groups.setdefault(prov.weights_sha256 or prov.weights_id or "", []).append(i)
    if len(groups) > 1 and not all(owns_backbone(m) for m in metas):
        check_same_backbone(provs, paths)          # raises: the heads need one feature space
    for prov, path in zip(provs[1:], paths[1:]):
        check_compatible(replace(prov, weights_sha256=None), replace(provs[0], weights_sha256=None),
                         f"checkpoint {path}", f"checkpoint {paths[0]}", error=WeightsError,
                         hint="checkpoints averaged together must share the input preprocessing")
    return list(groups.values())


def demo_reasons_for(prov: BackboneRecord, train_config: dict) -> list[str]:
    """Why a checkpoint's scores say nothing about real photos: a random-weight trunk, or the
    synthetic demo data set (data/demo/..., data/features/demo.h5) in its training record."""
    why = []
    paths = [train_config.get("cache")] + [v.get("path") for v in
                                           (train_config.get("splits") or {}).values()
                                           if isinstance(v, dict)]
    if any(isinstance(p, str) and p and ("demo" in Path(p).parts or Path(p).stem == "demo")
           for p in paths):
        why.append("on the synthetic demo data set")
    if (prov.weights_id or "").startswith("random:"):
        why.append(f"with a random-weight backbone ({prov.weights_id})")
    return why


def check_cache_provenance(attrs: dict, prov: BackboneRecord | dict, cache_path: Path,
                           ckpt: Path) -> None:
    """Refuse a cache whose features were made with another backbone than the checkpoint's.
    `prov`: the checkpoint's BackboneRecord (or its `backbone` dict)."""
    check_compatible(BackboneRecord.from_attrs(attrs), as_record(prov),
                     f"feature cache {cache_path}", f"checkpoint {ckpt}", error=CacheError,
                     hint="score it with a head trained on this cache")


def load_trunk(prov: BackboneRecord, weights: str | None, ckpt: Path, precision: str = "auto",
                device: torch.device | str = "cpu"):
    """Build the backbone the checkpoint was trained on; `weights` (user's) must be the same.
    `precision`: a trunk precision ("auto" resolved for `device`)."""
    from amnet.extract.backbone import load_backbone

    wanted = prov.weights_id
    if weights is not None and weights != wanted and not weights.startswith("file:"):
        raise WeightsError(f"--weights {weights} does not match {ckpt}, trained on backbone weights "
                           f"{wanted}; drop --weights or pass those weights")
    source = weights or wanted
    try:
        trunk, spec = load_backbone(source, precision, device, prov.layer or "layer3")
    except WeightsError as e:
        hint = (f"; pass --weights file:<local copy of {wanted[5:]}>" if weights is None
                and wanted.startswith("file:") else "")
        raise WeightsError(f"{e} (backbone of {ckpt}){hint}") from e
    # normalisation belongs to the weight source; it must be what the head was trained on
    check_compatible(BackboneRecord.from_spec(spec), prov, f"backbone weights {source}",
                     f"checkpoint {ckpt}", error=WeightsError,
                     hint="pass the weights the head was trained on")
    return trunk, spec
