"""Folder listing and list files for extract and predict (issue 11, defect 4): symlink loops,
FIFOs / sockets / devices named like images, `./` spellings and `..` traversal, GIF and other
formats, unreadable files and folders. Each case: exit code, the exact line, nothing valid lost."""
from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from amnet.cli import cache_cli, main
from amnet.core.errors import ImageError, SplitError
from amnet.data.listfiles import read_name_list, read_split
from amnet.cache.reader import FeatureCache
from amnet.extract.image_files import (collect_images, left_out_line, list_image_folder, open_image_rgb,
                                  read_image_list)
from amnet.extract.run import extract
from amnet.predict.scoring import InputItem, collect_inputs
from conftest import rgb_array, save_small_head, write_image

SIZE = 32


def _permissions_bite() -> bool:
    """Whether chmod 000 stops this process from reading (not as root, unless its
    CAP_DAC_OVERRIDE is dropped)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x"
        p.write_bytes(b"x")
        p.chmod(0)
        try:
            p.read_bytes()
        except PermissionError:
            return True
        finally:
            p.chmod(0o600)
    return False


NO_BITE = "chmod 000 does not stop this process (root): the simulated cases above cover it"


def _tree(root: Path, names=("a.jpg", "sub/c.jpg", "sub/deep/d.jpg")) -> Path:
    for i, n in enumerate(names):
        write_image(root / n, seed=i)
    return root


def _names(folder: Path, skipped: list | None = None) -> list[str]:
    return [n for n, _ in list_image_folder(folder, skipped)]


def _extract(items, out, backbones, workers: int = 0, **kw):
    trunk_spec = backbones("random:0", "fp32")
    return extract(items, out, weights="random:0", precision="fp32", image_size=SIZE,
                   device="cpu", workers=workers, progress=False, backbone=trunk_spec, **kw)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---- symlink loops: each real folder once -------------------------------------------------------

LINKS = {
    # links (name -> target), real files made besides the base tree, the names listed besides
    # the base tree's, what is left out (name, reason)
    "up to the top": ({"sub/up": ".."}, [], [],
                      [("sub/up", "a link to the top folder, listed already; not followed")]),
    "to itself": ({"sub/self": "."}, [], [],
                  [("sub/self", "a link to 'sub', listed already; not followed")]),
    "two levels up": ({"sub/deep/back": "../.."}, [], [],
                      [("sub/deep/back", "a link to the top folder, listed already; not followed")]),
    "a second name sorted before the real one": (
        {"a_twin": "sub"}, [], [], [("a_twin", "a link to 'sub', listed already; not followed")]),
    "two folders linking each other": (
        {"sub/to_x": "../x", "x/to_sub": "../sub"}, ["x/e.jpg"], ["x/e.jpg"],
        [("sub/to_x", "a link to 'x', listed already; not followed"),
         ("x/to_sub", "a link to 'sub', listed already; not followed")]),
    "two links to one outside folder": (
        {"o1": "../outside", "o2": "../outside"}, [], ["o1/o.jpg"],
        [("o2", "a link to 'o1', listed already; not followed")]),
    "a link inside a followed link": (
        {"o1": "../outside", "../outside/back": "../images"}, [], ["o1/o.jpg"],
        [("o1/back", "a link to the top folder, listed already; not followed")]),
}


@pytest.mark.parametrize("case", list(LINKS))
def test_symlinked_folders_are_listed_once(tmp_path, case):
    links, make, extra, left = LINKS[case]
    root = _tree(tmp_path / "images")
    write_image(tmp_path / "outside" / "o.jpg", seed=9)
    for n in make:
        write_image(root / n, seed=8)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    skipped: list = []
    assert _names(root, skipped) == sorted(["a.jpg", "sub/c.jpg", "sub/deep/d.jpg", *extra])
    assert sorted(skipped) == sorted(left)


def test_loop_of_23_files_gives_23_names_in_extract_and_predict(tmp_path, backbones, no_hang):
    """The reported case: `sub/up -> ..` turned 23 files into 943 names."""
    root = tmp_path / "images"
    names = [f"img{i:02d}.jpg" for i in range(20)] + ["sub/s0.jpg", "sub/s1.jpg", "sub/s2.jpg"]
    for i, n in enumerate(names):
        write_image(root / n, w=32, h=32, seed=i)
    os.symlink("..", root / "sub" / "up")
    out = tmp_path / "f.h5"
    with no_hang(300):
        res = CliRunner().invoke(cache_cli, ["extract", str(root), "--out", str(out), "--weights",
                                             "random:0", "--image-size", str(SIZE), "--device",
                                             "cpu", "--precision", "fp32", "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    assert res.output == (f"warning: {root}: left out 1 entry: sub/up (a link to the top "
                          "folder, listed already; not followed)\n")
    with FeatureCache(out) as c:
        assert list(c.names) == sorted(names) and c.complete and c.missing(names) == []
    skipped: list = []
    items = collect_inputs([root], skipped=skipped)
    assert [it.name for it in items] == sorted(names)
    assert skipped == [(f"{root.as_posix()}/sub/up",
                        "a link to the top folder, listed already; not followed")]


def test_left_out_line_shows_three_and_counts_the_rest():
    skipped = [(f"x{i}.ico", "why") for i in range(5)]
    assert left_out_line("imgs", skipped) == ("imgs: left out 5 entries: x0.ico (why); "
                                              "x1.ico (why); x2.ico (why); and 2 more")


# ---- FIFOs, sockets, devices named like images: refused without reading --------------------------

def _make_special(path: Path, kind: str) -> str:
    """Create `kind` at `path`; returns the reason decoding must give."""
    if kind == "fifo":
        os.mkfifo(path)
        return "a FIFO, not an image file"
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()  # the socket file stays
        return "a socket, not an image file"
    if kind == "device":
        os.symlink("/dev/null", path)  # a character device, no root needed
        return "a character device, not an image file"
    if kind == "dangling link":
        os.symlink(path.parent / "nowhere.jpg", path)
        return "file not found"
    raise ValueError(kind)


SPECIAL = ["fifo", "socket", "device", "dangling link"]


@pytest.fixture
def special_dir(tmp_path_factory):
    # short paths: a UNIX socket's path is limited to ~107 bytes
    def make(kind: str) -> tuple[Path, Path, str]:
        root = tmp_path_factory.mktemp("sp")
        for i, n in enumerate(("a.jpg", "b.png", "z.jpg")):
            write_image(root / n, w=32, h=32, seed=i)
        special = root / "m.jpg"
        return root, special, f"{special}: {_make_special(special, kind)}"
    return make


@pytest.mark.parametrize("kind", SPECIAL)
def test_special_file_is_refused_without_blocking(special_dir, kind, no_hang):
    root, special, reason = special_dir(kind)
    with no_hang(20), pytest.raises(ImageError) as e:
        open_image_rgb(special)
    assert str(e.value) == reason
    assert _names(root) == ["a.jpg", "b.png", "m.jpg", "z.jpg"]  # listed: recorded, not dropped


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("kind", SPECIAL)
def test_extract_skip_records_the_special_file_and_keeps_every_image(
        special_dir, tmp_path, backbones, no_hang, kind, workers):
    root, special, reason = special_dir(kind)
    out, ref = tmp_path / "f.h5", tmp_path / "ref.h5"
    with no_hang(300):
        s = _extract(list_image_folder(root), out, backbones, workers, on_error="skip",
                     batch_size=1)
    assert s["complete"] and s["skipped"] == 1 and s["extracted"] == 3
    good = ["a.jpg", "b.png", "z.jpg"]
    _extract([(n, root / n) for n in good], ref, backbones, batch_size=1)
    with FeatureCache(out) as c, FeatureCache(ref) as r:
        assert c.failed == {"m.jpg": reason}
        assert c.missing(good) == []
        assert np.array_equal(c.load(good).numpy(), r.load(good).numpy())  # nothing valid lost


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_extract_fail_stops_on_the_special_file_with_one_line(special_dir, tmp_path, kind,
                                                             no_hang):
    root, special, reason = special_dir(kind)
    out = tmp_path / "f.h5"
    with no_hang(300):
        res = CliRunner().invoke(cache_cli, ["extract", str(root), "--out", str(out), "--weights",
                                             "random:0", "--image-size", str(SIZE), "--device",
                                             "cpu", "--batch-size", "1", "--workers", "0", "-q"])
    assert res.exit_code == 1
    assert res.output == (f"Error: {reason} (features extracted so far are kept in {out}; "
                          "rerun to resume, or pass --on-error skip)\n")
    with FeatureCache(out) as c:  # the two images before it (sorted) were kept
        assert c.missing(["a.jpg", "b.png"]) == [] and c.missing(["z.jpg"]) == ["z.jpg"]


def test_predict_writes_the_reason_and_scores_the_rest(special_dir, tmp_path, backbones, no_hang):
    root, special, reason = special_dir("fifo")
    head = save_small_head(tmp_path / "head.pt", backbones("random:0", "fp32")[1], SIZE)
    out = tmp_path / "p.csv"
    with no_hang(300):
        res = CliRunner().invoke(main, ["predict", str(root), "--checkpoint", str(head), "--out",
                                        str(out), "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == f"scored 3 of 4 inputs -> {out}; 1 failed (see the error column)"
    rows = _rows(out)
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "b.png", "m.jpg", "z.jpg"]
    assert [r["error"] for r in rows] == ["", "", reason, ""]
    assert all(r["score"] for r in rows if not r["error"])


def test_list_file_naming_a_fifo_is_refused_naming_file_and_line(special_dir):
    root, special, _ = special_dir("fifo")
    lst = root / "list.txt"
    lst.write_text("a.jpg\nm.jpg\n")
    with pytest.raises(SplitError) as e:
        read_image_list(lst)
    assert str(e.value) == (f"{lst}:2: image 'm.jpg' under {os.path.realpath(root)} is a FIFO, "
                            "not an image file")


# ---- names in list files: one spelling; `..` refused with file:line -----------------------------

@pytest.mark.parametrize("spelling, name", [
    ("./a.jpg", "a.jpg"), (".//a.jpg", "a.jpg"), ("a.jpg", "a.jpg"), ("sub/./c.jpg", "sub/c.jpg"),
    ("sub//c.jpg", "sub/c.jpg"), ("./sub/c.jpg", "sub/c.jpg"), ("sub/c.jpg/", "sub/c.jpg")])
def test_names_are_normalised(tmp_path, spelling, name):
    root = _tree(tmp_path / "images")
    lst = root / "list.txt"
    lst.write_text(f"{spelling} 0.5\n")
    assert read_name_list(lst) == [(name, 0.5)]
    assert read_split(lst, images_root=root) == [(name, 0.5)]
    assert read_image_list(lst) == [(name, root / name)]


@pytest.mark.parametrize("first, second", [("a.jpg", "./a.jpg"), ("./a.jpg", "a.jpg"),
                                           ("sub/c.jpg", "sub//./c.jpg")])
def test_two_spellings_of_one_name_are_a_duplicate(tmp_path, first, second):
    root = _tree(tmp_path / "images")
    lst = root / "list.txt"
    lst.write_text(f"{first}\n\n{second}\n")
    name = str(Path(first.replace("./", "")))
    written = f" (written {second!r})" if second != name else ""
    with pytest.raises(SplitError) as e:
        read_name_list(lst)
    assert str(e.value) == f"{lst}:3: duplicate image name {name!r}{written} (first on line 1)"
    assert [n for n, _ in read_name_list(lst, unique=False)] == [name, name]  # predict: twice


TRAVERSAL = [("../x.jpg", "../x.jpg"), ("sub/../../x.jpg", "sub/../../x.jpg"),
             ("./../x.jpg", "../x.jpg"), ("sub/../a.jpg", "sub/../a.jpg"),
             ("sub/./../../images/a.jpg", "sub/../../images/a.jpg")]


@pytest.mark.parametrize("line, shown", TRAVERSAL)
def test_traversal_is_refused_by_extract_and_predict_naming_file_and_line(tmp_path, line, shown):
    root = _tree(tmp_path / "images")
    lst = root / "list.txt"
    lst.write_text(f"a.jpg\n{line}\n")
    why = (f"{lst}:2: image name {shown!r} contains '..': names must stay inside the images "
           "root and are never resolved through '..'")
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cache_cli, ["extract", str(lst), "--out", str(out), "--weights",
                                         "random:0"])
    assert (res.exit_code, res.output) == (1, f"Error: {why}\n") and not out.exists()
    head = tmp_path / "h.pt"   # never read: the list is refused first
    head.write_bytes(b"")
    res = CliRunner().invoke(main, ["predict", str(lst), "--checkpoint", str(head),
                                    "--out", str(tmp_path / "p.csv")])
    assert (res.exit_code, res.output) == (1, f"Error: {why}\n")
    assert not (tmp_path / "p.csv").exists()


def test_a_cache_made_from_dot_slash_names_serves_either_spelling(tmp_path, backbones):
    root = _tree(tmp_path / "images")
    lst = root / "list.txt"
    lst.write_text("./a.jpg\nsub/./c.jpg\n")
    out = tmp_path / "f.h5"
    _extract(collect_images(lst), out, backbones, batch_size=2)
    split = tmp_path / "test.txt"
    split.write_text("./a.jpg 0.4\nsub/c.jpg 0.6\n")
    names = [n for n, _ in read_split(split)]
    with FeatureCache(out) as c:
        assert list(c.names) == ["a.jpg", "sub/c.jpg"] and c.missing(names) == []


# ---- GIF and other formats: first frame (noted) or left out with a reason ------------------------

def _frames(n: int) -> list[Image.Image]:
    return [Image.fromarray(rgb_array(32, 32, seed=10 + i)) for i in range(n)]


FORMATS = {  # file name, PIL save arguments, frames, the note (None: a single frame)
    "animated GIF": ("anim.gif", {"save_all": True, "duration": 40}, 3, "an animated GIF"),
    "still GIF": ("still.GIF", {}, 1, None),
    "animated PNG": ("anim.png", {"save_all": True, "duration": 40}, 2, "an animated PNG"),
    "APNG suffix": ("anim.apng", {"format": "PNG", "save_all": True}, 2, "an animated PNG"),
    "animated WebP": ("anim.webp", {"save_all": True, "lossless": True}, 2, "an animated WebP"),
    "multi-page TIFF": ("pages.tiff", {"save_all": True}, 3, "a multi-page TIFF"),
    "TIFF": ("one.tif", {}, 1, None),
    "PPM": ("one.ppm", {}, 1, None),
    "JFIF": ("one.jfif", {"format": "JPEG"}, 1, None),
}


@pytest.mark.parametrize("case", list(FORMATS))
def test_listed_formats_give_their_first_frame(tmp_path, case):
    name, kw, n, note = FORMATS[case]
    frames = _frames(n)
    path = tmp_path / name
    frames[0].save(path, append_images=frames[1:], **kw)
    assert _names(tmp_path) == [name]
    notes: list = []
    got = np.asarray(open_image_rgb(path, notes))
    with Image.open(path) as im:  # PIL's own first frame, as the original's convert("RGB")
        first = np.asarray(im.convert("RGB"))
        if n > 1:
            im.seek(1)
            assert not np.array_equal(got, np.asarray(im.convert("RGB")))
    assert np.array_equal(got, first)
    assert notes == ([f"{path} ({note})"] if note else [])


@pytest.mark.parametrize("name, fmt", [("icon.ico", "ICO"), ("old.pcx", "PCX"),
                                       ("pic.TGA", "TGA"), ("sgi.rgb", "SGI")])
def test_other_pil_formats_are_left_out_with_a_reason(tmp_path, name, fmt):
    Image.fromarray(rgb_array(32, 32)).save(tmp_path / name, format=fmt if fmt != "ICO" else None)
    write_image(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")   # not an image format: silently ignored
    (tmp_path / "cache.h5").write_bytes(b"\x89HDF")       # a PIL stub format: silently ignored
    skipped: list = []
    assert _names(tmp_path, skipped) == ["a.jpg"]
    assert skipped == [(name, f"{fmt}: not a format the listing takes; convert it to PNG or "
                              "JPEG to include it")]


def test_extract_and_predict_note_the_animated_files(tmp_path, backbones):
    root = tmp_path / "images"
    write_image(root / "a.jpg", w=32, h=32)
    frames = _frames(3)
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rgb_array(32, 32)).save(root / "icon.ico")
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cache_cli, ["extract", str(root), "--out", str(out), "--weights",
                                         "random:0", "--image-size", str(SIZE), "--device", "cpu",
                                         "--precision", "fp32", "--workers", "1"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == (f"warning: {root}: left out 1 entry: icon.ico (ICO: not a format the "
                        "listing takes; convert it to PNG or JPEG to include it)")
    assert lines[1] == f"note: first frame used of 1 multi-frame file(s): {root}/anim.gif (an animated GIF)"
    with FeatureCache(out) as c:
        assert list(c.names) == ["a.jpg", "anim.gif"] and c.complete and not c.failed
    head = save_small_head(tmp_path / "head.pt", backbones("random:0", "fp32")[1], SIZE)
    csv_out = tmp_path / "p.csv"
    res = CliRunner().invoke(main, ["predict", str(root), "--checkpoint", str(head), "--out",
                                    str(csv_out), "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == (f"scored 2 of 2 inputs -> {csv_out}; 1 multi-frame "
                                           "images scored on their first frame")


# ---- unreadable files and folders (chmod 000) -----------------------------------------------------

@pytest.fixture
def denied(monkeypatch):
    """`denied(path)`: opening `path` (or listing it, for a folder) raises PermissionError, as
    chmod 000 does for anyone but root."""
    import amnet.extract.image_files as I
    blocked: set[str] = set()
    real_open, real_scandir = os.open, os.scandir

    def fake_open(path, *a, **kw):
        if os.fspath(path) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *a, **kw)

    def fake_scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(I.os, "open", fake_open)
    monkeypatch.setattr(I.os, "scandir", fake_scandir)
    return lambda p: blocked.add(os.fspath(p))


def test_unreadable_image_is_a_clean_recorded_failure(tmp_path, backbones, denied):
    root = _tree(tmp_path / "images")
    denied(root / "sub" / "c.jpg")
    with pytest.raises(ImageError) as e:
        open_image_rgb(root / "sub" / "c.jpg")
    assert str(e.value) == f"{root}/sub/c.jpg: cannot read (permission denied)"
    out = tmp_path / "f.h5"
    s = _extract(list_image_folder(root), out, backbones, on_error="skip", batch_size=2)
    assert s["complete"] and (s["extracted"], s["skipped"]) == (2, 1)
    with FeatureCache(out) as c:
        assert c.failed == {"sub/c.jpg": f"{root}/sub/c.jpg: cannot read (permission denied)"}
        assert c.missing(["a.jpg", "sub/deep/d.jpg"]) == []
    with pytest.raises(ImageError, match=r"sub/c.jpg: cannot read \(permission denied\)$"):
        _extract(list_image_folder(root), tmp_path / "g.h5", backbones, on_error="fail")


def test_unreadable_image_in_predict_is_an_error_row(tmp_path, backbones, denied):
    from amnet.predict.predictor import Predictor
    from amnet.predict.scoring import predict_items
    root = _tree(tmp_path / "images")
    denied(root / "a.jpg")
    head = save_small_head(tmp_path / "head.pt", backbones("random:0", "fp32")[1], SIZE)
    p = Predictor.from_checkpoint(head, "cpu", precision="fp32")
    items = [InputItem(n, root / n) for n in ("a.jpg", "sub/c.jpg")]
    results = list(predict_items(p, items, progress=False))
    assert [r.error for r in results] == [f"{root}/a.jpg: cannot read (permission denied)", ""]
    assert results[1].score is not None


def test_unreadable_folders_are_left_out_or_refused(tmp_path, denied):
    root = _tree(tmp_path / "images")
    denied(root / "sub" / "deep")
    skipped: list = []
    assert _names(root, skipped) == ["a.jpg", "sub/c.jpg"]
    assert skipped == [("sub/deep", "cannot read this folder (Permission denied)")]
    denied(root)
    with pytest.raises(SplitError) as e:
        collect_images(root)
    assert str(e.value) == f"{root}: cannot read this folder (Permission denied)"
    res = CliRunner().invoke(cache_cli, ["extract", str(root), "--out", str(tmp_path / "f.h5"),
                                         "--weights", "random:0"])
    assert (res.exit_code, res.output) == (1, f"Error: {root}: cannot read this folder "
                                              "(Permission denied)\n")


@pytest.mark.skipif(not _permissions_bite(), reason=NO_BITE)
def test_real_chmod_000(tmp_path):
    root = _tree(tmp_path / "images")
    os.chmod(root / "a.jpg", 0)
    os.chmod(root / "sub" / "deep", 0)
    try:
        with pytest.raises(ImageError) as e:
            open_image_rgb(root / "a.jpg")
        assert str(e.value) == f"{root}/a.jpg: cannot read (permission denied)"
        skipped: list = []
        assert _names(root, skipped) == ["a.jpg", "sub/c.jpg"]
        assert skipped == [("sub/deep", "cannot read this folder (Permission denied)")]
        # a file inside an unreadable folder: an error row later, not a traceback now
        items = collect_inputs([root / "sub" / "deep" / "d.jpg"])
        assert [it.name for it in items] == ["d.jpg"]
        with pytest.raises(ImageError, match=r"d.jpg: cannot read \(permission denied\)$"):
            open_image_rgb(items[0].path)
    finally:
        os.chmod(root / "a.jpg", 0o644)
        os.chmod(root / "sub" / "deep", 0o755)
