"""The seeded crop views of a feature cache (`amnet-cache extract --views K`): the recipe.

The original's train transform (squash-resize to 264 x 264, then torchvision's
RandomResizedCrop(224) with its default scale and ratio), drawn from a generator seeded per
(view_seed, view j, image name), so a view never depends on batch size, workers, shards, resume
or merge. `amnet.extract.image_files.load_views_uint8` applies it to decoded images; the cache records
`view_transform_description` in its attributes.

No PIL and no torchvision here (torch only inside the functions that draw): stage two reads
caches through `amnet.cache`, which records this description, and must stay free of both.
"""
from __future__ import annotations

import hashlib
import math

VIEW_SCALE = (0.08, 1.0)          # torchvision RandomResizedCrop defaults, as the original
VIEW_RATIO = (3 / 4, 4 / 3)
VIEW_PRE_RESIZE = 264 / 224       # the original resized to 264 x 264 before cropping 224


def view_pre_size(size: int) -> int:
    """Side of the squash-resize before the crop: 264 for a 224 input (264/224 x size)."""
    return int(round(size * VIEW_PRE_RESIZE))


def view_transform_description(size: int) -> str:
    """The `view_transform` attribute of a cache with views (docs/cache-format.md)."""
    pre = view_pre_size(size)
    return (f"squash-resize {pre}x{pre} (PIL bilinear, antialiased) -> RandomResizedCrop({size}, "
            f"scale=({VIEW_SCALE[0]:g}, {VIEW_SCALE[1]:g}), ratio=(3/4, 4/3), PIL bilinear, "
            "antialiased); view j of image `name` draws its crop from torch.Generator seeded "
            "with sha256('<view_seed>/<j>/<name>')[:8] (big-endian)")


def view_generator(view_seed: int, name: str, j: int):
    """`torch.Generator` for view j (1..K) of image `name`: a stable hash of the three, so the
    crop does not depend on batch size, workers, shards, resume or merge."""
    import torch
    digest = hashlib.sha256(f"{int(view_seed)}/{int(j)}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big"))


def random_resized_crop_params(height: int, width: int, gen, scale=VIEW_SCALE, ratio=VIEW_RATIO
                               ) -> tuple[int, int, int, int]:
    """`(top, left, h, w)`: torchvision's `RandomResizedCrop.get_params` (10 tries, then the
    central crop), drawing from `gen` instead of the global RNG (same numbers for the same seed)."""
    import torch
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
