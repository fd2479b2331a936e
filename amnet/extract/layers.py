"""The trunk's output geometry per layer set: which layers exist, their channels and grids, and
what a cache records about them. Torch-free (the CLIs and the cache tools ask here).

A layer set is a comma list, shallow to deep: "layer3" (the paper's "43rd layer", the default),
"layer4", or "layer3,layer4" -- one map, the shallower layers average-pooled onto the deepest
layer's grid and concatenated along channels (`amnet.extract.backbone.Trunk`).
"""
from __future__ import annotations

from amnet.core.errors import WeightsError

# The layers a trunk can output and their channels (every torchvision ResNet50/101/152).
LAYER_CHANNELS = {"layer3": 1024, "layer4": 2048}
DEFAULT_LAYERS = "layer3"  # the paper's "43rd layer"


def parse_layers(layers: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`"layer3,layer4"` -> `("layer3", "layer4")`, checked: known layers, each once, shallow to
    deep. The canonical text of a layer set is `",".join(parse_layers(x))` (what caches and
    checkpoints record as their `layer`)."""
    items = [x.strip() for x in (layers.split(",") if isinstance(layers, str) else layers)]
    order = list(LAYER_CHANNELS)
    if (not items or any(x not in LAYER_CHANNELS for x in items) or len(set(items)) != len(items)
            or items != sorted(items, key=order.index)):
        raise WeightsError(f"--layers {','.join(items)!s}: expected a comma list of "
                           f"{', '.join(order)} (each once, shallow to deep), e.g. layer3 or "
                           "layer3,layer4")
    return tuple(items)


def grid_for(size: int, layers: str = DEFAULT_LAYERS) -> tuple[int, int]:
    """The trunk's output side for an S x S input. layer3: four stride-2 steps (conv1, maxpool,
    layer2, layer3), each ceil(h / 2) -- so ceil(S / 16), which is S / 16 only when 16 divides S
    (72 -> 5, not 4.5); layer4 one more (224 -> 7). A layer set gives its deepest layer's grid
    (the shallower maps are average-pooled onto it, `Trunk`). Every stage that relates an input
    size to a grid asks here."""
    h = size
    for _ in range(5 if "layer4" in parse_layers(layers) else 4):
        h = (h - 1) // 2 + 1
    return h, h


def channels_for(layers: str = DEFAULT_LAYERS) -> int:
    """Channels of the trunk's output for a layer set: the sum over its layers (layer3 1024,
    layer4 2048; layer3,layer4 3072)."""
    return sum(LAYER_CHANNELS[x] for x in parse_layers(layers))


def layer_shapes(layers: str, size: int) -> dict[str, list[int]]:
    """{layer: [C, h, w]} of each layer's own map at input size S (before any pooling):
    224 -> layer3 [1024, 14, 14], layer4 [2048, 7, 7]."""
    out = {}
    for x in parse_layers(layers):
        g = grid_for(size, x)
        out[x] = [LAYER_CHANNELS[x], g[0], g[1]]
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
