"""The trunk's output geometry per layer set: which layers exist, their channels and grids, and
what a cache records about them. Torch-free (the CLIs and the cache tools ask here).

A layer set is a comma list, shallow to deep: "layer3" (the paper's "43rd layer", the default),
"layer4", or "layer3,layer4" -- one map, the shallower layers average-pooled onto the deepest
layer's grid and concatenated along channels (`amnet.extract.backbone.Trunk`).

A cut inside layer4 names a block: "layer4.K" is the output of layer4's block K (0-based), e.g.
"layer4.1" (`[2048, 7, 7]` at 224), alone or as the deepest of a set ("layer3,layer4.1"). Stage
two can then train the blocks above the cut (`top_blocks`: "layer4.2"), whose weights the cache
carries (docs/cache-format.md, `trunk_top`). Every torchvision ResNet50/101/152 has 3 blocks in
layer4, so K is 0 or 1 ("layer4.2" is all of layer4: say "layer4"). Cuts inside layer1..3 are
not offered: their tops would hold all of layer4 (60 MB of weights, ~3x the trained compute).
"""
from __future__ import annotations

import re

from amnet.core.errors import WeightsError

# The layers a trunk can output and their channels (every torchvision ResNet50/101/152).
LAYER_CHANNELS = {"layer3": 1024, "layer4": 2048}
DEFAULT_LAYERS = "layer3"  # the paper's "43rd layer"
LAYER4_BLOCKS = 3          # blocks in layer4 of ResNet50, 101 and 152 alike
_BLOCK = re.compile(r"^(layer4)\.(\d+)$")


def stage_of(item: str) -> str:
    """The stage a layer-set item belongs to: "layer4.1" -> "layer4", "layer3" -> "layer3"."""
    return item.split(".", 1)[0]


def cut_block(item: str) -> int | None:
    """The block index of a cut inside a stage ("layer4.1" -> 1), None for a whole stage."""
    m = _BLOCK.match(item)
    return int(m.group(2)) if m else None


def _valid_item(x: str) -> bool:
    if x in LAYER_CHANNELS:
        return True
    k = cut_block(x)
    return k is not None and 0 <= k < LAYER4_BLOCKS - 1 and x == f"layer4.{k}"


def parse_layers(layers: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`"layer3,layer4"` -> `("layer3", "layer4")`, checked: known layers (or a block cut
    "layer4.0" / "layer4.1" as the deepest), each stage once, shallow to deep. The canonical
    text of a layer set is `",".join(parse_layers(x))` (what caches and checkpoints record as
    their `layer`)."""
    items = [x.strip() for x in (layers.split(",") if isinstance(layers, str) else layers)]
    order = list(LAYER_CHANNELS)
    stages = [stage_of(x) for x in items]
    if (not items or not all(_valid_item(x) for x in items) or len(set(stages)) != len(stages)
            or stages != sorted(stages, key=order.index)):
        raise WeightsError(f"--layers {','.join(items)!s}: expected a comma list of "
                           f"{', '.join(order)} (each once, shallow to deep; layer4 may be cut "
                           f"after a block: layer4.0 or layer4.1), e.g. layer3, layer3,layer4 or "
                           "layer3,layer4.1")
    return tuple(items)


def top_blocks(layers: str) -> tuple[str, ...]:
    """The blocks above a layer set's cut, which stage two may train: "layer4.1" -> ("layer4.2",),
    "layer3,layer4.0" -> ("layer4.1", "layer4.2"); () for whole stages ("layer3", "layer4")."""
    k = cut_block(parse_layers(layers)[-1])
    return () if k is None else tuple(f"layer4.{j}" for j in range(k + 1, LAYER4_BLOCKS))


def grid_for(size: int, layers: str = DEFAULT_LAYERS) -> tuple[int, int]:
    """The trunk's output side for an S x S input. layer3: four stride-2 steps (conv1, maxpool,
    layer2, layer3), each ceil(h / 2) -- so ceil(S / 16), which is S / 16 only when 16 divides S
    (72 -> 5, not 4.5); layer4 (and any of its blocks: block 0 strides) one more (224 -> 7). A
    layer set gives its deepest layer's grid (the shallower maps are average-pooled onto it,
    `Trunk`). Every stage that relates an input size to a grid asks here."""
    h = size
    deep = "layer4" in {stage_of(x) for x in parse_layers(layers)}
    for _ in range(5 if deep else 4):
        h = (h - 1) // 2 + 1
    return h, h


def channels_for(layers: str = DEFAULT_LAYERS) -> int:
    """Channels of the trunk's output for a layer set: the sum over its layers (layer3 1024,
    layer4 and its blocks 2048; layer3,layer4 3072)."""
    return sum(LAYER_CHANNELS[stage_of(x)] for x in parse_layers(layers))


def layer_shapes(layers: str, size: int) -> dict[str, list[int]]:
    """{layer: [C, h, w]} of each layer's own map at input size S (before any pooling):
    224 -> layer3 [1024, 14, 14], layer4 [2048, 7, 7], layer4.1 [2048, 7, 7]."""
    out = {}
    for x in parse_layers(layers):
        g = grid_for(size, x)
        out[x] = [LAYER_CHANNELS[stage_of(x)], g[0], g[1]]
    return out


def layer_attrs(layers: str, size: int) -> dict[str, str]:
    """The cache attributes describing a layer set beyond its name (none for layer3 alone, the
    paper's): each layer's own shape, and how they became one map."""
    shapes = layer_shapes(layers, size)
    if list(shapes) == ["layer3"]:
        return {}
    out = {"layer_shapes": ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in shapes.items())}
    if len(shapes) > 1:
        out["layer_fusion"] = ("shallower layers average-pooled onto the deepest layer's grid, "
                               "concatenated along channels in the listed order")
    return out
