"""The top of the trunk that stage two trains: the ResNet bottleneck blocks above a cache's cut
(`model.trainable_layers`, e.g. ["layer4.2"] over a `layer4.1` cache), in plain torch.

Stage two may not import stage one (amnet.extract) nor torchvision (import-linter), so the
blocks are rebuilt here with torchvision's `Bottleneck` layout (ResNet v1.5: conv1 1x1, conv2
3x3, conv3 1x1, each followed by BatchNorm, ReLU after bn1, bn2 and the residual sum), and their
weights come from the cache (`FeatureCache.top_state`: the unfolded weights of the same trunk,
checked by sha256). tests/test_top_train.py holds a block equal to torchvision's on the same
weights.

Only layer4's non-first blocks are offered (`layer4.1`, `layer4.2`): 2048 -> 512 -> 2048
channels, stride 1, no downsampling, in every torchvision ResNet50/101/152. One costs 4.46 M
parameters and ~0.22 GMAC forward per image at a 7 x 7 grid (224 input).

BatchNorm: frozen by default (eval mode whatever the head's mode, running statistics kept,
scale and shift not trained: 1,184 images are too few to re-estimate them); `bn_trainable`
trains it like the rest (train mode, statistics updated).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from amnet.core.errors import WeightsError
from amnet.core.provenance import arrays_sha256

TRAINABLE = ("layer4.1", "layer4.2")   # the blocks stage two can train, shallow to deep
CHANNELS, PLANES = 2048, 512           # layer4's non-first blocks: 2048 -> 512 -> 2048


def check_trainable(names: Sequence[str]) -> tuple[str, ...]:
    """`model.trainable_layers` checked: the top blocks of layer4 ending at layer4.2
    (["layer4.2"] or ["layer4.1", "layer4.2"]), shallow to deep. WeightsError otherwise."""
    names = tuple(names)
    if names not in (TRAINABLE[-k:] for k in range(1, len(TRAINABLE) + 1)):
        raise WeightsError(f"model.trainable_layers {list(names)}: expected [] (the frozen trunk), "
                           "[layer4.2] or [layer4.1, layer4.2] (the top blocks of layer4, over a "
                           "cache cut below them: --layers layer4.1 or layer4.0)")
    return names


def cut_for(names: Sequence[str]) -> str:
    """The cache cut below trainable blocks: ["layer4.2"] -> "layer4.1"."""
    k = int(check_trainable(names)[0].rsplit(".", 1)[1])
    return f"layer4.{k - 1}"


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (stride 1, no downsampling), with its parameter names.

    forward: `[B, C, g, g]` -> `[B, C, g, g]` (C = 4 x planes)."""

    def __init__(self, channels: int = CHANNELS, planes: int = PLANES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + x)


class TopBlocks(nn.Module):
    """The trainable blocks above the cut, in order: `[B, 2048, g, g]` -> `[B, 2048, g, g]`
    (the cut's output in, layer4's out). State-dict keys `blocks.<i>.conv1.weight`, ...; the
    trunk's own keys (`layer4.2.conv1.weight`) through `load_trunk_state` / `trunk_state`."""

    channels = CHANNELS

    def __init__(self, names: Sequence[str], bn_trainable: bool = False) -> None:
        super().__init__()
        self.names = check_trainable(names)
        self.blocks = nn.ModuleList(Bottleneck() for _ in self.names)
        self.bn_trainable = False
        self.set_bn_trainable(bn_trainable)

    def _bns(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]

    def set_bn_trainable(self, flag: bool) -> None:
        """Frozen (False): BatchNorm in eval mode always, scale and shift without gradient."""
        self.bn_trainable = bool(flag)
        for bn in self._bns():
            bn.requires_grad_(self.bn_trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TopBlocks":
        super().train(mode)
        if not self.bn_trainable:
            for bn in self._bns():
                bn.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    # -- the trunk's weights -----------------------------------------------------------------------
    def _trunk_key(self, key: str) -> str:
        i, rest = key.split(".", 1)
        return f"{self.names[int(i)]}.{rest}"

    def trunk_state(self) -> dict[str, Tensor]:
        """The blocks' state dict keyed as in the trunk ("layer4.2.conv1.weight", ...)."""
        return {self._trunk_key(k[len("blocks."):]): v.detach().cpu().clone()
                for k, v in self.state_dict().items()}

    @torch.no_grad()
    def load_trunk_state(self, state: Mapping[str, Tensor], where: str) -> None:
        """Load the trunk's unfolded weights of these blocks (`FeatureCache.top_state`), every
        key of them and no other (WeightsError naming `where` otherwise)."""
        want = {self._trunk_key(k[len("blocks."):]): k for k in self.state_dict()}
        missing = sorted(set(want) - set(state))
        extra = sorted(set(state) - set(want))
        if missing or extra:
            raise WeightsError(f"{where}: the trunk top holds other blocks than "
                               f"{', '.join(self.names)} ({len(missing)} keys missing, "
                               f"{len(extra)} unexpected, e.g. {(missing or extra)[:2]})")
        own = self.state_dict()
        for key, name in want.items():
            if tuple(state[key].shape) != tuple(own[name].shape):
                raise WeightsError(f"{where}: {key} has shape {tuple(state[key].shape)}, not "
                                   f"{tuple(own[name].shape)} (not a ResNet50/101/152 layer4)")
            own[name].copy_(state[key])

    def sha256(self) -> str:
        """`amnet.core.provenance.arrays_sha256` of `trunk_state` (the cache's hash of the same
        weights before training)."""
        return arrays_sha256({k: v.numpy() for k, v in self.trunk_state().items()})


def block_macs(grid: int, channels: int = CHANNELS, planes: int = PLANES) -> int:
    """Multiply-accumulates of one bottleneck's forward per image at a `grid` x `grid` map
    (convolutions only): 224 input (grid 7) -> 0.22 G."""
    return grid * grid * (channels * planes + 9 * planes * planes + planes * channels)


def cache_top(cache, cache_path, names: Sequence[str]) -> tuple[dict[str, Tensor], str]:
    """The unfolded weights of the trainable blocks `names` from a feature cache
    (`amnet.cache.reader.FeatureCache.top_state`) and their sha256. The cache's cut must be the
    one right below them: anything else is refused with one line naming both."""
    names = check_trainable(names)
    have = tuple(cache.top_blocks)
    if have != names:
        cut = cut_for(names)
        other = f"[{', '.join(have)}]" if have else "[] (a frozen trunk)"
        raise WeightsError(f"{cache_path}: cut {cache.attrs.get('layer')} (trunk blocks above it: "
                           f"{', '.join(have) or 'none'}) vs model.trainable_layers "
                           f"[{', '.join(names)}]: extract the cache with --layers {cut} (or "
                           f"layer3,{cut}), or set model.trainable_layers to {other}")
    return cache.top_state()
