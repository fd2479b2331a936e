"""amnet.core.provenance: the backbone record (cache attributes <-> checkpoint dict) and its one
compatibility check, which says what differs in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from amnet.core.errors import AmnetError, CacheError, WeightsError


def _record(**kw):
    from amnet.core.provenance import BackboneRecord
    base = dict(arch="resnet50", layer="layer3", weights_id="random:0", weights_sha256="ab" * 32,
                image_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                precision="mixed")
    return BackboneRecord(**{**base, **kw})


def test_backbone_record_round_trips_both_spellings():
    from amnet.core.provenance import BackboneRecord
    rec = _record()
    attrs = rec.to_attrs()
    assert attrs["backbone"] == "resnet50" and "arch" not in attrs
    assert attrs["mean"].dtype == np.float64 and attrs["image_size"] == 224
    assert BackboneRecord.from_attrs(attrs) == rec
    d = rec.to_dict()
    assert d["arch"] == "resnet50" and d["mean"] == [0.485, 0.456, 0.406]
    assert json.loads(json.dumps(d)) == d                         # plain, JSON-safe
    assert BackboneRecord.from_dict(d) == rec
    # h5py spellings (bytes, numpy scalars, "none" for raw input) and a version-1 style dict
    raw = BackboneRecord.from_attrs({"backbone": b"resnet152", "layer": np.bytes_(b"layer3"),
                                     "image_size": np.int64(224), "mean": "none", "std": "none",
                                     "weights_sha256": "cd" * 32, "weights_id": "resmem"})
    assert raw.arch == "resnet152" and raw.image_size == 224 and raw.mean is None
    assert raw.precision is None and raw.to_attrs()["precision"] == "none"
    assert BackboneRecord.from_dict({"backbone": "resnet50"}).arch == "resnet50"
    assert rec["weights_id"] == rec.get("weights_id") == "random:0"  # dict-style reading


def test_check_compatible_one_line():
    from amnet.core.provenance import check_compatible
    rec = _record()
    check_compatible(rec, _record(weights_id="file:/x.pt", precision="fp32"), "a", "b")
    check_compatible(rec, _record(image_size=None, layer=None), "a", "b")  # unrecorded: skipped
    with pytest.raises(CacheError) as e:
        check_compatible(_record(weights_sha256="cd" * 32, image_size=64), rec,
                         "feature cache c.h5", "checkpoint h.pt", error=CacheError,
                         hint="extract another cache")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("feature cache c.h5 vs checkpoint h.pt: ")
    assert "backbone weights random:0 on both sides, but other tensors under that name: sha256 " \
           "cdcdcdcdcdcd vs abababababab (conv1..layer3), image_size 64 vs 224" in msg
    assert "image_size 64 vs 224" in msg and msg.endswith("; extract another cache")
    with pytest.raises(AmnetError, match=r"mean none \(raw \[0, 1\] input\) vs \[0.485"):
        check_compatible(_record(mean=None), rec, "a", "b")
    with pytest.raises(WeightsError, match="arch resnet152 vs resnet50"):
        check_compatible(_record(arch="resnet152"), rec, "a", "b", error=WeightsError)


def test_weights_difference_says_why_two_trunks_of_one_name_differ():
    """The hash covers conv1 up to the deepest layer used (amnet.extract.backbone.trunk_sha256):
    `random:0` for layer3 and for layer3,layer4 hash otherwise, and the message says so instead of
    printing two different hashes under one name."""
    from amnet.core.provenance import weights_difference
    l3, l34 = ("random:0", "9b" * 32, "layer3"), ("random:0", "e8" * 32, "layer3,layer4")
    assert weights_difference(l3, l34) == (
        "weights random:0 on both sides, sha256 9b9b9b9b9b9b vs e8e8e8e8e8e8: the hash covers the "
        "layers used (conv1..layer3 vs conv1..layer4)")
    # layer4 and layer3,layer4 hash the same tensors, as does a record without a layer set
    # (older files: layer3): one name, one coverage, other hashes -> other tensors
    assert weights_difference(("file:/w.pt", "ab" * 32, "layer4"),
                              ("file:/w.pt", "cd" * 32, "layer3,layer4")) == (
        "weights file:/w.pt on both sides, but other tensors under that name: sha256 abababababab "
        "vs cdcdcdcdcdcd (conv1..layer4)")
    assert weights_difference(l3, ("random:0", "cd" * 32, None)).endswith("(conv1..layer3)")
    assert weights_difference(l3, ("random:1", "cd" * 32, "layer3")) == (
        "weights random:0 (sha256 9b9b9b9b9b9b) vs random:1 (sha256 cdcdcdcdcdcd)")
    # the records' comparison uses it
    assert _record(weights_sha256="cd" * 32, layer="layer3,layer4").differences(_record()) == [
        "weights random:0 on both sides, sha256 cdcdcdcdcdcd vs abababababab: the hash covers the "
        "layers used (conv1..layer4 vs conv1..layer3)", "layer layer3,layer4 vs layer3"]
