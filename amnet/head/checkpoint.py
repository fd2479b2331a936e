"""Head checkpoints: the AMNet state dict plus everything needed to use and trace it.

A checkpoint is `torch.save` of a dict holding only tensors and plain Python values, so it loads
with `torch.load(..., weights_only=True)`:

    format_version  int: 1, or 2 for a head that trained the top of the trunk (older amnet
                    then says to upgrade instead of failing on the `top.*` keys)
    model_config    AMNetConfig as a dict (`trainable_layers`: [] for a frozen trunk)
    state_dict      the head's state dict (keys as in spec section 9: inconv.*, ..., regnet4.*)
    backbone        {arch, layer, weights_id, weights_sha256, image_size, mean, std, precision}:
                    the features this head expects (`amnet.core.provenance.BackboneRecord.to_dict`,
                    taken from the cache's attributes, or from import-weights)
    epoch           the chosen epoch (None for imported weights)
    metrics         that epoch's metrics (val_rho, val_mse, ...)
    train_config    the training settings (or the import's source and its sha256)
    versions        {amnet, torch, torchvision, python}
    trunk_top       only with trainable_layers: {blocks, cut (the cache's layer), source_sha256
                    (the cache's hash of the blocks' weights before training), bn}; the
                    trained weights are in state_dict (`top.blocks.<i>.*`)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from amnet.core.atomic import atomic_path
from amnet.core.errors import TrainingError, WeightsError, load_failure
from amnet.core.provenance import BackboneRecord, versions
from amnet.core.settings import AMNetConfig
from amnet.head.model import AMNet

FORMAT_VERSION = 2  # 1: a head on a frozen trunk; 2: also the trained top (`trunk_top`)
# the `backbone` dict's keys (precision: the trunk's bf16 policy, so predict matches the cache)
BACKBONE_KEYS = tuple(BackboneRecord().to_dict())


def plain(obj: Any) -> Any:
    """Recursively turn numpy / h5py / tuple values into plain Python (weights_only-safe, JSON-safe)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, str):
        return str(obj)  # str subclasses (torch.__version__ is a TorchVersion) are not weights_only-safe
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def backbone_from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone provenance recorded by a feature cache (its HDF5 attributes), as the
    checkpoint's `backbone` dict."""
    return BackboneRecord.from_attrs(attrs).to_dict()


def make_checkpoint(model: AMNet, *, backbone: BackboneRecord | Mapping[str, Any],
                    epoch: int | None = None, metrics: Mapping[str, Any] | None = None,
                    train_config: Mapping[str, Any] | None = None,
                    trunk_top: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict for `model` (its state dict is copied to CPU). Refuses (TrainingError)
    weights holding NaN/Inf: such a head scores nothing. `trunk_top`: the record of a trained
    trunk top (module docstring); a frozen head's checkpoint stays format 1."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingError(f"refusing to save a checkpoint whose weights hold NaN/Inf "
                            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    ckpt = {
        "format_version": FORMAT_VERSION if model.top is not None else 1,
        "model_config": model.config.to_dict(),
        "state_dict": state,
        "backbone": (backbone.to_dict() if isinstance(backbone, BackboneRecord)
                     else plain(dict(backbone))),
        "epoch": epoch,
        "metrics": plain(dict(metrics or {})),
        "train_config": plain(dict(train_config or {})),
        "versions": versions(),
    }
    if model.top is not None:
        ckpt["trunk_top"] = plain(dict(trunk_top or {}))
    return ckpt


def save_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically (amnet.core.atomic) so a killed run never leaves half a checkpoint."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch_save(dict(ckpt), tmp)
    return path


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj)` into `path` through an open file: a full disk then shows as the OSError
    behind torch's RuntimeError (amnet.core.diskspace finds it), which saving to a name hides."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) dict / list."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_size(obj: Any) -> int:
    """About the bytes `torch.save(obj)` writes, rounded up (a figure of space needed): its
    tensors, plus 5% and 64 KB for the zip container, the pickle and the plain values."""
    return tensor_bytes(obj) * 21 // 20 + 65_536


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[AMNet, dict[str, Any]]:
    """Load a head checkpoint with `weights_only=True` -> (AMNet in eval mode, checkpoint dict)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling / zip errors: not our format or damaged
        raise WeightsError(f"{path}: cannot read as a head checkpoint ({load_failure(exc)}); "
                           "published .pkl weights must first go through `amnet import-weights`") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_config" not in ckpt:
        raise WeightsError(f"{path}: not an amnet head checkpoint (no state_dict/model_config); "
                           "published .pkl weights must first go through `amnet import-weights`")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise WeightsError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this "
                           f"amnet understands ({FORMAT_VERSION}); upgrade amnet")
    model = AMNet(AMNetConfig.from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(f"{path}: state dict does not match its model_config: "
                           f"{str(exc).splitlines()[0]}") from exc
    model.to(map_location).eval()
    return model, ckpt
