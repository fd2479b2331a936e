"""Converters to the canonical layout: demo, csv, LaMem-format sources (lamem without download,
sun), and the rule that bad input leaves an existing data set untouched."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from amnet.core.errors import AmnetError, SplitError
from amnet.data import (available_splits, images_root, kind_options, load_prepare_info,
                        prepare_dataset, read_dataset_split)
from amnet.data.listfiles import read_split, split_path

SMALL_DEMO = dict(n_images=60, image_size=48, splits=2)


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 (or link target) of everything under `folder`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def make_images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\xff\xd8not-really-a-jpeg")


def parts(dataset: Path, k: int) -> dict[str, list[tuple[str, float]]]:
    return {p: read_split(split_path(dataset, p, k)) for p in ("train", "val", "test")}


# ---- demo ------------------------------------------------------------------------------------

def test_demo_layout_counts_and_info(tmp_path: Path) -> None:
    out = tmp_path / "data" / "demo"
    info = prepare_dataset("demo", out, **SMALL_DEMO, fractions=[0.6, 0.2, 0.2])
    assert json.loads((out / "prepare.json").read_text()) == info == load_prepare_info(out)
    assert info["kind"] == "demo" and info["splits"] == [1, 2] and info["seed"] == 0
    assert set(info["counts"]) == {"1", "2"}
    for k in ("1", "2"):  # train_mean: the mean score of the split's train file, computed apart
        scores = np.loadtxt(out / "splits" / f"train_{k}.txt", usecols=1, dtype=np.float64)
        assert info["counts"][k] == {"train": 36, "val": 12, "test": 12,
                                     "train_mean": pytest.approx(scores.mean(), abs=1e-6)}
    assert info["counts"]["1"]["train_mean"] != info["counts"]["2"]["train_mean"]
    assert available_splits(out) == [1, 2]
    assert len(list((out / "images").iterdir())) == 60
    for k in (1, 2):
        split = {p: read_dataset_split(out, p, k) for p in ("train", "val", "test")}
        names = [n for items in split.values() for n, _ in items]
        assert len(names) == len(set(names)) == 60  # disjoint and covering
    assert parts(out, 1)["test"] != parts(out, 2)["test"]
    assert no_leftovers(out.parent)


def test_demo_is_deterministic_and_seeded(tmp_path: Path) -> None:
    prepare_dataset("demo", tmp_path / "a", **SMALL_DEMO)
    prepare_dataset("demo", tmp_path / "b", **SMALL_DEMO)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a == b  # same bytes twice, prepare.json included
    prepare_dataset("demo", tmp_path / "c", **SMALL_DEMO, seed=1)
    c = tree_digest(tmp_path / "c")
    assert c["images/00000.jpg"] != a["images/00000.jpg"]
    # image i depends on (seed, i) only: a larger set starts with the same images
    prepare_dataset("demo", tmp_path / "d", **{**SMALL_DEMO, "n_images": 70})
    assert tree_digest(tmp_path / "d")["images/00059.jpg"] == a["images/00059.jpg"]


def test_demo_score_follows_the_object(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    info = prepare_dataset("demo", out, n_images=200, image_size=64, splits=1, image_format="png")
    rows = np.genfromtxt(out / "objects.csv", delimiter=",", names=True, dtype=None,
                         encoding="utf-8")
    assert len(rows) == 200 and (out / "images" / "00000.png").is_file()
    scores = rows["score"]
    assert 0 <= scores.min() and scores.max() <= 1
    assert 0.6 < info["score_stats"]["mean"] < 0.8
    # the score follows the red target's size and contrast, half each, plus small label noise
    assert spearmanr(rows["radius"], scores)[0] > 0.5
    assert spearmanr(rows["contrast"], scores)[0] > 0.5
    assert spearmanr(rows["clean_score"], scores)[0] > 0.9
    # the target sits in the central box (side 0.4 x 64 px), 2-3 look-alikes elsewhere
    assert (np.abs(rows["cx"] - 32) <= 0.2 * 64).all()
    assert (np.abs(rows["cy"] - 32) <= 0.2 * 64).all()
    assert set(rows["distractors"]) <= {0, 1, 2, 3} and rows["distractors"].mean() > 1.8


@pytest.mark.parametrize("options, message", [
    ({"fractions": [0.5, 0.5, 0.5]}, "fractions must be"),
    ({"n_images": 3}, "n_images must be at least"),
    ({"image_format": "gif"}, "image_format must be"),
    ({"splits": 0}, "no splits selected"),
    ({"colour": "red"}, "unknown option"),
])
def test_bad_options_leave_the_existing_data_set(tmp_path: Path, options, message) -> None:
    out = tmp_path / "demo"
    prepare_dataset("demo", out, **SMALL_DEMO)
    before = tree_digest(out)
    with pytest.raises(AmnetError, match=message):
        prepare_dataset("demo", out, **{**SMALL_DEMO, **options})
    assert tree_digest(out) == before
    assert no_leftovers(tmp_path)


def test_rebuild_replaces_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    prepare_dataset("demo", out, **SMALL_DEMO)
    (out / "stale.txt").write_text("from before")
    prepare_dataset("demo", out, **{**SMALL_DEMO, "seed": 5})
    assert not (out / "stale.txt").exists() and load_prepare_info(out)["seed"] == 5
    assert no_leftovers(tmp_path)


def test_unknown_kind_missing_option_and_missing_info(tmp_path: Path) -> None:
    with pytest.raises(AmnetError, match="data set kind 'isola-mat' needs option\\(s\\) root"):
        prepare_dataset("isola_mat", tmp_path / "x", root=None)
    assert kind_options("csv")["path"] is ... and kind_options("demo")["n_images"] == 2000
    with pytest.raises(AmnetError, match="unknown data set kind 'imagenet'"):
        prepare_dataset("imagenet", tmp_path / "x")
    with pytest.raises(AmnetError, match="run the prepare stage"):
        load_prepare_info(tmp_path / "x")


# ---- csv -------------------------------------------------------------------------------------

@pytest.fixture
def csv_images(tmp_path: Path) -> Path:
    folder = tmp_path / "user"
    make_images(folder, [f"img/{i:03d}.jpg" for i in range(30)])
    return folder


def write_csv(folder: Path, rows: list[str], header: str | None = "path,score") -> Path:
    path = folder / "labels.csv"
    path.write_text("\n".join(([header] if header else []) + rows) + "\n")
    return path


def good_rows(n: int = 30) -> list[str]:
    return [f"img/{i:03d}.jpg,{i / 40:.3f}" for i in range(n)]


@pytest.mark.parametrize("header", ["path,score", "Image,Label", None])
def test_csv_random_splits(tmp_path: Path, csv_images: Path, header) -> None:
    path = write_csv(csv_images, good_rows(), header)
    out = tmp_path / "data" / "mine"
    info = prepare_dataset("csv", out, path=path, splits=3, fractions=[0.6, 0.2, 0.2], seed=4)
    assert info["splits"] == [1, 2, 3] and info["counts"]["1"]["test"] == 6
    assert (out / "images").is_symlink()
    assert os.readlink(out / "images") == str(csv_images.resolve())
    for k in (1, 2, 3):
        split = {p: read_dataset_split(out, p, k) for p in ("train", "val", "test")}
        assert sorted(n for items in split.values() for n, _ in items) == \
            [f"img/{i:03d}.jpg" for i in range(30)]
    again = tmp_path / "again"
    prepare_dataset("csv", again, path=path, splits=3, fractions=[0.6, 0.2, 0.2], seed=4)
    assert tree_digest(again / "splits") == tree_digest(out / "splits")
    other = tmp_path / "other"
    prepare_dataset("csv", other, path=path, splits=3, fractions=[0.6, 0.2, 0.2], seed=5)
    assert tree_digest(other / "splits") != tree_digest(out / "splits")


def test_csv_scores_are_kept(tmp_path: Path, csv_images: Path) -> None:
    path = write_csv(csv_images, good_rows())
    out = tmp_path / "mine"
    prepare_dataset("csv", out, path=path, splits=1)
    got = dict(n for p in ("train", "val", "test") for n in read_split(split_path(out, p, 1)))
    assert got["img/010.jpg"] == 0.25


def test_csv_path_forms_and_split_column(tmp_path: Path, csv_images: Path) -> None:
    absolute = csv_images / "img" / "002.jpg"
    rows = ["./img/000.jpg,0.1,train", "img//001.jpg,0.2,Train", f"{absolute},0.3,validation",
            "img/003.jpg,0.4,test", "img/004.jpg,0.5,val"]
    path = write_csv(csv_images, rows, "path,score,split")
    out = tmp_path / "mine"
    info = prepare_dataset("csv", out, path=path)
    assert info["splits"] == [1] and info["assignment"] == "split column"
    assert parts(out, 1) == {"train": [("img/000.jpg", 0.1), ("img/001.jpg", 0.2)],
                             "val": [("img/002.jpg", 0.3), ("img/004.jpg", 0.5)],
                             "test": [("img/003.jpg", 0.4)]}
    with pytest.raises(AmnetError, match="has a split column, which fixes one split"):
        prepare_dataset("csv", tmp_path / "x", path=path, splits=3)


def test_csv_other_score_range_and_images_root(tmp_path: Path, csv_images: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    path = labels / "aesthetics.csv"
    path.write_text("".join(f"{i:03d}.jpg,{1 + i / 5}\n" for i in range(30)))
    out = tmp_path / "ava"
    info = prepare_dataset("csv", out, path=path, images_root=csv_images / "img",
                           score_range=[1, 10], splits=2, link="copy")
    assert info["score_range"] == [1.0, 10.0]
    assert not (out / "images").is_symlink() and (out / "images" / "029.jpg").is_file()
    assert read_dataset_split(out, "train", 1)  # checks with the recorded range
    with pytest.raises(SplitError, match="outside the declared range"):
        prepare_dataset("csv", tmp_path / "x", path=path, images_root=csv_images / "img")


def test_csv_hardlink_mode(tmp_path: Path, csv_images: Path) -> None:
    out = tmp_path / "mine"
    prepare_dataset("csv", out, path=write_csv(csv_images, good_rows()), link="hardlink")
    image = out / "images" / "img" / "000.jpg"
    assert image.is_file() and not (out / "images").is_symlink()
    assert os.stat(image).st_ino == os.stat(csv_images / "img" / "000.jpg").st_ino


@pytest.mark.parametrize("bad_row, line, message", [
    ("img/000.jpg,0.9", 32, "duplicate image 'img/000.jpg' (first on line 2)"),
    ("img/030.jpg,1.5", 32, "outside the declared range [0, 1]"),
    ("img/030.jpg,good", 32, "not a finite number"),
    ("img/missing.jpg,0.5", 32, "not found under"),
    ("../outside.jpg,0.5", 32, "contains '..'"),
    ("/etc/hostname,0.5", 32, "is outside the images root"),
    ("img/link.jpg,0.5", 32, "resolves outside the images root"),
    ("img/with space.jpg,0.5", 32, "contains whitespace"),
    ("img/030.jpg", 32, "expected 2 fields"),
    (",0.5", 32, "empty image name"),
])
def test_csv_bad_input_keeps_existing(tmp_path: Path, csv_images: Path, bad_row, line,
                                      message) -> None:
    (tmp_path / "outside.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "outside.jpg", csv_images / "img" / "link.jpg")
    make_images(csv_images, ["img/030.jpg", "img/with space.jpg"])
    out = tmp_path / "mine"
    prepare_dataset("csv", out, path=write_csv(csv_images, good_rows()))
    before = tree_digest(out)
    path = write_csv(csv_images, good_rows() + [bad_row])
    with pytest.raises(SplitError) as e:
        prepare_dataset("csv", out, path=path)
    assert str(e.value).startswith(f"{path}:{line}: ") and message in str(e.value)
    assert tree_digest(out) == before and no_leftovers(tmp_path)


def test_csv_empty_and_too_small(tmp_path: Path, csv_images: Path) -> None:
    with pytest.raises(SplitError, match="no rows"):
        prepare_dataset("csv", tmp_path / "x", path=write_csv(csv_images, [], "path,score"))
    with pytest.raises(AmnetError, match="too few"):
        prepare_dataset("csv", tmp_path / "x", path=write_csv(csv_images, good_rows(2)))
    rows = ["img/000.jpg,0.1,train", "img/001.jpg,0.2,test"]
    with pytest.raises(AmnetError, match="split 1: val would be empty"):
        prepare_dataset("csv", tmp_path / "x", path=write_csv(csv_images, rows, "path,score,split"))
    with pytest.raises(SplitError, match=r"labels.csv:3: split 'dev' is not train, val or test"):
        prepare_dataset("csv", tmp_path / "x", path=write_csv(
            csv_images, ["img/000.jpg,0.1,train", "img/001.jpg,0.2,dev"], "path,score,split"))
    with pytest.raises(SplitError, match="needs a path column"):
        prepare_dataset("csv", tmp_path / "x", path=write_csv(csv_images, good_rows(), "a,b"))
    with pytest.raises(AmnetError, match="CSV not found"):
        prepare_dataset("csv", tmp_path / "x", path=csv_images / "nope.csv")
    assert not (tmp_path / "x").exists() and no_leftovers(tmp_path)


# ---- LaMem-format sources: lamem (already on disk) and sun ----------------------------------

def make_lamem_source(root: Path, n: int = 40, splits: int = 2, val: bool = True) -> Path:
    """A tiny LaMem-format source: images/ + splits/{train,[val,]test}_k.txt."""
    names = [f"{i:08d}.jpg" for i in range(n)]
    make_images(root / "images", names)
    (root / "splits").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(1, splits + 1):
        order = rng.permutation(n)
        cut = {"train": order[: n // 2], "val": order[n // 2: 3 * n // 4] if val else None,
               "test": order[3 * n // 4:] if val else order[n // 2:]}
        for part, idx in cut.items():
            if idx is None:
                continue
            lines = "".join(f"{names[i]} {rng.uniform(0.3, 1):.6f}\n" for i in sorted(idx))
            (root / "splits" / f"{part}_{k}.txt").write_text(lines)
    return root


def test_lamem_from_disk(tmp_path: Path) -> None:
    src = make_lamem_source(tmp_path / "src" / "lamem")  # found one level below root
    out = tmp_path / "data" / "lamem"
    info = prepare_dataset("lamem", out, root=tmp_path / "src")
    assert info["splits"] == [1, 2] and info["val"]["per_split"] == {"1": "file", "2": "file"}
    assert info["source"] == str(src.resolve())
    assert os.readlink(out / "images") == str((src / "images").resolve())
    for k in (1, 2):
        for part in ("train", "val", "test"):
            assert read_split(split_path(out, part, k)) == read_split(src / "splits" /
                                                                      f"{part}_{k}.txt")
    assert read_dataset_split(out, "test", 1)  # the images link passes the escape check
    assert images_root(out) == out / "images"
    (out / "images").unlink()  # as after `dvc checkout`: DVC does not store the link
    assert images_root(out) == (src / "images").resolve()
    assert read_dataset_split(out, "test", 1)
    one = prepare_dataset("lamem", tmp_path / "one", root=src, splits=[2])
    assert one["splits"] == [2] and available_splits(tmp_path / "one") == [2]


def test_lamem_absent_without_download(tmp_path: Path) -> None:
    with pytest.raises(AmnetError) as e:
        prepare_dataset("lamem", tmp_path / "out", root=tmp_path / "nothing")
    msg = str(e.value)
    assert "LaMem not found under" in msg and "memorability.csail.mit.edu" in msg
    assert "download: true" in msg and "\n" not in msg


def test_sun_carves_val_from_train(tmp_path: Path) -> None:
    src = make_lamem_source(tmp_path / "SUN", n=40, splits=3, val=False)
    out = tmp_path / "data" / "sun"
    info = prepare_dataset("sun", out, root=src, val_fraction=0.25, seed=7)
    assert info["splits"] == [1, 2, 3] and info["val"]["per_split"]["1"] == "carved from train"
    assert info["val"]["fraction"] == 0.25 and info["seed"] == 7
    for k in (1, 2, 3):
        got = parts(out, k)
        source_train = read_split(src / "splits" / f"train_{k}.txt")
        assert len(got["val"]) == 5 and len(got["train"]) == 15
        assert sorted(got["train"] + got["val"]) == sorted(source_train)
        assert got["test"] == read_split(src / "splits" / f"test_{k}.txt")
    again = prepare_dataset("sun", tmp_path / "again", root=src, val_fraction=0.25, seed=7)
    assert tree_digest(tmp_path / "again" / "splits") == tree_digest(out / "splits")
    assert again["counts"] == info["counts"]
    prepare_dataset("sun", tmp_path / "other", root=src, val_fraction=0.25, seed=8)
    assert tree_digest(tmp_path / "other" / "splits") != tree_digest(out / "splits")
    with pytest.raises(AmnetError, match=r"split\(s\) \[4\] not found"):
        prepare_dataset("sun", tmp_path / "x", root=src, splits=4)
    with pytest.raises(AmnetError, match="SUN Memorability not found"):
        prepare_dataset("sun", tmp_path / "x", root=tmp_path / "nothing")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "bad line here\n", "expected '<image name> <score>'"),
    (lambda t: t + "00000099.jpg 0.5\n", "image '00000099.jpg' not found"),
    (lambda t: t + "../x.jpg 0.5\n", "contains '..'"),
    (lambda t: t + "/abs/x.jpg 0.5\n", "absolute path"),
    (lambda t: t + t.splitlines()[0] + "\n", "duplicate image name"),
    (lambda t: t + "00000039.jpg 1.2\n", "outside the declared range"),
    (lambda t: "", "empty split"),
])
def test_lamem_format_bad_input_names_source_and_keeps_existing(tmp_path: Path, edit,
                                                                message) -> None:
    src = make_lamem_source(tmp_path / "src")
    out = tmp_path / "data" / "lamem"
    prepare_dataset("lamem", out, root=src)
    before = tree_digest(out)
    val2 = src / "splits" / "val_2.txt"
    text = val2.read_text()
    val2.write_text(edit(text))  # the range is checked before duplicates: 1.2 always fails
    with pytest.raises(SplitError) as e:
        prepare_dataset("lamem", out, root=src)
    assert str(e.value).startswith(f"{val2}") and message in str(e.value)
    assert tree_digest(out) == before and no_leftovers(out.parent)


def test_lamem_overlapping_parts_are_rejected(tmp_path: Path) -> None:
    src = make_lamem_source(tmp_path / "src")
    first_test = (src / "splits" / "test_1.txt").read_text().splitlines()[0]
    with open(src / "splits" / "train_1.txt", "a") as f:
        f.write(first_test + "\n")
    with pytest.raises(SplitError, match="is in both train and test; .* must be disjoint"):
        prepare_dataset("lamem", tmp_path / "out", root=src)
    assert not (tmp_path / "out").exists()


def test_symlinked_image_out_of_source_root(tmp_path: Path) -> None:
    src = make_lamem_source(tmp_path / "src")
    (tmp_path / "secret.jpg").write_bytes(b"s")
    target = src / "images" / "00000000.jpg"
    target.unlink()
    os.symlink(tmp_path / "secret.jpg", target)
    with pytest.raises(SplitError, match="resolves outside the images root"):
        prepare_dataset("lamem", tmp_path / "out", root=src)
