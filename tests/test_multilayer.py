"""Multi-layer stage one (`--layers layer3,layer4`): the trunk's fused map, what the cache records,
that a cache of one layer set is never read as another, and a head trained on it scoring images
end to end. Tiny: random:0 ResNet50 trunk, 64 x 64 inputs (layer3 4 x 4, layer4 2 x 2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from amnet.extract import backbone as B
from amnet.extract import layers as L
from amnet.core.errors import WeightsError

SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multilayer") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        arr = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        arr[: 8 * (i + 1), : 8 * (i + 1)] = 255
        Image.fromarray(arr).save(root / f"im{i}.png")
    return root


def test_layer_geometry():
    assert L.parse_layers("layer3, layer4") == ("layer3", "layer4")
    for bad in ("layer4,layer3", "layer3,layer3", "layer5", ""):
        with pytest.raises(WeightsError, match="--layers"):
            L.parse_layers(bad)
    assert L.grid_for(224) == (14, 14) and L.grid_for(224, "layer4") == (7, 7)
    assert L.grid_for(224, "layer3,layer4") == (7, 7) and L.grid_for(72, "layer4") == (3, 3)
    assert (L.channels_for("layer3"), L.channels_for("layer4"),
            L.channels_for("layer3,layer4")) == (1024, 2048, 3072)
    assert L.layer_shapes("layer3,layer4", 224) == {"layer3": [1024, 14, 14],
                                                    "layer4": [2048, 7, 7]}
    assert L.layer_attrs("layer3", 224) == {}  # a layer3 cache's attributes are as before
    assert L.layer_attrs("layer3,layer4", 224)["layer_shapes"] == \
        "layer3 1024x14x14, layer4 2048x7x7"


@pytest.mark.slow
def test_fused_map_is_pooled_layer3_then_layer4():
    t3, s3 = B.load_backbone("random:0", "fp32")
    t4, s4 = B.load_backbone("random:0", "fp32", layers="layer4")
    t34, s34 = B.load_backbone("random:0", "fp32", layers="layer3,layer4")
    x = torch.randn(2, 3, SIZE, SIZE)
    f3, f4, f34 = (B.features(t, x, "cpu") for t in (t3, t4, t34))
    assert f3.shape == (2, 1024, 4, 4) and f4.shape == (2, 2048, 2, 2)
    assert f34.shape == (2, 3072, 2, 2)
    torch.testing.assert_close(f34[:, :1024], F.avg_pool2d(f3, 2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f34[:, 1024:], f4, rtol=1e-4, atol=1e-4)
    # a layer3 trunk keeps its hash (old caches and checkpoints stay compatible); layer4's
    # weights join the hash only when they are used
    assert s3.weights_sha256 == B.trunk_sha256(B.load_network("random:0")[0])
    assert s4.weights_sha256 == s34.weights_sha256 != s3.weights_sha256
    assert (s3.layer, s4.layer, s34.layer) == ("layer3", "layer4", "layer3,layer4")
    # ... which is what the mismatch messages say the hash covers
    from amnet.core.provenance import hashed_layers
    assert hashed_layers(s4.layer) == hashed_layers(s34.layer) != hashed_layers(s3.layer)


def test_weights_without_layer4_refuse_layer4(tmp_path):
    net = B.load_network("random:0")[0]
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith(("layer4.", "fc."))}
    torch.save(sd, tmp_path / "trunk.pt")
    B.load_backbone(f"file:{tmp_path / 'trunk.pt'}", "fp32")  # layer3 needs no layer4
    with pytest.raises(WeightsError, match="no layer4 weights.*--layers layer3"):
        B.load_backbone(f"file:{tmp_path / 'trunk.pt'}", "fp32", layers="layer3,layer4")


def test_cache_records_its_layers_and_refuses_another_set(images, tmp_path):
    from amnet.cache.reader import FeatureCache
    from amnet.cli import cache_cli
    out = tmp_path / "c.h5"
    run = CliRunner().invoke
    args = ["extract", str(images), "--out", str(out), "--weights", "random:0", "--image-size",
            str(SIZE), "--precision", "fp32", "-q"]
    res = run(cache_cli, args + ["--layers", "layer3,layer4"])
    assert res.exit_code == 0, res.output
    with FeatureCache(out) as c:
        assert (c.channels, c.grid, c.complete) == (3072, (2, 2), True)
        assert c.attrs["layer"] == "layer3,layer4"
        assert c.attrs["layer_shapes"] == "layer3 1024x4x4, layer4 2048x2x2"
        assert c.backbone.layer == "layer3,layer4"
    info = run(cache_cli, ["info", str(out)])
    assert "layer3 1024x4x4, layer4 2048x2x2" in info.output
    assert run(cache_cli, ["verify", str(out)]).exit_code == 0
    # the same --out with the default layer set: refused, naming the difference; file untouched
    before = out.read_bytes()
    res = run(cache_cli, args)
    assert res.exit_code == 1
    l3, l34 = B.load_backbone("random:0")[1], B.load_backbone("random:0", layers="layer3,layer4")[1]
    assert res.output == (
        f"Error: {out}: made with other settings (layer layer3,layer4 vs layer3; weights random:0 "
        f"on both sides, sha256 {l34.weights_sha256[:12]} vs {l3.weights_sha256[:12]}: the hash "
        "covers the layers used (conv1..layer4 vs conv1..layer3); channels 3072 vs 1024; grid "
        "[2, 2] vs [4, 4]); choose another --out or pass --overwrite to replace it\n")
    assert out.read_bytes() == before


@pytest.mark.slow
def test_head_on_multilayer_cache_scores_images_end_to_end(images, tmp_path):
    """A head over the fused map: the checkpoint records the layer set, and Predictor rebuilds
    the same trunk, so end-to-end scores equal the cached features' scores."""
    from dataclasses import asdict

    from amnet.cache.reader import FeatureCache
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.extract.run import extract
    from amnet.core.settings import AMNetConfig
    from amnet.head.model import AMNet
    from amnet.predict.predictor import Predictor
    from amnet.predict.scoring import InputItem, predict_cached

    names = sorted(p.name for p in images.iterdir())
    cache = tmp_path / "c.h5"
    extract([(n, images / n) for n in names], cache, weights="random:0", image_size=SIZE,
            layers="layer3,layer4", device="cpu", batch_size=2, progress=False, precision="fp32")
    torch.manual_seed(0)
    head = AMNet(AMNetConfig(in_channels=3072, grid=2, feature_dim=16, hidden_dim=16,
                             regressor_dim=8)).eval()
    spec = B.load_backbone("random:0", "fp32", layers="layer3,layer4")[1]
    prov = {k: v for k, v in asdict(spec).items()
            if k in ("arch", "layer", "weights_id", "weights_sha256", "mean", "std", "precision")}
    ckpt = save_checkpoint(make_checkpoint(head, backbone=dict(prov, image_size=SIZE)),
                           tmp_path / "h.pt")
    predictor = Predictor.from_checkpoint([ckpt], device="cpu", precision="fp32", batch_size=2)
    e2e = predictor.predict([images / n for n in names])
    with FeatureCache(cache) as fc:
        cached = list(predict_cached(predictor, fc, [InputItem(n, None) for n in names],
                                     progress=False))
    np.testing.assert_allclose([c.score for c in cached], e2e.score, atol=2e-3)
    assert np.asarray(e2e.attention).shape[-2:] == (2, 2)  # the 2 x 2 grid
    # a layer3 cache for this head is refused (its record names another layer set)
    l3 = tmp_path / "l3.h5"
    extract([(n, images / n) for n in names], l3, weights="random:0", image_size=SIZE,
            device="cpu", batch_size=2, progress=False, precision="fp32")
    from amnet.core.errors import AmnetError
    from amnet.predict.head_provenance import check_cache_provenance
    with FeatureCache(l3) as fc, pytest.raises(AmnetError, match="layer"):
        check_cache_provenance(dict(fc.attrs), dict(prov, image_size=SIZE), l3, ckpt)


@pytest.mark.slow
def test_multilayer_cache_resumes_and_merges_byte_for_byte(images, tmp_path):
    """A run stopped after its first batch resumes to the rows of an uninterrupted run, and two
    shards merge to them too: the layer set travels with every operation on the file."""
    import h5py

    from amnet.cache.ops import merge
    from amnet.extract.run import extract
    items = [(n, images / n) for n in sorted(p.name for p in images.iterdir())]
    kw = dict(weights="random:0", image_size=SIZE, layers="layer3,layer4", flip=True,
              device="cpu", batch_size=2, progress=False, precision="fp32")
    whole = tmp_path / "whole.h5"
    extract(items, whole, **kw)

    class Stop(Exception):
        pass

    def stop(batches, extracted):
        raise Stop

    resumed = tmp_path / "resumed.h5"
    with pytest.raises(Stop):
        extract(items, resumed, on_batch=stop, **kw)
    s = extract(items, resumed, **kw)
    assert (s["already"], s["extracted"], s["complete"]) == (2, 3, True)
    shards = [extract(items, tmp_path / "part{i}.h5", shard=(i, 2), **kw)["out"] for i in range(2)]
    merged = tmp_path / "merged.h5"
    merge(merged, shards)
    with h5py.File(whole) as a:
        for other in (resumed, merged):
            with h5py.File(other) as b:
                assert b.attrs["layer"] == "layer3,layer4"
                for ds in ("features", "features_flip"):
                    assert b[ds].shape == (5, 3072, 2, 2)
                    np.testing.assert_array_equal(a[ds][:], b[ds][:])
    # shards of another layer set do not merge with these
    other = tmp_path / "l3.h5"
    extract(items[:1], other, **{**kw, "layers": "layer3"})
    from amnet.core.errors import CacheError
    with pytest.raises(CacheError, match="layer"):
        merge(tmp_path / "mixed.h5", [whole, other])
