"""Cached augmentation views (`amnet-cache extract --views K`, cache format 2): the crops, their
seeding, resume / merge / info / verify, version-1 files, and training / TTA over them.

Stage one: CPU, `random:0` weights, tiny images at --image-size 64 (grid 4). Stage two: small
synthetic caches written through amnet.cache's own creator."""
from __future__ import annotations

import json
import signal

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from amnet.cli import cache_cli, main
from amnet.core.errors import CacheError
from amnet.core.settings import AMNetConfig, TrainConfig
from amnet.data.views import random_resized_crop_params, view_generator, view_pre_size
from amnet.cache import schema as C, writer as W
from amnet.cache.ops import info, merge, verify
from amnet.cache.reader import FeatureCache
from amnet.extract.decode_workers import ImageRows
from amnet.extract.image_files import list_image_folder, load_views_uint8
from amnet.extract.run import extract
from amnet.head.checkpoint import load_checkpoint
from amnet.head.evaluation import evaluate
from amnet.head.run import train_split
from conftest import extract_killed_after
from test_extract import _arrays, _cli_subprocess

KW = dict(weights="random:0", image_size=64, device="cpu", progress=False)


@pytest.fixture
def kw(backbones) -> dict:
    """KW with the session's loaded random:0 trunk (`backbone=`)."""
    return {**KW, "backbone": backbones("random:0")}


def run_cli(group, *args: str):
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def _rel_err(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """||x - ref|| / ||ref|| per feature map (the last three axes), in float32."""
    x, ref = x.astype(np.float32), ref.astype(np.float32)
    axes = (-3, -2, -1)
    return np.sqrt(((x - ref) ** 2).sum(axis=axes) / (ref ** 2).sum(axis=axes))


# ---- the crops -------------------------------------------------------------------------------

def test_crops_follow_torchvision_random_resized_crop(image_dir):
    """Same parameters as torchvision's get_params for the same seed; same pixels as the
    original's Resize(264 * S / 224) -> crop -> resize (PIL bilinear)."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    assert view_pre_size(224) == 264 and view_pre_size(64) == 75
    for seed in range(30):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            want = T.RandomResizedCrop.get_params(Image.new("RGB", (75, 75)), [0.08, 1.0],
                                                  [3 / 4, 4 / 3])
        assert random_resized_crop_params(75, 75, torch.Generator().manual_seed(seed)) == want
    path = image_dir / "img03.jpg"
    x = load_views_uint8(path, 64, "img03.jpg", views=2, view_seed=7)
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.uint8
    img = Image.open(path).convert("RGB")
    assert torch.equal(x[0], TF.pil_to_tensor(img.resize((64, 64), Image.BILINEAR)))
    big = TF.resize(img, [75, 75], interpolation=T.InterpolationMode.BILINEAR)
    for j in (1, 2):
        i0, j0, h, w = random_resized_crop_params(75, 75, view_generator(7, "img03.jpg", j))
        ref = TF.resized_crop(big, i0, j0, h, w, [64, 64], T.InterpolationMode.BILINEAR)
        assert torch.equal(x[j], TF.pil_to_tensor(ref))
    assert not torch.equal(x[1], x[2]) and not torch.equal(x[0], x[1])


def test_crop_depends_only_on_seed_name_and_view(image_dir):
    items = list_image_folder(image_dir)
    names, paths = [n for n, _ in items], [p for _, p in items]
    a = ImageRows(paths, names, list(range(len(names))), 64, views=2, view_seed=0)
    b = ImageRows(paths, names, [5, 1, 3], 64, views=2, view_seed=0)  # another order and subset
    got = {a[k][0]: a[k][1] for k in range(len(a))}
    for k in range(len(b)):
        i, x = b[k][:2]
        assert torch.equal(x, got[i])
    other = ImageRows(paths, names, [1], 64, views=2, view_seed=1)[0][1]
    assert torch.equal(other[0], got[1][0]) and not torch.equal(other[1:], got[1][1:])


# ---- the file --------------------------------------------------------------------------------

@pytest.mark.slow
def test_view_shapes_attrs_and_reproducible_bytes(image_dir, tmp_path, kw):
    items = list_image_folder(image_dir)
    s = extract(items, tmp_path / "a.h5", flip=True, views=2, batch_size=4, **kw)
    assert s["complete"] and s["views"] == 2
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["views"].shape == f["views_flip"].shape == (11, 2, 1024, 4, 4)
        assert f["views"].dtype == np.float16 and f["views"].chunks == (1, 1, 1024, 4, 4)
        assert f.attrs["format_version"] == C.FORMAT_VERSION == 2
    with FeatureCache(tmp_path / "a.h5") as c:
        assert c.views == 2 and c.attrs["views"] == 2 and c.attrs["view_seed"] == 0
        assert "RandomResizedCrop(64" in c.attrs["view_transform"]
        plain, v1, v2 = (c.load(c.names, view=j).float() for j in range(3))
        assert plain.shape == v1.shape == (11, 1024, 4, 4)
        assert torch.equal(c.get("img02.jpg", view=2), c.load(["img02.jpg"], view=2)[0])
        assert torch.equal(c.get(3, flip=True, view=1), c.load([c.names[3]], flip=True, view=1)[0])
        for a, b in ((plain, v1), (plain, v2), (v1, v2), (v1, c.load(c.names, True, 1).float())):
            assert (a - b).abs().mean(dim=(1, 2, 3)).min() > 1e-2  # every image's views differ
        with pytest.raises(CacheError, match="no view 3"):
            c.get(0, view=3)
    # a second run gives the same bytes; other batch sizes give the same crops (features equal
    # up to the trunk's batch-dependent rounding: the default precision runs layer3 in bf16,
    # ~0.7% per map here, while two different crops of one image differ by > 6%; elementwise
    # tolerances do not fit bf16, whose near-zero ReLU outputs move by whole ulps of their
    # larger neighbours)
    extract(items, tmp_path / "b.h5", flip=True, views=2, batch_size=4, **kw)
    a, b = _arrays(tmp_path / "a.h5"), _arrays(tmp_path / "b.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a) and set(a) == set(b)
    extract(items, tmp_path / "c.h5", flip=True, views=2, batch_size=3, workers=1, **kw)
    c3 = _arrays(tmp_path / "c.h5")
    for k in ("views", "views_flip"):
        assert _rel_err(c3[k], a[k]).max() < 2e-2, k
    assert _rel_err(c3["views"][:, 0], a["views"][:, 1]).min() > 2e-2  # a crop mix-up would show
    # without views: the plain features are the same as before (format 1's content)
    extract(items, tmp_path / "plain.h5", flip=True, batch_size=4, **kw)
    p = _arrays(tmp_path / "plain.h5")
    assert "views" not in p
    assert _rel_err(p["features"], a["features"]).max() < 2e-2
    assert _rel_err(p["features_flip"], a["features_flip"]).max() < 2e-2


@pytest.mark.slow
def test_resume_with_views_after_sigkill(image_dir, tmp_path, backbones):
    """fp32, one image per batch: resumed = uninterrupted, byte for byte, every view and flip."""
    out = tmp_path / "killed.h5"
    kw = dict(weights="random:0", image_size=64, device="cpu", batch_size=1, workers=0,
              flip=True, views=2, view_seed=3, precision="fp32")
    p = extract_killed_after(tmp_path, image_dir, out, 6, **kw)
    assert p.returncode == -signal.SIGKILL, p.stderr
    args = ["extract", str(image_dir), "--out", str(out), "--weights", "random:0",
            "--image-size", "64", "--batch-size", "1", "--device", "cpu", "--workers", "0",
            "--precision", "fp32", "--flip", "--views", "2", "--view-seed", "3"]
    with FeatureCache(out) as c:
        have = [n for n in c.names if n in c]
        assert 4 <= len(have) <= 6 and not c.complete and c.views == 2
        assert all(torch.isfinite(c.get(n, flip=True, view=2).float()).all() for n in have)
    res = run_cli(cache_cli, *args[:-2], "--view-seed", "4")
    assert res.exit_code == 1 and "view_seed 3 vs 4" in res.output
    res = run_cli(cache_cli, *args[:-4], "--view-seed", "3")  # no --views: 0
    assert res.exit_code == 1 and "views 2 vs 0" in res.output
    p = _cli_subprocess(args)
    assert p.returncode == 0, p.stderr
    assert f"{len(have)} already there" in p.stderr
    extract(list_image_folder(image_dir), tmp_path / "ref.h5", progress=False,
            backbone=backbones("random:0", "fp32"), **kw)
    a, b = _arrays(out), _arrays(tmp_path / "ref.h5")
    assert set(a) == set(b) == {"features", "features_flip", "views", "views_flip", "done"}
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert verify(out) == []


@pytest.mark.slow
def test_merge_of_shards_with_views_equals_single_run(image_dir, tmp_path, kw):
    items = list_image_folder(image_dir)
    kw = dict(flip=True, views=2, batch_size=1, **kw)
    extract(items, tmp_path / "single.h5", **kw)
    shards = [extract(items, tmp_path / "s{i}.h5", shard=(i, 2), **kw)["out"] for i in range(2)]
    res = run_cli(cache_cli, "merge", str(tmp_path / "m.h5"), *shards)
    assert res.exit_code == 0, res.output
    a, b = _arrays(tmp_path / "m.h5"), _arrays(tmp_path / "single.h5")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with FeatureCache(tmp_path / "m.h5") as m:
        assert m.views == 2 and m.attrs["view_seed"] == 0 and m.complete
    assert verify(tmp_path / "m.h5") == []
    extract(items[:3], tmp_path / "k1.h5", **{**kw, "views": 1})
    with pytest.raises(CacheError, match=r"views 1 vs 2"):
        merge(tmp_path / "m2.h5", [shards[0], tmp_path / "k1.h5"])


def test_info_and_verify_report_views(image_dir, tmp_path, kw):
    out = tmp_path / "v.h5"
    extract(list_image_folder(image_dir), out, flip=True, views=2, batch_size=8, **kw)
    d = json.loads(run_cli(cache_cli, "info", "--json", str(out)).output)
    assert d["views"] == 2 and d["views_shape"] == "float16 [11, 2, 1024, 4, 4]"
    assert d["views_flip"] is True and d["view_seed"] == 0 and d["format_version"] == 2
    assert "views" in run_cli(cache_cli, "info", str(out)).output
    assert run_cli(cache_cli, "verify", str(out)).exit_code == 0
    with h5py.File(out, "r+") as f:
        f["views_flip"][4, 1, 0, 0, 0] = np.inf
    res = run_cli(cache_cli, "verify", str(out))
    assert res.exit_code == 1 and "views_flip: 1 images hold NaN/Inf" in res.output
    with h5py.File(out, "r+") as f:
        f["views_flip"][4, 1, 0, 0, 0] = 0
        f["done"][4] = False  # a row not done may hold anything
        f["views"][4, 0, 0, 0, 0] = np.nan
        del f["views_flip"]
    problems = verify(out)
    assert any("views_flip is missing" in p for p in problems)
    assert not any("NaN" in p for p in problems)


def test_version_1_file_reads_as_no_views(image_dir, tmp_path, kw):
    out = tmp_path / "v1.h5"
    items = list_image_folder(image_dir)
    extract(items, out, batch_size=8, **kw)
    with h5py.File(out, "r+") as f:  # what format version 1 wrote
        for key in ("views", "view_seed"):
            del f.attrs[key]
        f.attrs["format_version"] = 1
    with FeatureCache(out) as c:
        assert c.views == 0 and c.get(0).shape == (1024, 4, 4)
        with pytest.raises(CacheError, match="only the plain view"):
            c.get(0, view=1)
    assert info(out)["views"] == 0 and info(out)["format_version"] == 1 and verify(out) == []
    assert extract(items, out, batch_size=8, **kw)["already"] == 11  # resumable as K = 0
    with pytest.raises(CacheError, match="views 0 vs 1"):
        extract(items, out, views=1, batch_size=8, **kw)
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(CacheError, match="format version 3 is newer"):
        FeatureCache(out)
    res = run_cli(cache_cli, "info", str(out))
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "upgrade amnet" in res.output


# ---- training over views -----------------------------------------------------------------------

CH, G, K = 8, 4, 2
TINY = dict(feature_dim=16, hidden_dim=16, regressor_dim=8, feature_dropout=0.1, dropout=0.1)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic_views(tmp_path, n=(128, 40, 40), flip=True):
    """Scores follow channel 0 at one location; each crop view is the plain view plus noise and
    a shift of that value (a crop sees the image differently)."""
    from amnet.extract.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec

    rng = np.random.default_rng(0)
    total = sum(n)
    names = [f"img{i:05d}.jpg" for i in range(total)]
    feats = rng.standard_normal((total, CH, G, G)).astype(np.float32)
    scores = np.clip(0.754 + 0.12 * np.tanh(feats[:, 0, 2, 1]), 0, 1)
    views = feats[:, None] + 0.5 * rng.standard_normal((total, K, CH, G, G)).astype(np.float32)
    spec = BackboneSpec(weights_id="random:0", arch="resnet50", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, weights_sha256="ab" * 32)
    attrs = C.settings_attrs(spec, 16 * G, flip, CH, (G, G), views=K, view_seed=0)
    with W.create(tmp_path / "c.h5", names, attrs) as f:
        f["features"][:] = feats.astype(np.float16)
        f["views"][:] = views.astype(np.float16)
        if flip:
            f["features_flip"][:] = feats[..., ::-1].astype(np.float16)
            f["views_flip"][:] = views[..., ::-1].astype(np.float16)
        f["done"][:] = True
        f.attrs["complete"] = True
    files, start = {}, 0
    for part, m in zip(("train", "val", "test"), n):
        sl = slice(start, start + m)
        files[part] = tmp_path / f"{part}_1.txt"
        files[part].write_text("".join(f"{a} {b:.6f}\n" for a, b in zip(names[sl], scores[sl])))
        start += m
    return tmp_path / "c.h5", files


def train(tmp_path, out, cache, files, **kw):
    cfg = TrainConfig(**{**dict(epochs=2, batch_size=32, eval_batch_size=50, lr=3e-3,
                                progress=False, workers=0), **kw})
    return train_split(cache, files["train"], files["val"], files["test"], tmp_path / out,
                       AMNetConfig(**TINY), cfg)


def _head(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


def test_training_with_views_is_deterministic_and_uses_them(tmp_path, one_thread):
    cache, files = synthetic_views(tmp_path)
    a = train(tmp_path, "a", cache, files)
    b = train(tmp_path, "b", cache, files)
    lazy = train(tmp_path, "lazy", cache, files, preload="lazy")
    off = train(tmp_path, "off", cache, files, views=False)
    assert a["views"] is True and a["cache_views"] == K and a["flip"] is True
    assert off["views"] is False and off["cache_views"] == K
    assert a["tta"] is False and a["tta_views"] == 1
    keys = ("rho", "mse", "val_rho", "val_mse", "best_epoch")
    assert all(a[k] == b[k] == lazy[k] for k in keys)
    ha, hb, hl = (_head(tmp_path / d / "head.pt") for d in ("a", "b", "lazy"))
    assert all(torch.equal(ha[k], hb[k]) and torch.equal(ha[k], hl[k]) for k in ha)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "predictions.csv"),
                                  pd.read_csv(tmp_path / "lazy" / "predictions.csv"))
    assert a["val_mse"] != off["val_mse"]
    ho = _head(tmp_path / "off" / "head.pt")
    assert any(not torch.equal(ha[k], ho[k]) for k in ha)


def test_tta_averages_over_stored_views(tmp_path, one_thread):
    cache, files = synthetic_views(tmp_path)
    m = train(tmp_path, "t", cache, files, tta=True, epochs=1)
    assert m["tta"] is True and m["tta_views"] == (1 + K) * 2
    head = tmp_path / "t" / "head.pt"
    plain, _ = evaluate(head, cache, files["test"], device="cpu")
    tta, df = evaluate(head, cache, files["test"], device="cpu", tta=True)
    lazy, _ = evaluate(head, cache, files["test"], device="cpu", tta=True, preload="lazy",
                       workers=0)
    assert plain["tta"] is False and plain["tta_views"] == 1 and plain["cache_views"] == K
    assert tta["tta"] is True and tta["tta_views"] == 6
    assert tta["rho"] == pytest.approx(m["rho"]) and tta["mse"] == pytest.approx(m["mse"])
    assert tta["mse"] != plain["mse"] and lazy["mse"] == tta["mse"]
    r = run_cli(main, "evaluate", str(head), "--cache", str(cache), "--split",
                str(files["test"]), "--device", "cpu", "--tta")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output.strip().splitlines()[-1])
    assert printed["tta"] is True and printed["mse"] == pytest.approx(tta["mse"])


def test_cli_train_views_and_tta_flags(tmp_path, one_thread):
    cache, files = synthetic_views(tmp_path, n=(64, 20, 20))
    base = ["train", "--cache", str(cache), "--train", str(files["train"]), "--val",
            str(files["val"]), "--test", str(files["test"]), "--epochs", "1", "--batch-size", "32",
            "--hidden-dim", "16", "--feature-dim", "16", "--regressor-dim", "8", "--device", "cpu",
            "--workers", "0", "-q"]
    r = run_cli(main, *base, "--out", str(tmp_path / "o"), "--no-views", "--tta")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output.strip().splitlines()[-1])
    assert printed["views"] is False and printed["tta"] is True
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["cache_views"] == K and m["tta_views"] == 6
