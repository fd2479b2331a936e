"""Stage two training/evaluation over small synthetic feature caches (spec sections 3, 4, 6)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from amnet.cli import main
from amnet.core.errors import CacheError
from amnet.core.metrics import mse, spearman, summarize
from amnet.core.settings import AMNetConfig, TrainConfig
from amnet.head.checkpoint import load_checkpoint
from amnet.head.evaluation import evaluate
from amnet.head.run import train_split

C, G = 8, 4                     # tiny features: 8 channels on a 4x4 grid (L = 16)
L0 = 2 * G + 1                  # the informative location (y=2, x=1), row-major
TINY = dict(feature_dim=16, hidden_dim=16, regressor_dim=8)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run ~10x faster on one thread than on two contended ones (shared CI cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_cache(path, names, feats, feats_flip=None, sha="ab" * 32):
    """A cache in amnet's HDF5 schema, written through amnet.cache's own creator."""
    from amnet.extract.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
    from amnet.cache.schema import settings_attrs
    from amnet.cache.writer import create

    spec = BackboneSpec(weights_id="random:0", arch="resnet50", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, weights_sha256=sha)
    attrs = settings_attrs(spec, 16 * feats.shape[2], feats_flip is not None, feats.shape[1], feats.shape[2:])
    f = create(path, names, attrs)
    try:
        f["features"][:] = feats.astype(np.float16)
        if feats_flip is not None:
            f["features_flip"][:] = feats_flip.astype(np.float16)
        f["done"][:] = True
        f.attrs["complete"] = True
    finally:
        f.close()
    return path


def write_split(path, names, scores):
    path.write_text("".join(f"{n} {s:.6f}\n" for n, s in zip(names, scores)))
    return path


def synthetic(tmp_path, n=(400, 100, 100), flip=False, seed=0):
    """Scores are a known function of channel 0 at one location; every other value is noise,
    including channel 0 at the 15 other locations (so the spatial mean carries little signal)."""
    rng = np.random.default_rng(seed)
    total = sum(n)
    names = [f"img{i:05d}.jpg" for i in range(total)]
    feats = rng.standard_normal((total, C, G, G)).astype(np.float32)
    v = feats[:, 0, L0 // G, L0 % G]
    scores = np.clip(0.754 + 0.12 * np.tanh(v), 0, 1)
    flipped = None
    if flip:  # the flipped view mirrors x; the informative value moves with it
        flipped = feats[..., ::-1].copy()
    cache = write_cache(tmp_path / "c.h5", names, feats, flipped)
    a, b = n[0], n[0] + n[1]
    parts = {"train": slice(0, a), "val": slice(a, b), "test": slice(b, total)}
    files = {k: write_split(tmp_path / f"{k}_1.txt", names[s], scores[s]) for k, s in parts.items()}
    return cache, files


def quick_cfg(**kw):
    base = dict(epochs=2, batch_size=32, eval_batch_size=50, lr=3e-3, progress=False, workers=0)
    base.update(kw)
    return TrainConfig(**base)


def run(tmp_path, out, cache, files, mc=None, **kw):
    return train_split(cache, files["train"], files["val"], files["test"], tmp_path / out,
                       mc or AMNetConfig(**TINY), quick_cfg(**kw))


# ---- learning ------------------------------------------------------------------------------

def test_learns_a_localized_feature_and_attends_to_it(tmp_path):
    cache, files = synthetic(tmp_path)
    # lighter dropout than the paper's 0.8/0.5: 8-channel features would be mostly zeros
    mc = AMNetConfig(**TINY, feature_dropout=0.1, dropout=0.1)
    m = run(tmp_path, "out", cache, files, mc, epochs=25)
    assert m["rho"] > 0.9, m
    assert m["n"] == 100 and 1 <= m["best_epoch"] <= 25

    model, _ = load_checkpoint(tmp_path / "out" / "head.pt")
    from amnet.cache.reader import FeatureCache

    names = pd.read_csv(files["test"], sep=" ", header=None)[0].tolist()
    with FeatureCache(cache) as fc:
        x = fc.load(names)
    _, _, alphas = model.predict(x)                      # [N, T, 16]
    mean_alpha = alphas.mean(dim=(0, 1))
    assert mean_alpha.argmax().item() == L0
    assert mean_alpha[L0] > 0.5, mean_alpha               # uniform would be 1/16


def test_no_attention_ablation_trains(tmp_path):
    cache, files = synthetic(tmp_path, n=(96, 32, 32))
    m = run(tmp_path, "o", cache, files, AMNetConfig(**TINY, use_attention=False))
    model, ckpt = load_checkpoint(tmp_path / "o" / "head.pt")
    assert ckpt["model_config"]["use_attention"] is False
    # the reported test metrics are those of the written predictions, which are the saved head's
    pred = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert math.isfinite(m["mse"]) and m["mse"] == mse(pred["gt"], pred["pred"])
    assert m["rho"] == spearman(pred["gt"], pred["pred"]) and m["n"] == len(pred) == 32
    from amnet.core.device import autocast
    from amnet.cache.reader import FeatureCache

    with FeatureCache(cache) as fc, torch.no_grad(), autocast(torch.device("cpu"), m["precision"]):
        scores, _, alphas = model.predict(fc.load(pred["name"].tolist()))
    assert np.allclose(scores.double().numpy(), pred["pred"], rtol=0, atol=1e-6)
    assert torch.all(alphas == 1 / G**2)                  # no attention: uniform weights


# ---- determinism and data paths --------------------------------------------------------------

def test_two_runs_are_identical(tmp_path):
    cache, files = synthetic(tmp_path, n=(128, 40, 40), flip=True)
    a = run(tmp_path, "a", cache, files)
    b = run(tmp_path, "b", cache, files)
    for k in ("rho", "mse", "val_rho", "val_mse", "best_epoch"):
        assert a[k] == b[k], k
    ha = pd.read_csv(tmp_path / "a" / "history.csv").drop(columns="seconds")
    hb = pd.read_csv(tmp_path / "b" / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ha, hb)
    assert a["flip"] is True


@pytest.mark.parametrize("workers", [0, 1])
def test_preload_and_lazy_give_equal_results(tmp_path, workers):
    cache, files = synthetic(tmp_path, n=(128, 40, 40), flip=True)
    a = run(tmp_path, "ram", cache, files, preload="ram")
    b = run(tmp_path, "lazy", cache, files, preload="lazy", workers=workers)
    assert (a["data"], b["data"]) == ("ram", "lazy")
    for k in ("rho", "mse", "val_rho", "val_mse", "best_epoch"):
        assert a[k] == b[k], k
    pa = pd.read_csv(tmp_path / "ram" / "predictions.csv")
    pb = pd.read_csv(tmp_path / "lazy" / "predictions.csv")
    pd.testing.assert_frame_equal(pa, pb)


def test_preload_device_equals_ram(tmp_path):
    """preload="device" puts the features on the training device (here the CPU): same run as ram."""
    cache, files = synthetic(tmp_path, n=(128, 40, 40), flip=True)
    a = run(tmp_path, "ram", cache, files, preload="ram", device="cpu")
    b = run(tmp_path, "dev", cache, files, preload="device", device="cpu")
    assert (a["data"], b["data"]) == ("ram", "device") and a["device"] == b["device"] == "cpu"
    for k in ("rho", "mse", "val_rho", "val_mse", "best_epoch", "flip"):
        assert a[k] == b[k], k
    for name in ("predictions.csv", "history.csv"):
        pa, pb = (pd.read_csv(tmp_path / d / name) for d in ("ram", "dev"))
        pd.testing.assert_frame_equal(pa.drop(columns="seconds", errors="ignore"),
                                      pb.drop(columns="seconds", errors="ignore"), check_exact=True)
    ha, hb = (load_checkpoint(tmp_path / d / "head.pt")[0].state_dict() for d in ("ram", "dev"))
    assert all(torch.equal(ha[k], hb[k]) for k in ha)


def test_flip_changes_training_only_when_used(tmp_path):
    cache, files = synthetic(tmp_path, n=(128, 40, 40), flip=True)
    a = run(tmp_path, "f", cache, files)
    b = run(tmp_path, "n", cache, files, flip=False)
    assert a["flip"] and not b["flip"]
    # unused, the stored flips change nothing: the same run as over a cache without them
    (tmp_path / "plain").mkdir()
    plain_cache, plain_files = synthetic(tmp_path / "plain", n=(128, 40, 40), flip=False)
    c = run(tmp_path, "p", plain_cache, plain_files)
    assert not c["flip"]
    for k in ("rho", "mse", "val_rho", "val_mse", "best_epoch"):
        assert b[k] == c[k], k
    ha, hb, hc = (load_checkpoint(tmp_path / d / "head.pt")[0].state_dict() for d in "fnp")
    assert all(torch.equal(hb[k], hc[k]) for k in hb)
    # used, they change the weights trained...
    assert any(not torch.equal(ha[k], hb[k]) for k in ha)
    # ... and the val metrics reported are those of the saved head (val uses the plain view)
    for d, m in (("f", a), ("n", b)):
        ev, _ = evaluate(tmp_path / d / "head.pt", cache, files["val"], device="cpu",
                         batch_size=50)
        assert (ev["rho"], ev["mse"]) == (m["val_rho"], m["val_mse"]), d


# ---- outputs ----------------------------------------------------------------------------------

def test_outputs_and_checkpoint_round_trip(tmp_path):
    cache, files = synthetic(tmp_path, n=(96, 32, 40))
    m = run(tmp_path, "o", cache, files, epochs=3)
    out = tmp_path / "o"
    # the four outputs and nothing else: no temp file, no training state once complete
    assert sorted(p.name for p in out.iterdir()) == ["head.pt", "history.csv", "metrics.json",
                                                     "predictions.csv"]
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == ["epoch", "train_loss", "val_rho", "val_mse", "lr", "seconds"]
    assert hist["epoch"].tolist() == [1, 2, 3]
    assert m["best_epoch"] == int(hist.loc[hist["val_rho"].idxmax(), "epoch"])
    assert m["val_rho"] == pytest.approx(hist["val_rho"].max())

    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["name", "gt", "pred", "step_1", "step_2", "step_3"]
    assert len(pred) == 40                           # every test image (no drop_last)
    assert np.allclose(pred[["step_1", "step_2", "step_3"]].sum(axis=1), pred["pred"], atol=1e-9)
    assert m["rho"] == pytest.approx(spearman(pred["gt"], pred["pred"]))

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["rho"] == m["rho"] and on_disk["n"] == 40
    assert on_disk["backbone"]["weights_sha256"] == "ab" * 32
    assert on_disk["backbone"]["arch"] == "resnet50"

    # weights_only round trip: same model, same predictions
    raw = torch.load(out / "head.pt", weights_only=True)
    assert raw["epoch"] == m["best_epoch"] and raw["backbone"]["weights_id"] == "random:0"
    assert raw["train_config"]["lr"] == 3e-3 and raw["versions"]["torch"]
    model, ckpt = load_checkpoint(out / "head.pt")
    assert not model.training and model.config == AMNetConfig(**TINY, in_channels=C, grid=G)
    em, df = evaluate(out / "head.pt", cache, files["test"], device="cpu", out_dir=tmp_path / "ev")
    assert em["rho"] == m["rho"] and em["mse"] == m["mse"] and em["n"] == 40
    pd.testing.assert_frame_equal(df, pred, check_exact=False, rtol=1e-12)
    assert (tmp_path / "ev" / "predictions.csv").is_file()


def test_missing_names_are_reported(tmp_path):
    cache, files = synthetic(tmp_path, n=(64, 16, 16))
    bad = tmp_path / "bad.txt"
    bad.write_text(files["test"].read_text() + "".join(f"nope{i}.jpg 0.5\n" for i in range(7)))
    with pytest.raises(CacheError, match=r"7 of 23 images are not in the cache .*nope0\.jpg.*\.\.\."):
        train_split(cache, files["train"], files["val"], bad, tmp_path / "o",
                    AMNetConfig(**TINY), quick_cfg())


def test_evaluate_refuses_another_backbone(tmp_path):
    cache, files = synthetic(tmp_path, n=(64, 16, 16))
    run(tmp_path, "o", cache, files, epochs=1)
    other = write_cache(tmp_path / "other.h5", [f"img{i:05d}.jpg" for i in range(96)],
                        np.zeros((96, C, G, G), np.float32), sha="cd" * 32)
    with pytest.raises(CacheError, match="backbone weights"):
        evaluate(tmp_path / "o" / "head.pt", other, files["test"], device="cpu")


def test_without_val_a_seeded_holdout_selects(tmp_path):
    cache, files = synthetic(tmp_path, n=(100, 20, 20))
    m = train_split(cache, files["train"], None, files["test"], tmp_path / "o",
                    AMNetConfig(**TINY), quick_cfg(holdout=0.2))
    assert m["selection"] == "holdout:0.2" and m["n_val"] == 20 and m["n_train"] == 80
    m0 = train_split(cache, files["train"], None, files["test"], tmp_path / "o0",
                     AMNetConfig(**TINY), quick_cfg(holdout=0))
    assert m0["selection"] == "last" and m0["best_epoch"] == 2 and m0["val_rho"] is None


def test_cli_train_and_evaluate(tmp_path):
    cache, files = synthetic(tmp_path, n=(64, 16, 16))
    r = CliRunner().invoke(main, [
        "train", "--cache", str(cache), "--train", str(files["train"]), "--val", str(files["val"]),
        "--test", str(files["test"]), "--out", str(tmp_path / "o"), "--epochs", "1",
        "--batch-size", "16", "--feature-dim", "16", "--hidden-dim", "16", "--regressor-dim", "8",
        "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output.strip().splitlines()[-1])
    assert printed["n"] == 16 and printed["best_epoch"] == 1
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "o" / "head.pt"), "--cache", str(cache),
                                  "--split", str(files["test"]), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["rho"] == pytest.approx(printed["rho"])
    # a user error is one line, exit 1
    bad = write_split(tmp_path / "bad.txt", ["zzz.jpg"], [0.5])
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "o" / "head.pt"), "--cache", str(cache),
                                  "--split", str(bad)])
    assert r.exit_code == 1 and "zzz.jpg" in r.output


# ---- progress --------------------------------------------------------------------------------

def test_progress_shows_epochs_loss_val_rho_and_eta(tmp_path, monkeypatch, caplog):
    """issue 19: a run says how far it is. On a terminal, each epoch's bar (`epoch e/E`) carries
    the previous epoch's loss and val rho and the run's ETA; in a log, one line per epoch."""
    import logging
    import re

    import amnet.head.epochs
    from amnet.core.progress import duration

    bars = []

    class Bar:
        def __init__(self, total, desc, enabled=True, **kw):
            self.desc, self.enabled, self.postfix, self.n = desc, enabled, "", 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix_str(self, s, refresh=True):
            self.postfix = s

        def close(self):
            pass

    monkeypatch.setattr(amnet.head.epochs, "progress_bar", Bar)
    cache, files = synthetic(tmp_path, n=(64, 16, 16))
    with caplog.at_level(logging.INFO, logger="amnet.train"):
        run(tmp_path, "o", cache, files, epochs=3, batch_size=16, progress=None)
    assert [b.desc for b in bars] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(b.enabled and b.n == 64 for b in bars)
    assert bars[0].postfix == ""
    num = r"(-?\d+\.\d+|nan)"
    for b in bars[1:]:
        assert re.fullmatch(rf"last: loss {num}, val rho {num}, ETA \d+ s", b.postfix), b.postfix
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert re.search(r"\(\d+\.\d s, ETA \d+ s\)$", lines[0]) and lines[2].endswith(" s)")
    assert "ETA" not in lines[2]
    assert [duration(s) for s in (0.4, 59.6, 65, 3599, 7380)] == [
        "0 s", "1 min 00 s", "1 min 05 s", "59 min 59 s", "2 h 03 min"]


# ---- metrics ----------------------------------------------------------------------------------

def test_metrics():
    # ties get average ranks (scipy), unlike the original's argsort ranks
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert mse([0.5, 1.0], [0.6, 0.8]) == pytest.approx((0.01 + 0.04) / 2)
    s = summarize([{"rho": 0.6, "mse": 0.01, "selection": "val"}, {"rho": 0.7, "mse": 0.02}])
    assert s["n_splits"] == 2 and "selection" not in s
    assert s["rho"]["mean"] == pytest.approx(0.65)
    assert s["rho"]["sd"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert summarize([{"rho": 0.5}])["rho"]["sd"] == 0.0
