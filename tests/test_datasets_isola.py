"""Isola/SUN MATLAB layout (LNSIM): seeded image halves, hrs1 for train/val, hrs2 for test,
human consistency. A tiny synthetic .mat tests the converter; the real LNSIM when present."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.stats import spearmanr

from amnet.core.errors import AmnetError
from amnet.data import prepare_dataset, read_dataset_split
from amnet.data.listfiles import read_split, split_path

LNSIM = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lnsim"


def make_isola(root: Path, n: int = 40, rows: int = 3, seed: int = 0, transpose: bool = False,
               hrs2_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    (root / "Image_data").mkdir(parents=True)
    (root / "Random_splits").mkdir()
    for j in range(n):
        (root / "Image_data" / f"{j + 1:04d}.jpg").write_bytes(b"\xff\xd8x")
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.2, 0.9, n)
    h1 = np.clip(truth + rng.normal(0, 0.05, (rows, n)), 0, 1)
    h2 = np.clip(truth + rng.normal(0, 0.05, (hrs2_rows or rows, n)), 0, 1)
    for name, value in (("subject_hrs1", h1), ("subject_hrs2", h2)):
        scipy.io.savemat(root / "Random_splits" / f"{name}.mat",
                         {name: value.T if transpose else value})
    return h1, h2


def read_parts(out: Path, k: int) -> dict[str, list[tuple[str, float]]]:
    return {p: read_split(split_path(out, p, k)) for p in ("train", "val", "test")}


def test_isola_protocol(tmp_path: Path) -> None:
    h1, h2 = make_isola(tmp_path / "src")
    out = tmp_path / "data" / "iso"
    info = prepare_dataset("isola-mat", out, root=tmp_path / "src", splits=2, val_fraction=0.1,
                           seed=3)
    assert info["splits"] == [1, 2] and info["seed"] == 3
    assert os.readlink(out / "images") == str((tmp_path / "src" / "Image_data").resolve())
    col = {f"{j + 1:04d}.jpg": j for j in range(40)}
    for k in (1, 2):
        got = read_parts(out, k)
        # train_mean: observer group 1's mean over the train names, from the .mat values
        train_cols = [col[n] for n, _ in got["train"]]
        assert info["counts"][str(k)] == {"train": 18, "val": 2, "test": 20,
                                          "train_mean": pytest.approx(h1[k - 1, train_cols].mean(),
                                                                      abs=2e-6)}
        names = [n for items in got.values() for n, _ in items]
        assert sorted(names) == sorted(col)  # halves disjoint and covering
        for part, scores in (("train", h1), ("val", h1), ("test", h2)):
            for name, score in got[part]:
                assert score == pytest.approx(scores[k - 1, col[name]], abs=1e-6)
        test_idx = [col[n] for n, _ in got["test"]]
        rho = spearmanr(h1[k - 1, test_idx], h2[k - 1, test_idx])[0]
        human = json.loads((out / "splits" / f"human_{k}.json").read_text())
        assert human["rho_test_half"] == pytest.approx(rho, abs=1e-6) and human["split"] == k
        assert info["human_consistency"]["per_split"][str(k)]["rho_test_half"] == \
            human["rho_test_half"]
        assert read_dataset_split(out, "train", k)
    assert read_parts(out, 1)["test"] != read_parts(out, 2)["test"]
    hc = info["human_consistency"]
    assert hc["mean"] == pytest.approx(np.mean([hc["per_split"][k]["rho_test_half"]
                                                for k in ("1", "2")]), abs=1e-6)
    assert "scipy" in info["versions"] and set(info["score_files"]) == {"subject_hrs1.mat",
                                                                        "subject_hrs2.mat"}


def test_isola_seed_and_split_selection(tmp_path: Path) -> None:
    make_isola(tmp_path / "src")
    a = prepare_dataset("isola-mat", tmp_path / "a", root=tmp_path / "src", seed=1)
    assert a["splits"] == [1, 2, 3]  # default: every row of the .mat
    b = prepare_dataset("isola-mat", tmp_path / "b", root=tmp_path / "src", splits=[3], seed=1)
    assert b["splits"] == [3]
    assert read_parts(tmp_path / "a", 3) == read_parts(tmp_path / "b", 3)  # k's draw is its own
    prepare_dataset("isola-mat", tmp_path / "c", root=tmp_path / "src", splits=[3], seed=2)
    assert read_parts(tmp_path / "c", 3)["test"] != read_parts(tmp_path / "b", 3)["test"]


def test_isola_transposed_arrays_are_accepted(tmp_path: Path) -> None:
    make_isola(tmp_path / "src", transpose=True)
    info = prepare_dataset("isola-mat", tmp_path / "out", root=tmp_path / "src", splits=1)
    assert info["counts"]["1"]["test"] == 20


def test_isola_bad_input_keeps_existing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    h1, h2 = make_isola(src)
    out = tmp_path / "out"
    prepare_dataset("isola-mat", out, root=src, splits=1)
    before = sorted(p.read_bytes() for p in (out / "splits").iterdir())
    mat = src / "Random_splits" / "subject_hrs2.mat"

    def expect(message: str, **options) -> None:
        with pytest.raises(AmnetError, match=message):
            prepare_dataset("isola-mat", out, **{"root": src, "splits": 1, **options})
        assert sorted(p.read_bytes() for p in (out / "splits").iterdir()) == before

    expect(r"split 4 requested but the source has only 3", splits=4)
    expect("val_fraction must be in", val_fraction=1.5)
    bad = h2.copy()
    bad[0, 5] = 1.7
    scipy.io.savemat(mat, {"subject_hrs2": bad})
    expect(r"subject_hrs2.mat: split 1, image 0006.jpg: score 1.7 is not finite or outside")
    bad[0, 5] = np.nan
    scipy.io.savemat(mat, {"subject_hrs2": bad})
    expect("score nan is not finite")
    scipy.io.savemat(mat, {"subject_hrs2": h2[:, :30]})
    expect("30 columns .* holds 40 images")
    scipy.io.savemat(mat, {"a": h2, "b": h2})
    expect(r"expected one 2-D numeric variable, found \['a', 'b'\]")
    mat.write_bytes(b"not a mat file at all")
    expect("not a readable MATLAB file")
    mat.unlink()
    expect("subject_hrs2.mat: not found")
    scipy.io.savemat(mat, {"subject_hrs2": h2})
    os.symlink(tmp_path / "elsewhere.jpg", src / "Image_data" / "0041.jpg")
    (tmp_path / "elsewhere.jpg").write_bytes(b"x")
    expect("resolves outside the images root")
    expect("not found; point root at", root=tmp_path / "nothing")


@pytest.mark.skipif(not LNSIM.is_dir(), reason=f"LNSIM not present at {LNSIM} "
                    "(../shared/data/lnsim relative to the project root)")
def test_real_lnsim(tmp_path: Path) -> None:
    out = tmp_path / "lnsim"
    info = prepare_dataset("isola-mat", out, root=LNSIM)
    assert info["splits"] == list(range(1, 26))
    train = np.loadtxt(out / "splits" / "train_1.txt", usecols=1, dtype=np.float64)
    assert info["counts"]["1"] == {"train": 1184, "val": 132, "test": 1316,
                                   "train_mean": pytest.approx(train.mean(), abs=1e-6)}
    per_split = info["human_consistency"]["per_split"]
    all_images = np.mean([v["rho_all_images"] for v in per_split.values()])
    assert all_images == pytest.approx(0.779, abs=0.001)  # README: 0.779 (sd 0.005)
    assert 0.7 < info["human_consistency"]["mean"] < 0.85
    assert read_dataset_split(out, "test", 25)[0][0].endswith(".jpg")
