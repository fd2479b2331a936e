"""Import the authors' released AMNet weights (spec section 5) as an amnet head + backbone.

The released files (`weights_<epoch>.pkl` inside e.g. lamem_ResNet50FC_lstm3.zip) hold
`torch.save({'model': state_dict})` of the whole original model (spec section 9):

    core_cnn.core_cnn.<torchvision resnet names>   the ResNet (conv1 .. layer4, fc), with the
                                                   BatchNorm statistics that drifted in training
    inconv.*, bn1.*, hs1.*, hc1.*, e1.weight, eh1.*, eh3.weight, rnn.*_l0, regnet1.*, regnet4.*

(2018 files lack `num_batches_tracked`; it is filled with 0, which only matters for momentum=None.)
`import_weights` writes into OUTDIR:

    head.pt       an amnet head checkpoint (amnet.head.checkpoint) whose backbone provenance names
    backbone.pt   the trunk's state dict (conv1, bn1, layer1-3; torchvision key names), usable in
                  stage one as `--weights file:OUTDIR/backbone.pt`. Keeping the file's drifted
                  BN statistics reproduces the original's evaluation exactly (spec 1 / 8.1).
    import.json   provenance: source path and sha256, detected architecture and head settings.

Neither the number of LSTM steps nor the no-attention ablation can be read from the weights (the
ablation keeps the attention layers): both come from the experiment name in the file's path
(`..._lstm3_noatt_train_1/weights_35.pkl`) unless given explicitly.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch

from amnet.core.atomic import atomic_path, atomic_write_text
from amnet.core.errors import WeightsError, load_failure
from amnet.core.provenance import BackboneRecord, file_sha256
from amnet.core.settings import AMNetConfig
from amnet.extract.backbone import IMAGENET_MEAN, IMAGENET_STD, load_backbone
from amnet.head.checkpoint import make_checkpoint, save_checkpoint
from amnet.head.model import AMNet

BACKBONE_PREFIX = "core_cnn.core_cnn."
HEAD_LAYERS = ("inconv", "bn1", "hs1", "hc1", "e1", "eh1", "eh3", "rnn", "regnet1", "regnet4")
TRUNK_LAYERS = ("conv1", "bn1", "layer1", "layer2", "layer3")
# bottleneck blocks in layer3 -> torchvision architecture
LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101", 36: "resnet152"}


def _load_state_dict(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as exc:
        hint = "" if trust_pickle else (
            "; if you trust the file, retry with --trust-pickle (runs arbitrary pickle code)")
        raise WeightsError(f"{path}: cannot load as a torch file ({load_failure(exc)}){hint}"
                           ) from exc
    sd = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected {{'model': state_dict}} (the released AMNet .pkl layout)")
    # DataParallel-saved files carry a "module." prefix
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in sd.items())


def _fill_num_batches_tracked(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = OrderedDict()
    for k, v in sd.items():
        out[k] = v
        if k.endswith(".running_var"):
            nbt = k[: -len("running_var")] + "num_batches_tracked"
            if nbt not in sd:
                out[nbt] = torch.tensor(0, dtype=torch.long)
    return out


def split_state_dict(sd: dict[str, torch.Tensor], path: Path | str = "<state dict>"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Full original state dict -> (trunk state dict through layer3, head state dict, arch)."""
    backbone = OrderedDict((k[len(BACKBONE_PREFIX):], v) for k, v in sd.items()
                           if k.startswith(BACKBONE_PREFIX))
    head = OrderedDict((k, v) for k, v in sd.items()
                       if not k.startswith(BACKBONE_PREFIX) and k.split(".")[0] in HEAD_LAYERS)
    other = [k for k in sd if not k.startswith(BACKBONE_PREFIX) and k.split(".")[0] not in HEAD_LAYERS]
    if not backbone:
        raise WeightsError(f"{path}: no '{BACKBONE_PREFIX}*' keys: not an AMNet ResNet checkpoint")
    if "inconv.weight" not in head or "eh1.weight" not in head:
        raise WeightsError(f"{path}: no AMNet head keys (inconv, eh1, ...); ResNet50FT and other "
                           f"non-attention variants are not supported")
    if other:
        raise WeightsError(f"{path}: unexpected keys {other[:5]}{' ...' if len(other) > 5 else ''}")
    if "layer3.0.conv3.weight" not in backbone:
        raise WeightsError(f"{path}: the backbone is not a bottleneck ResNet (ResNet18/VGG16 "
                           "front-ends are not supported)")
    blocks = len({k.split(".")[1] for k in backbone if k.startswith("layer3.")})
    arch = LAYER3_BLOCKS.get(blocks)
    if arch is None:
        raise WeightsError(f"{path}: layer3 has {blocks} blocks, not a ResNet50/101/152")
    trunk = OrderedDict((k, v) for k, v in backbone.items() if k.split(".")[0] in TRUNK_LAYERS)
    return _fill_num_batches_tracked(trunk), _fill_num_batches_tracked(head), arch


def head_config(head: dict[str, torch.Tensor], *, lstm_steps: int, use_attention: bool,
                target_mean: float, target_scale: float) -> AMNetConfig:
    """Widths from the tensor shapes; steps/attention/targets from the caller."""
    L = head["eh1.weight"].shape[0]
    grid = math.isqrt(L)
    if grid * grid != L:
        raise WeightsError(f"eh1 has {L} outputs, not a square number of locations")
    if "rnn.weight_ih_l0" not in head:
        lstm_steps = 0
    return AMNetConfig(in_channels=head["inconv.weight"].shape[1], feature_dim=head["inconv.weight"].shape[0],
                       hidden_dim=head["hs1.weight"].shape[0], regressor_dim=head["regnet1.weight"].shape[0],
                       grid=grid, lstm_steps=lstm_steps, use_attention=use_attention,
                       target_mean=target_mean, target_scale=target_scale)


def guess_from_path(path: Path | str) -> dict[str, Any]:
    """Experiment settings from the original's naming: <ds>_<cnn>_lstm<T>[_last][_noatt]_train_<i>/weights_<e>.pkl."""
    text = str(path).replace("\\", "/")
    out: dict[str, Any] = {}
    m = re.search(r"_lstm(\d+)", text)
    if m:
        out["lstm_steps"] = int(m.group(1))
    if "_noatt" in text:
        out["use_attention"] = False
    m = re.search(r"weights_(\d+)\.pkl$", text)
    if m:
        out["epoch"] = int(m.group(1))
    m = re.search(r"(lamem|sun|ava)_\w*?train_(\d+)", text, re.IGNORECASE)
    if m:
        out["dataset"], out["split"] = m.group(1).lower(), int(m.group(2))
    return out


def import_weights(src: str | os.PathLike, out_dir: str | os.PathLike, *, lstm_steps: int | None = None,
                   use_attention: bool | None = None, target_mean: float | None = None,
                   target_scale: float = 2.0, image_size: int = 224,
                   trust_pickle: bool = False,
                   provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Convert one released `weights_<e>.pkl` into OUTDIR/head.pt + OUTDIR/backbone.pt.

    `provenance`: more about the source (e.g. amnet.predict.hub's release zip, its sha256 and URL), kept
    in import.json and in the checkpoint's train_config. Returns the record written to
    OUTDIR/import.json.
    """
    src, out = Path(src), Path(out_dir)
    sha = file_sha256(src) if src.is_file() else None
    sd = _load_state_dict(src, trust_pickle)
    trunk, head, arch = split_state_dict(sd, src)

    guess = guess_from_path(src.resolve())
    steps = lstm_steps if lstm_steps is not None else guess.get("lstm_steps", 3)
    attention = use_attention if use_attention is not None else guess.get("use_attention", True)
    if target_mean is None:  # the AVA model used its own mean; LaMem and SUN share 0.754 (spec 3)
        target_mean = 0.538389 if guess.get("dataset") == "ava" else 0.754
    cfg = head_config(head, lstm_steps=steps, use_attention=attention,
                      target_mean=target_mean, target_scale=target_scale)
    model = AMNet(cfg)
    try:
        model.load_state_dict(head)
    except RuntimeError as exc:
        raise WeightsError(f"{src}: head weights do not fit AMNet({cfg}): {str(exc).splitlines()[0]}") from exc

    out.mkdir(parents=True, exist_ok=True)
    bb_path = out / "backbone.pt"
    with atomic_path(bb_path) as tmp:
        torch.save(trunk, tmp)
    weights_id = f"file:{bb_path.resolve()}"
    # the hash stage one records for these weights, so caches made from backbone.pt match
    _, spec = load_backbone(weights_id, precision="fp32")
    if spec.arch != arch:
        raise WeightsError(f"{bb_path}: stage one reads this trunk as a {spec.arch}, not a {arch}")
    # the trunk's numerics are for the user to choose: no precision recorded
    backbone = BackboneRecord(arch=arch, layer="layer3", weights_id=weights_id,
                              weights_sha256=spec.weights_sha256, image_size=int(image_size),
                              mean=IMAGENET_MEAN, std=IMAGENET_STD)
    record = {"source": str(src.resolve()), "source_sha256": sha, "source_keys": len(sd),
              "arch": arch, "guessed_from_path": guess, "model_config": cfg.to_dict(),
              "backbone": backbone.to_dict(), "backbone_file": str(bb_path), "head_file": str(out / "head.pt"),
              "note": "published AMNet weights (Fajtl et al. 2018); backbone keeps the file's "
                      "BatchNorm statistics", **dict(provenance or {})}
    ckpt = make_checkpoint(model, backbone=backbone, epoch=guess.get("epoch"), metrics={},
                           train_config={"imported_from": record["source"], "source_sha256": sha,
                                         **{k: v for k, v in guess.items() if k != "epoch"},
                                         **dict(provenance or {})})
    save_checkpoint(ckpt, out / "head.pt")
    atomic_write_text(out / "import.json", json.dumps(record, indent=2) + "\n")
    return record
