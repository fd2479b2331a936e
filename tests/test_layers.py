"""The package's shape: what importing a module drags in, the bottom-layer helpers (atomic writes,
the backbone record and its one compatibility check, list files). The import contracts
themselves (one-way layers; stage two statically free of PIL/torchvision) are `lint-imports`,
run by .ci/run; here the same promises are checked at run time, third-party code included."""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amnet.core.errors import AmnetError, CacheError, WeightsError

ROOT = Path(__file__).resolve().parents[1]
STAGE_TWO = ("amnet.head.train", "amnet.head.feeding", "amnet.head.model", "amnet.head.checkpoint", "amnet.core.metrics")


def _run(code: str) -> dict:
    """Run `code` in a fresh interpreter (this checkout first on sys.path); its last line of
    stdout is JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_stage_two_imports_neither_pil_nor_torchvision():
    got = _run("import importlib, json, sys\n"
               f"for m in {STAGE_TWO!r}: importlib.import_module(m)\n"
               "print(json.dumps({k: k in sys.modules for k in ('PIL', 'torchvision')}))")
    assert got == {"PIL": False, "torchvision": False}


def test_version_without_torch_and_lazy_names():
    got = _run("import json, sys, amnet\n"
               "v = amnet.__version__\n"
               "before = {k: k in sys.modules for k in ('torch', 'numpy', 'h5py')}\n"
               "p = amnet.Predictor\n"
               "print(json.dumps({'v': v, 'before': before, 'predictor': p.__module__,\n"
               "                  'cache': amnet.FeatureCache.__name__}))")
    from amnet._version import __version__
    assert got["v"] == __version__
    assert got["before"] == {"torch": False, "numpy": False, "h5py": False}
    assert got["predictor"] == "amnet.predict.predictor" and got["cache"] == "FeatureCache"


def test_setup_cfg_reads_the_version_module():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"].strip() == "attr: amnet._version.__version__"
    assert "psutil" in cfg["options"]["install_requires"].split()
    assert "import-linter" in cfg["options.extras_require"]["dev"].split()


def test_no_cache_to_extract_shim():
    import amnet.extract.cache
    assert not hasattr(amnet.extract.cache, "extract")


def test_list_files_live_at_the_bottom():
    import amnet.data.splits as S
    import amnet.data.listfiles as L
    for name in ("RootChecker", "check_name", "read_name_list", "read_split", "write_split"):
        assert getattr(S, name) is getattr(L, name)


# ---- atomic writes -------------------------------------------------------------------------------

def test_atomic_writes_and_cleanup(tmp_path):
    from amnet.core.atomic import atomic_open, atomic_path, atomic_write_text, temp_path

    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one\n")
    assert target.read_text() == "one\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # a failure leaves the old file and no temporary one
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "one\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    # a library writing the file itself (here: numpy), recognisable temp name
    out = tmp_path / "x.npy"
    with atomic_path(out, tag="creating") as tmp:
        assert tmp == temp_path(out, "creating") and tmp.parent == out.parent
        assert tmp.name == f".x.creating-{os.getpid()}.npy"
        assert temp_path(tmp_path / "t.csv.gz").name == f".t.tmp-{os.getpid()}.csv.gz"
        np.save(tmp, np.arange(3))
        assert not out.exists()
    assert np.load(out).tolist() == [0, 1, 2]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "y.npy") as tmp:
            np.save(tmp, np.arange(3))
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "x.npy"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- the backbone record -------------------------------------------------------------------------

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
    assert "backbone weights_sha256 cdcdcdcdcdcd (random:0) vs abababababab" in msg
    assert "image_size 64 vs 224" in msg and msg.endswith("; extract another cache")
    with pytest.raises(AmnetError, match=r"mean none \(raw \[0, 1\] input\) vs \[0.485"):
        check_compatible(_record(mean=None), rec, "a", "b")
    with pytest.raises(WeightsError, match="arch resnet152 vs resnet50"):
        check_compatible(_record(arch="resnet152"), rec, "a", "b", error=WeightsError)


def test_old_checkpoint_backbone_dicts_still_load(tmp_path):
    """A checkpoint written before the record (no precision key, tuple/array stats) reads the
    same, and the cache -> checkpoint dict conversion keeps its historical keys."""
    from amnet.head.checkpoint import BACKBONE_KEYS, backbone_from_attrs
    from amnet.core.provenance import BackboneRecord
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
