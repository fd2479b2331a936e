"""Stage two training the top of the trunk (`model.trainable_layers: [layer4.2]` over a
`layer4.1` cache): the blocks built in the head equal torchvision's, training changes them and is
deterministic, the checkpoint records them, and everything downstream (predict from the cache,
images end to end, ONNX export) runs them; the mismatch messages; the frozen default unchanged.
Tiny: random:0 ResNet50, 64 x 64 images (a 2 x 2 grid), a 16-wide head."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from amnet.core.errors import WeightsError
from amnet.core.settings import AMNetConfig, TrainConfig

SIZE = 64
HEAD = AMNetConfig(feature_dim=16, hidden_dim=16, regressor_dim=8, target_mean="train")
TRAIN = TrainConfig(epochs=2, batch_size=8, eval_batch_size=16, precision="fp32", device="cpu",
                    progress=False, seed=3, trunk_lr=1e-3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """24 images, a layer4.1 cache (with flips) and a layer4 cache of them, split files."""
    from amnet.extract.run import extract
    root = tmp_path_factory.mktemp("top_train")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    names, scores = [], []
    for i in range(24):
        arr = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        side = 8 + 2 * i
        arr[:side, :side] = 255
        Image.fromarray(arr).save(images / f"im{i:02d}.png")
        names.append(f"im{i:02d}.png")
        scores.append(0.3 + 0.02 * i)
    items = [(n, images / n) for n in names]
    kw = dict(weights="random:0", image_size=SIZE, precision="fp32", progress=False, batch_size=8)
    extract(items, root / "c41.h5", layers="layer4.1", flip=True, **kw)
    extract(items, root / "c4.h5", layers="layer4", **kw)
    files = {}
    for part, sl in (("train", slice(0, 14)), ("val", slice(14, 19)), ("test", slice(19, 24))):
        files[part] = root / f"{part}.txt"
        files[part].write_text("".join(f"{n} {s:.6f}\n" for n, s in zip(names[sl], scores[sl])))
    return {"root": root, "images": images, "names": names, **files}


def _train(data, out: Path, cache="c41.h5", model=HEAD, cfg=TRAIN) -> dict:
    from amnet.head.run import train_split
    return train_split(data["root"] / cache, data["train"], data["val"], data["test"], out,
                       model, cfg)


def test_top_block_equals_torchvisions_block_on_the_same_weights():
    import torchvision

    from amnet.head.top_blocks import TopBlocks, block_macs
    net = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.layer4.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    sd = {k: v for k, v in net.state_dict().items() if k.startswith(("layer4.1.", "layer4.2."))}
    top = TopBlocks(["layer4.1", "layer4.2"])
    top.load_trunk_state(sd, "test")
    top.eval()
    x = torch.randn(2, 2048, 3, 3).relu()
    with torch.no_grad():
        torch.testing.assert_close(top(x), net.layer4[2](net.layer4[1](x)), rtol=1e-5, atol=1e-5)
    assert top.trunk_state().keys() == sd.keys()
    assert sum(p.numel() for p in top.blocks[0].parameters()) == 4_462_592
    assert block_macs(7) == 218_365_952  # ~0.22 GMAC per image at 224
    with pytest.raises(WeightsError, match=r"model.trainable_layers \['layer4.2', 'layer4.1'\]: "
                                           r"expected \[\] \(the frozen trunk\)"):
        TopBlocks(["layer4.2", "layer4.1"])
    with pytest.raises(WeightsError, match="1 keys missing"):
        TopBlocks(["layer4.2"]).load_trunk_state(
            {k: v for k, v in sd.items() if k.startswith("layer4.2.") and "conv1" not in k}
            | {"layer4.2.bn9.x": torch.zeros(1)}, "w.pt")


def test_training_the_top_changes_it_deterministically_and_predict_runs_it(data, tmp_path):
    from amnet.cache.reader import FeatureCache
    from amnet.head.checkpoint import load_checkpoint
    from amnet.predict.predictor import Predictor
    from amnet.predict.scoring import InputItem, predict_cached

    cfg = replace(HEAD, trainable_layers=["layer4.2"])
    m1 = _train(data, tmp_path / "a", model=cfg)
    m2 = _train(data, tmp_path / "b", model=cfg)
    assert m1["trainable_layers"] == ["layer4.2"] and m1["trunk_bn"] == "frozen"
    paths = ("checkpoint",)  # the only difference: where each run wrote
    assert {k: v for k, v in m1.items() if k not in paths} == \
        {k: v for k, v in m2.items() if k not in paths}
    model, ck = load_checkpoint(tmp_path / "a/head.pt")
    _, ck2 = load_checkpoint(tmp_path / "b/head.pt")
    for k, v in ck["state_dict"].items():
        torch.testing.assert_close(v, ck2["state_dict"][k], rtol=0, atol=0)
    assert ck["format_version"] == 2 and ck["model_config"]["trainable_layers"] == ["layer4.2"]
    with FeatureCache(data["root"] / "c41.h5") as fc:
        source, digest = fc.top_state()
    assert ck["trunk_top"] == {"blocks": ["layer4.2"], "cut": "layer4.1", "source_sha256": digest,
                               "bn": "frozen"}
    trained = model.top.trunk_state()
    conv_moved = [k for k in trained if "conv" in k and not torch.equal(trained[k], source[k])]
    assert len(conv_moved) == 3                        # every convolution trained
    for k in trained:                                  # BatchNorm frozen: all of it as it was
        if ".bn" in k:
            torch.testing.assert_close(trained[k], source[k], rtol=0, atol=0)
    # predict from the cache: the test predictions of the run, to 1e-5
    pred = pd.read_csv(tmp_path / "a/predictions.csv")
    predictor = Predictor.from_checkpoint([tmp_path / "a/head.pt"], device="cpu", backbone=False)
    with FeatureCache(data["root"] / "c41.h5") as fc:
        got = [p.score for p in predict_cached(predictor, fc,
                                               [InputItem(n, None) for n in pred["name"]],
                                               progress=False)]
    np.testing.assert_allclose(got, pred["pred"], atol=1e-5, rtol=0)
    # images end to end: the trunk to layer4.1, the trained top, the head
    e2e = Predictor.from_checkpoint([tmp_path / "a/head.pt"], device="cpu", precision="fp32",
                                    match_cache=True)
    scores = e2e.predict([data["images"] / n for n in pred["name"]]).score
    np.testing.assert_allclose(scores, pred["pred"], atol=1e-4, rtol=0)


def test_amnet_predict_and_export_run_the_trained_top(data, tmp_path):
    from click.testing import CliRunner

    from amnet.cli import main
    cfg = replace(HEAD, trainable_layers=["layer4.2"])
    _train(data, tmp_path / "r", model=cfg, cfg=replace(TRAIN, epochs=1))
    ckpt = tmp_path / "r/head.pt"
    pred = pd.read_csv(tmp_path / "r/predictions.csv")
    run = CliRunner().invoke
    res = run(main, ["predict", "--checkpoint", str(ckpt), "--cache", str(data["root"] / "c41.h5"),
                     "--out", str(tmp_path / "p.csv"), str(data["test"])])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "p.csv").set_index("path").loc[pred["name"]]
    np.testing.assert_allclose(got["score"], pred["pred"], atol=1e-5, rtol=0)
    # a cache of another cut: one line naming both
    res = run(main, ["predict", "--checkpoint", str(ckpt), "--cache", str(data["root"] / "c4.h5"),
                     "--out", str(tmp_path / "q.csv"), str(data["test"])])
    assert res.exit_code != 0
    line = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(line) == 1 and "c4.h5" in line[0] and "head.pt" in line[0]
    assert "layer layer4 vs layer4.1" in line[0]
    pytest.importorskip("onnxruntime")
    from amnet.predict.export import export_model
    result = export_model([ckpt], tmp_path / "m.onnx")   # checked against torch inside
    assert max(result.max_diff.values()) < 1e-3


def test_cut_and_trainable_layers_must_agree(data, tmp_path):
    with pytest.raises(WeightsError) as e:
        _train(data, tmp_path / "x", cache="c4.h5", model=replace(HEAD,
                                                                  trainable_layers=["layer4.2"]))
    msg = str(e.value)
    assert "\n" not in msg and "c4.h5: cut layer4 (trunk blocks above it: none) vs " \
        "model.trainable_layers [layer4.2]: extract the cache with --layers layer4.1" in msg
    with pytest.raises(WeightsError, match=r"c41.h5: cut layer4.1 \(trunk blocks above it: "
                                           r"layer4.2\) vs model.trainable_layers \[layer4.1, "
                                           r"layer4.2\].*--layers layer4.0.*\[layer4.2\]"):
        _train(data, tmp_path / "y", model=replace(HEAD,
                                                   trainable_layers=["layer4.1", "layer4.2"]))


def test_frozen_default_is_unchanged(data, tmp_path):
    """trainable_layers [] over the same layer4.1 cache: no top, format 1, no new metrics keys;
    and the head's initial weights do not depend on a top being built."""
    from amnet.head.checkpoint import load_checkpoint
    from amnet.head.model import AMNet
    m = _train(data, tmp_path / "f", cfg=replace(TRAIN, epochs=1))
    assert "trainable_layers" not in m and "trunk_bn" not in m
    model, ck = load_checkpoint(tmp_path / "f/head.pt")
    assert model.top is None and ck["format_version"] == 1 and "trunk_top" not in ck
    assert not any(k.startswith("top.") for k in ck["state_dict"])
    base = replace(HEAD, target_mean=0.5, in_channels=2048, grid=2)
    torch.manual_seed(0)
    frozen = AMNet(base).state_dict()
    torch.manual_seed(0)
    topped = AMNet(replace(base, trainable_layers=["layer4.2"])).state_dict()
    for k, v in frozen.items():
        torch.testing.assert_close(topped[k], v, rtol=0, atol=0)
    assert json.loads((tmp_path / "f/metrics.json").read_text())["n"] == 5


def test_trunk_bn_train_updates_the_statistics(data, tmp_path):
    """train.trunk_bn: train -- BatchNorm in train mode: its running statistics and its scale
    and shift move with training (frozen, they stay: the test above)."""
    from amnet.cache.reader import FeatureCache
    from amnet.head.checkpoint import load_checkpoint
    _train(data, tmp_path / "bn", model=replace(HEAD, trainable_layers=["layer4.2"]),
           cfg=replace(TRAIN, epochs=1, trunk_bn="train"))
    model, ck = load_checkpoint(tmp_path / "bn/head.pt")
    assert ck["trunk_top"]["bn"] == "train"
    with FeatureCache(data["root"] / "c41.h5") as fc:
        source = fc.top_state()[0]
    trained = model.top.trunk_state()
    for key in ("layer4.2.bn1.running_mean", "layer4.2.bn3.running_var", "layer4.2.bn2.weight"):
        assert not torch.equal(trained[key], source[key]), key
    # a loaded top keeps BatchNorm in eval mode even when its head is put in train mode
    assert not any(m.training for m in model.train().top.modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
