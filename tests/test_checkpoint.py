"""Head checkpoints (amnet/head/checkpoint.py): the round trip, and a newer format refused with one
clear error by the library and by every command that reads checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from amnet.cli import main
from amnet.core.errors import AmnetError, WeightsError
from amnet.core.settings import AMNetConfig
from amnet.head.checkpoint import FORMAT_VERSION, load_checkpoint, make_checkpoint, save_checkpoint
from amnet.head.model import AMNet

TINY = dict(in_channels=8, feature_dim=12, hidden_dim=10, regressor_dim=6, grid=4)
PROV = {"arch": "resnet50", "layer": "layer3", "weights_id": "random:0",
        "weights_sha256": "ab" * 32, "image_size": 64, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "precision": "fp32"}


def _checkpoint() -> dict:
    torch.manual_seed(0)
    return make_checkpoint(AMNet(AMNetConfig(**TINY)).eval(), backbone=PROV, epoch=3,
                           metrics={"val_rho": 0.5})


def test_round_trip(tmp_path):
    ck = _checkpoint()
    path = save_checkpoint(ck, tmp_path / "h.pt")
    model, meta = load_checkpoint(path)
    assert meta["format_version"] == 1 and meta["epoch"] == 3  # a frozen head stays format 1
    assert meta["backbone"] == PROV and not model.training
    assert all(torch.equal(v, ck["state_dict"][k]) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["h.pt"]  # no temp file left


def _newer(tmp_path, **changes):
    ck = _checkpoint()
    ck["format_version"] = FORMAT_VERSION + 1
    ck.update(changes)
    return save_checkpoint(ck, tmp_path / "newer.pt")


@pytest.mark.parametrize("what", ["same layout", "new config key", "new state key"])
def test_newer_format_is_one_clear_error(tmp_path, what):
    """Refused before anything else is tried: a newer file whose config or state dict this version
    cannot read still gets the format error, not a state-dict mismatch."""
    ck = _checkpoint()
    changes = {"same layout": {},
               "new config key": {"model_config": {**ck["model_config"], "heads": 4}},
               "new state key": {"state_dict": {**ck["state_dict"],
                                                "gate.weight": torch.zeros(3)}}}[what]
    path = _newer(tmp_path, **changes)
    with pytest.raises(AmnetError) as e:
        load_checkpoint(path)
    assert type(e.value) is WeightsError
    assert str(e.value) == (f"{path}: checkpoint format {FORMAT_VERSION + 1} is newer than this "
                            f"amnet understands ({FORMAT_VERSION}); upgrade amnet")


def _cache_and_split(tmp_path):
    """A complete cache that fits the TINY head (8 channels, 4 x 4) and a split over it: with
    them, the checkpoint is the only thing wrong."""
    import numpy as np

    from amnet.cache import schema as C, writer as W
    from amnet.extract.backbone import BackboneSpec
    names = [f"{i}.jpg" for i in range(4)]
    spec = BackboneSpec(weights_id="random:0", arch="resnet50", mean=tuple(PROV["mean"]),
                        std=tuple(PROV["std"]), weights_sha256=PROV["weights_sha256"])
    with W.create(tmp_path / "c.h5", names, C.settings_attrs(spec, 64, False, 8, (4, 4))) as f:
        f["features"][:] = np.random.default_rng(0).standard_normal((4, 8, 4, 4)).astype(np.float16)
        f["done"][:] = True
        f.attrs["complete"] = True
    split = tmp_path / "test_1.txt"
    split.write_text("".join(f"{n} 0.{5 + i}\n" for i, n in enumerate(names)))
    return tmp_path / "c.h5", split


def test_newer_format_refused_by_the_commands(tmp_path):
    cache, split = _cache_and_split(tmp_path)
    current = save_checkpoint(_checkpoint(), tmp_path / "current.pt")
    res = CliRunner().invoke(main, ["evaluate", str(current), "--cache", str(cache), "--split",
                                    str(split), "--device", "cpu"])
    assert res.exit_code == 0, res.output  # the control: this version's format is read
    path = _newer(tmp_path)
    want = f"Error: {path}: checkpoint format {FORMAT_VERSION + 1} is newer than this amnet"
    (tmp_path / "img").mkdir()
    from PIL import Image
    Image.new("RGB", (32, 32), (90, 120, 30)).save(tmp_path / "img" / "a.png")  # not "no image"
    for args in (["predict", "--checkpoint", str(path), str(tmp_path / "img"),
                  "--out", str(tmp_path / "s.csv")],
                 ["predict", "--checkpoint", str(path), "--cache", str(cache),
                  "--out", str(tmp_path / "s.csv")],
                 ["evaluate", str(path), "--cache", str(cache), "--split", str(split),
                  "--device", "cpu"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code != 0, (args[0], res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(want), (args[0], res.output)
        assert "upgrade amnet" in lines[0]
    from amnet.predict.predictor import Predictor
    with pytest.raises(WeightsError, match="newer than this amnet"):
        Predictor.from_checkpoint(path, device="cpu", backbone=False)


def test_old_checkpoint_backbone_dicts_still_load(tmp_path):
    """A checkpoint written before the record (no precision key, tuple/array stats) reads the
    same, and the cache -> checkpoint dict conversion keeps its historical keys."""
    from amnet.core.provenance import BackboneRecord
    from amnet.head.checkpoint import BACKBONE_KEYS, backbone_from_attrs
    assert BACKBONE_KEYS == ("arch", "layer", "weights_id", "weights_sha256", "image_size",
                             "mean", "std", "precision")
    old = {"arch": "resnet50", "layer": "layer3", "weights_id": "imagenet",
           "weights_sha256": "ef" * 32, "image_size": 224, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    rec = BackboneRecord.from_dict(old)
    assert rec.precision is None and rec.to_dict() == {**old, "precision": None}
    attrs = {"backbone": "resnet50", "layer": "layer3", "weights_id": "imagenet",
             "weights_sha256": "ef" * 32, "image_size": np.int64(224),
             "mean": np.array(old["mean"]), "std": np.array(old["std"]), "precision": "fp32",
             "flip": True}
    assert backbone_from_attrs(attrs) == {**old, "precision": "fp32"}
