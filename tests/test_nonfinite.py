"""NaN/Inf in the numbers (issue 11, defect 1): features holding NaN/Inf are refused -- or, asked
to, left out and recorded -- by train, evaluate and predict; a non-finite loss stops training
with one line naming the epoch and the batch, and nothing of that epoch is saved; `amnet predict`
exits non-zero when no input was scored."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import amnet.head.epochs
from amnet.cli import main
from amnet.core.errors import CacheError, TrainingError
from amnet.core.settings import AMNetConfig
from amnet.cache.schema import finite_rows
from amnet.head.run import train_split
from amnet.head.train_state import state_path
from conftest import error_line, sha256_of
from test_train import TINY, _one_thread, quick_cfg, synthetic  # noqa: F401 (fixture)

N = (64, 16, 16)          # train, val, test images of the synthetic cache
BAD_TRAIN, BAD_TEST = "img00003.jpg", "img00090.jpg"   # rows 3 (train) and 90 (test)


def poison(cache: Path, rows: dict[int, float]) -> None:
    """Put NaN / Inf into one value of each of `rows` (row -> value)."""
    with h5py.File(cache, "r+") as f:
        for i, v in rows.items():
            f["features"][i, 1, 2, 3] = v


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def train_args(cache: Path, files: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--cache", cache, "--train", files["train"], "--val", files["val"],
            "--test", files["test"], "--out", out, "--epochs", "1", "--batch-size", "16",
            "--feature-dim", "16", "--hidden-dim", "16", "--regressor-dim", "8", "--workers", "0",
            "-q", *extra]


# ---- the check itself -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_finite_rows_finds_every_kind(dtype):
    x = np.random.default_rng(0).standard_normal((200, 3, 4, 4)).astype(dtype)
    x[5, 0, 0, 0], x[77, 2, 3, 3], x[150, 1, 1, 1] = np.nan, np.inf, -np.inf
    x[199, 2, 3, 3] = np.finfo(dtype).max                 # large but finite: kept
    ok = finite_rows(x, block=16)
    assert ok.shape == (200,) and sorted(np.flatnonzero(~ok)) == [5, 77, 150]
    assert np.array_equal(finite_rows(torch.from_numpy(x)), ok)
    views = np.zeros((4, 3, 2, 2, 2), np.float16)          # [N, K, C, h, w]: any view counts
    views[2, 1, 0, 1, 1] = np.nan
    assert finite_rows(views).tolist() == [True, True, False, True]


# ---- train and evaluate ------------------------------------------------------------------------

@pytest.mark.parametrize("preload", ["ram", "lazy"])
def test_train_refuses_nonfinite_rows_naming_them(tmp_path, preload):
    cache, files = synthetic(tmp_path, n=N)
    poison(cache, {3: np.nan, 90: np.inf})
    before = sha256_of(cache)
    res = cli(*train_args(cache, files, tmp_path / "o", "--preload", preload))
    assert res.exit_code == 1
    assert error_line(res) == (
        f"{cache}: 1 of 64 train images hold NaN/Inf features ({BAD_TRAIN}); `amnet-cache verify "
        f"{cache}` lists them all; pass --on-nonfinite skip (train.on_nonfinite: skip in "
        "params.yaml) to leave them out")
    assert not (tmp_path / "o" / "head.pt").exists() and sha256_of(cache) == before


def test_train_skips_and_records_them_like_a_run_without_them(tmp_path):
    cache, files = synthetic(tmp_path, n=N)
    poison(cache, {3: np.nan, 90: -np.inf})
    res = cli(*train_args(cache, files, tmp_path / "o", "--on-nonfinite", "skip"))
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output.strip().splitlines()[-1])
    assert printed["skipped_nonfinite"] == {"train": [BAD_TRAIN], "test": [BAD_TEST]}
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["skipped_nonfinite"] == printed["skipped_nonfinite"]
    assert (m["n_train"], m["n"]) == (63, 15)
    with open(tmp_path / "o" / "predictions.csv") as fh:
        assert BAD_TEST not in {r["name"] for r in csv.DictReader(fh)}
    # the same run as one over split files that never listed them
    for part, bad in (("train", BAD_TRAIN), ("test", BAD_TEST)):
        lines = [ln for ln in files[part].read_text().splitlines(keepends=True)
                 if not ln.startswith(bad)]
        files[part] = tmp_path / f"{part}_clean.txt"
        files[part].write_text("".join(lines))
    ref = cli(*train_args(cache, files, tmp_path / "ref"))
    assert ref.exit_code == 0, ref.output
    r = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert "skipped_nonfinite" not in r
    for k in ("rho", "mse", "val_rho", "val_mse", "n", "n_train"):
        assert m[k] == r[k], k


def test_a_part_left_empty_is_refused(tmp_path):
    cache, files = synthetic(tmp_path, n=N)
    poison(cache, {i: np.nan for i in range(64, 80)})     # every val image
    with pytest.raises(CacheError) as e:
        train_split(cache, files["train"], files["val"], files["test"], tmp_path / "o",
                    AMNetConfig(**TINY), quick_cfg(on_nonfinite="skip"))
    assert str(e.value) == f"{cache}: every val image holds NaN/Inf features; re-extract the cache"


def test_evaluate_refuses_or_skips(tmp_path):
    cache, files = synthetic(tmp_path, n=N)
    assert cli(*train_args(cache, files, tmp_path / "o")).exit_code == 0
    poison(cache, {90: np.nan})
    head = tmp_path / "o" / "head.pt"
    res = cli("evaluate", head, "--cache", cache, "--split", files["test"], "--out", tmp_path / "e")
    assert res.exit_code == 1
    assert error_line(res) == (
        f"{cache}: 1 of 16 test images hold NaN/Inf features ({BAD_TEST}); `amnet-cache verify "
        f"{cache}` lists them all; pass --on-nonfinite skip (train.on_nonfinite: skip in "
        "params.yaml) to leave them out")
    assert not (tmp_path / "e").exists()
    res = cli("evaluate", head, "--cache", cache, "--split", files["test"], "--out", tmp_path / "e",
              "--on-nonfinite", "skip")
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output.strip().splitlines()[-1])
    assert printed["n"] == 15 and printed["skipped_nonfinite"] == [BAD_TEST]
    written = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert written["skipped_nonfinite"] == [BAD_TEST]


# ---- a non-finite loss ---------------------------------------------------------------------------

def test_nonfinite_loss_stops_training_and_saves_nothing_of_that_epoch(tmp_path, monkeypatch):
    cache, files = synthetic(tmp_path, n=N)
    calls = {"n": 0}
    real = amnet.head.epochs.amnet_loss

    def loss(*args, **kwargs):          # 4 batches of 16 per epoch: epoch 2, batch 3 is call 7
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 7 else out
    monkeypatch.setattr(amnet.head.epochs, "amnet_loss", loss)
    out = tmp_path / "o"
    res = cli(*train_args(cache, files, out), "--epochs", "3")
    state = state_path(out / "head.pt")
    assert res.exit_code == 1
    assert error_line(res) == (
        f"training diverged in epoch 2: non-finite loss nan at batch 3 of 4; nothing of epoch 2 "
        f"was saved (the state of epoch 1 stays in {state}); lower --lr, or check the features "
        "with `amnet-cache verify CACHE`")
    assert torch.load(state, weights_only=True)["epoch"] == 1     # resumable from epoch 1
    assert sorted(p.name for p in out.iterdir()) == [".train-state"]   # no head.pt, no temps


def test_weights_that_turn_nonfinite_in_the_last_step_are_caught(tmp_path, monkeypatch):
    cache, files = synthetic(tmp_path, n=N)
    real = torch.optim.Adam.step
    steps = {"n": 0}

    def step(self, *a, **k):            # the 4th (last) step of epoch 1 poisons one weight
        steps["n"] += 1
        r = real(self, *a, **k)
        if steps["n"] == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return r
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(TrainingError) as e:
        train_split(cache, files["train"], files["val"], files["test"], tmp_path / "o",
                    AMNetConfig(**TINY), quick_cfg(epochs=2, batch_size=16))
    assert str(e.value).startswith("training diverged in epoch 1: weights turned NaN/Inf in its "
                                   "last step (")
    assert "no epoch was saved" in str(e.value) and not (tmp_path / "o" / "head.pt").exists()


def test_a_checkpoint_with_nonfinite_weights_is_never_made():
    from amnet.head.checkpoint import make_checkpoint
    from amnet.head.model import AMNet
    model = AMNet(AMNetConfig(**TINY, grid=4, in_channels=8))
    with torch.no_grad():
        model.regnet4.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"^refusing to save a checkpoint whose weights hold "
                                            r"NaN/Inf \(regnet4\.weight\)$"):
        make_checkpoint(model, backbone={})


# ---- predict ---------------------------------------------------------------------------------

@pytest.fixture
def trained(tmp_path):
    cache, files = synthetic(tmp_path, n=N)
    assert cli(*train_args(cache, files, tmp_path / "o")).exit_code == 0
    return cache, files, tmp_path / "o" / "head.pt"


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def test_predict_from_cache_records_nonfinite_rows_or_stops(trained, tmp_path):
    cache, files, head = trained
    poison(cache, {90: np.nan})
    out = tmp_path / "p.csv"
    res = cli("predict", "--checkpoint", head, "--cache", cache, files["test"], "--out", out)
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == (
        f"scored 15 of 16 inputs -> {out}; 1 failed (see the error column)")
    rows = read_rows(out)
    assert rows[BAD_TEST]["score"] == "" and \
        rows[BAD_TEST]["error"] == f"NaN/Inf features in the feature cache {cache}"
    assert all(float(r["score"]) > 0 for n, r in rows.items() if n != BAD_TEST)
    res = cli("predict", "--checkpoint", head, "--cache", cache, files["test"], "--out",
              tmp_path / "f.csv", "--on-error", "fail")
    assert res.exit_code == 1
    assert error_line(res) == (f"{cache}: NaN/Inf features for 1 inputs, e.g. '{BAD_TEST}'; "
                               f"`amnet-cache verify {cache}` lists them all")
    assert not (tmp_path / "f.csv").exists()


def test_predict_exits_nonzero_when_nothing_was_scored(trained, tmp_path):
    cache, files, head = trained
    poison(cache, {i: np.nan for i in range(80, 96)})      # every test image
    out = tmp_path / "p.csv"
    res = cli("predict", "--checkpoint", head, "--cache", cache, files["test"], "--out", out)
    assert res.exit_code == 1
    assert error_line(res) == (f"no input was scored: all 16 failed, e.g. img00080.jpg: NaN/Inf "
                               f"features in the feature cache {cache} (every reason is in {out})")
    assert len(read_rows(out)) == 16          # the reasons are kept


def test_predict_exits_nonzero_when_there_is_nothing_to_score(tmp_path, backbones):
    from conftest import save_small_head
    head = save_small_head(tmp_path / "head.pt", backbones("random:0", "fp32")[1], 32)
    (tmp_path / "empty").mkdir()
    res = cli("predict", "--checkpoint", head, tmp_path / "empty", "--out", tmp_path / "e.csv",
              "--device", "cpu")
    assert res.exit_code == 1
    assert error_line(res) == ("no input was scored: IMAGES named no image (an empty folder or "
                               "list?)")


def test_predict_from_images_scores_nothing_nonfinite(tmp_path, monkeypatch):
    """The image route: an input whose score comes out NaN is an error row (or, with on_error
    "fail", the error), never a blank score counted as scored."""
    from amnet.core.errors import AmnetError
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet
    from amnet.predict.predictor import Predictor
    from amnet.predict.scoring import InputItem, predict_items
    from conftest import write_image
    from test_predict import _backbone_prov

    items = [InputItem(f"i{i}.jpg", write_image(tmp_path / f"i{i}.jpg", seed=i)) for i in range(3)]
    model = AMNet(AMNetConfig(**TINY, grid=2, in_channels=1024))
    prov = dict(_backbone_prov("random:0"), image_size=32)
    p = Predictor.from_checkpoint([save_checkpoint(make_checkpoint(model, backbone=prov),
                                                   tmp_path / "h.pt")], device="cpu")
    real = Predictor.predict_images

    def second_is_nan(self, x):
        pred = real(self, x)
        pred.score[1] = np.nan
        return pred
    monkeypatch.setattr(Predictor, "predict_images", second_is_nan)
    res = list(predict_items(p, items, batch_size=3, progress=False))
    assert [r.error == "" for r in res] == [True, False, True]
    assert res[1].score is None and res[1].error == (
        "non-finite score (NaN/Inf): the head's weights or the features hold NaN/Inf")
    with pytest.raises(AmnetError, match=r"i1\.jpg: non-finite score"):
        list(predict_items(p, items, batch_size=3, progress=False, on_error="fail"))
