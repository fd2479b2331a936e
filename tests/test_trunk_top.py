"""A cache cut inside layer4 (`--layers layer4.1`) and the trunk top it carries: the layer-set
syntax and geometry, the trunk cut equal to the full network's intermediate, the hashes, the
`trunk_top` group read back (and carried through relist). Tiny: random:0 ResNet50, 64 x 64
inputs (layer4 2 x 2)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from amnet.core.errors import CacheError, DamagedCacheError, WeightsError
from amnet.extract import backbone as B
from amnet.extract import layers as L

SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trunk_top") / "images"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(
            root / f"im{i}.png")
    return root


def test_block_cut_parsing_and_geometry():
    assert L.parse_layers("layer4.1") == ("layer4.1",)
    assert L.parse_layers("layer3, layer4.0") == ("layer3", "layer4.0")
    for bad in ("layer4.2", "layer4.3", "layer3.1", "layer4,layer4.1", "layer4.1,layer3",
                "layer4.01", "layer4.-1"):
        with pytest.raises(WeightsError, match="layer4.0 or layer4.1"):
            L.parse_layers(bad)
    assert L.grid_for(224, "layer4.1") == (7, 7) and L.grid_for(224, "layer3,layer4.0") == (7, 7)
    assert L.channels_for("layer4.1") == 2048 and L.channels_for("layer3,layer4.1") == 3072
    assert L.top_blocks("layer4.1") == ("layer4.2",)
    assert L.top_blocks("layer3,layer4.0") == ("layer4.1", "layer4.2")
    assert L.top_blocks("layer4") == L.top_blocks("layer3") == ()
    assert L.layer_shapes("layer3,layer4.1", 224) == {"layer3": [1024, 14, 14],
                                                      "layer4.1": [2048, 7, 7]}


def test_cut_equals_the_full_networks_intermediate_and_hashes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    net = B.load_network("random:0")[0].eval().double()
    with torch.no_grad():  # (the references are built from the unfolded network, in float64)
        y = net.maxpool(net.relu(net.bn1(net.conv1(x.double()))))
        y3 = net.layer3(net.layer2(net.layer1(y)))
        y40 = net.layer4[0](y3)
        y41 = net.layer4[1](y40)
    for layers, ref in (("layer4.0", y40), ("layer4.1", y41), ("layer4", net.layer4[2](y41))):
        trunk, spec = B.load_backbone("random:0", "fp32", layers=layers)
        f = B.features(trunk, x, "cpu").double()
        assert f.shape == ref.shape == (2, 2048, 2, 2)
        # fp32 all the way (layer4 included: it ran in bf16 under "fp32" before this test)
        assert float((f - ref.detach()).norm() / ref.detach().norm()) < 1e-5, layers
        assert spec.layer == layers
    # the hash covers exactly the blocks used: layer3 and layer4 keep theirs
    full = B.load_network("random:0")[0]
    sd = full.state_dict()
    s3, s4, s41 = (B.load_backbone("random:0", "fp32", layers=x)[1].weights_sha256
                   for x in ("layer3", "layer4", "layer4.1"))
    assert s3 == B.trunk_sha256(full)
    assert s4 == B.state_sha256(sd, ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."))
    assert s41 == B.state_sha256(sd, ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.",
                                      "layer4.0.", "layer4.1."))
    assert len({s3, s4, s41}) == 3
    # the top: the unfolded weights of layer4.2, BN statistics included
    trunk, _ = B.load_backbone("random:0", "fp32", layers="layer3,layer4.1")
    assert set(trunk.top_state) == {k for k in sd if k.startswith("layer4.2.")}
    for k, v in trunk.top_state.items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
    assert B.load_backbone("random:0", "fp32", layers="layer4")[0].top_state == {}


def _extract(images: Path, out: Path, layers: str, **kw) -> None:
    from amnet.extract.run import extract
    items = [(p.name, p) for p in sorted(images.glob("*.png"))]
    extract(items, out, weights="random:0", image_size=SIZE, layers=layers, precision="fp32",
            progress=False, batch_size=4, **kw)


def test_cache_carries_the_top_and_reads_it_back(images, tmp_path):
    from amnet.cache import ops
    from amnet.cache.reader import FeatureCache
    out = tmp_path / "c41.h5"
    _extract(images, out, "layer3,layer4.1", flip=True)
    trunk, _ = B.load_backbone("random:0", "fp32", layers="layer4.1")
    with FeatureCache(out) as c:
        assert (c.channels, c.grid, c.top_blocks) == (3072, (2, 2), ("layer4.2",))
        assert c.attrs["layer"] == "layer3,layer4.1"
        state, digest = c.top_state()
    assert digest == c.attrs["trunk_top_sha256"] == B.state_sha256(trunk.top_state)
    assert set(state) == set(trunk.top_state)
    for k, v in state.items():
        assert v.dtype == trunk.top_state[k].dtype
        torch.testing.assert_close(v, trunk.top_state[k], rtol=0, atol=0)
    assert ops.verify(out) == []
    # a rewrite for a shorter list keeps the top
    with h5py.File(out, "r+") as f:
        f["done"][0] = False
        f.attrs["complete"] = False
    with FeatureCache(out) as c:
        names = c.names[1:]
    ops.relist(out, names)
    with FeatureCache(out) as c:
        assert c.top_state()[1] == digest
    # and so do a repair and a merge of shards
    from amnet.cache.repair import repair
    repair(out, tmp_path / "fixed.h5")
    _extract(images, tmp_path / "s{i}.h5", "layer3,layer4.1", flip=True, shard=(0, 2))
    _extract(images, tmp_path / "s{i}.h5", "layer3,layer4.1", flip=True, shard=(1, 2))
    ops.merge(tmp_path / "merged.h5", [tmp_path / "s0.h5", tmp_path / "s1.h5"])
    for other in ("fixed.h5", "merged.h5"):
        with FeatureCache(tmp_path / other) as c:
            assert c.top_blocks == ("layer4.2",) and c.top_state()[1] == digest, other
    # damaged weights are refused, naming the file
    with h5py.File(out, "r+") as f:
        ds = f["trunk_top/layer4.2.conv1.weight"]
        ds[0, 0, 0, 0] = ds[0, 0, 0, 0] + 1
    with FeatureCache(out) as c, pytest.raises(DamagedCacheError, match="trunk_top weights hash"):
        c.top_state()


def test_whole_stage_cache_has_no_top(images, tmp_path):
    from amnet.cache.reader import FeatureCache
    out = tmp_path / "c4.h5"
    _extract(images, out, "layer4")
    with FeatureCache(out) as c, h5py.File(out, "r") as f:
        assert c.top_blocks == () and "trunk_top" not in f and "trunk_top" not in f.attrs
        with pytest.raises(CacheError, match=r"carries no trunk blocks above its cut \(layer "
                                             r"layer4\).*--layers layer4.1"):
            c.top_state()
