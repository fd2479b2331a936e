"""Split and list files: LaMem format, and every bad-input case naming file:line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from amnet.core.errors import AmnetError, SplitError
from amnet.data.listfiles import RootChecker, read_name_list, read_split, split_path, write_split


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
        (images / name).write_bytes(b"x")
    return images


def test_round_trip_and_format(tmp_path: Path) -> None:
    path = tmp_path / "out" / "train_1.txt"
    write_split(path, [("00051110.jpg", 0.675), ("sub/x.png", 1)])
    assert path.read_text() == "00051110.jpg 0.675000\nsub/x.png 1.000000\n"
    assert read_split(path) == [("00051110.jpg", 0.675), ("sub/x.png", 1.0)]
    assert [p.name for p in path.parent.iterdir()] == ["train_1.txt"]  # no temp file left


def test_bad_split_is_an_amnet_error_the_cli_reports_in_one_line(tmp_path: Path, root: Path) -> None:
    """What the CLIs catch (AmnetError) is what a bad file raises: one line, file:line, exit 1."""
    path = _write(tmp_path / "train_1.txt", "a.jpg 0.5\nb.jpg high\n")
    with pytest.raises(AmnetError) as e:
        read_split(path)
    assert type(e.value) is SplitError
    assert str(e.value) == f"{path}:2: score 'high' is not a finite number"
    from click.testing import CliRunner

    from amnet.cli import cache_cli
    names = _write(root / "list.txt", "a.jpg\n../b.jpg\n")
    res = CliRunner().invoke(cache_cli, ["extract", str(names), "--out", str(tmp_path / "f.h5"),
                                         "--weights", "random:0"])
    assert res.exit_code == 1, res.output
    assert res.output.startswith(f"Error: {names}:2: ") and "contains '..'" in res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output
    assert not (tmp_path / "f.h5").exists()


def test_blank_lines_bom_and_tabs_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_bytes(b"\xef\xbb\xbfa.jpg 0.5\n\n  \nb.jpg\t0.25\r\n")
    assert read_split(path) == [("a.jpg", 0.5), ("b.jpg", 0.25)]


@pytest.mark.parametrize("text, line, message", [
    ("a.jpg 0.5\nb.jpg\n", 2, "expected '<image name> <score>'"),
    ("a.jpg 0.5 extra\n", 1, "expected '<image name> <score>'"),
    ("a.jpg 0.5\n\nb.jpg high\n", 3, "not a finite number"),
    ("a.jpg nan\n", 1, "not a finite number"),
    ("a.jpg inf\n", 1, "not a finite number"),
    ("a.jpg 0.5\nb.jpg 1.5\n", 2, "outside the declared range [0, 1]"),
    ("a.jpg -0.1\n", 1, "outside the declared range"),
    ("a.jpg 0.5\nb.jpg 0.1\na.jpg 0.2\n", 3, "duplicate image name 'a.jpg' (first on line 1)"),
    ("../x.jpg 0.5\n", 1, "contains '..'"),
    ("sub/../../x.jpg 0.5\n", 1, "contains '..'"),
    ("/etc/passwd 0.5\n", 1, "absolute path"),
    ("C:/x.jpg 0.5\n", 1, "absolute path"),
    ("sub\\x.jpg 0.5\n", 1, "backslash"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, line: int,
                                            message: str) -> None:
    path = _write(tmp_path / "train_1.txt", text)
    with pytest.raises(SplitError) as e:
        read_split(path)
    assert str(e.value).startswith(f"{path}:{line}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_score_range_is_configurable(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.txt", "a.jpg 7.5\n")
    assert read_split(path, score_range=(1, 10)) == [("a.jpg", 7.5)]
    assert read_split(path, score_range=None) == [("a.jpg", 7.5)]
    with pytest.raises(SplitError, match=r"outside the declared range \[0, 5\]"):
        read_split(path, score_range=(0, 5))


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_empty_split_is_an_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "val_2.txt", text)
    with pytest.raises(SplitError, match=r"val_2.txt: empty split"):
        read_split(path)


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="split file not found"):
        read_split(tmp_path / "nope.txt")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00a 1\n")
    with pytest.raises(SplitError, match="not a UTF-8 text file"):
        read_split(bad)


def test_images_root_checks_existence(tmp_path: Path, root: Path) -> None:
    good = _write(tmp_path / "s.txt", "a.jpg 0.1\nsub/c.jpg 0.2\n")
    assert len(read_split(good, images_root=root)) == 2
    bad = _write(tmp_path / "t.txt", "a.jpg 0.1\nsub/missing.jpg 0.2\n")
    with pytest.raises(SplitError, match=r"t.txt:2: image 'sub/missing.jpg' not found under"):
        read_split(bad, images_root=root)
    folder = _write(tmp_path / "u.txt", "sub 0.1\n")
    with pytest.raises(SplitError, match="is a folder, not an image file"):
        read_split(folder, images_root=root)
    with pytest.raises(SplitError, match="images folder not found"):
        read_split(good, images_root=tmp_path / "no-images")


def test_symlink_out_of_root_is_rejected(tmp_path: Path, root: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"s")
    os.symlink(secret, root / "evil.jpg")
    os.symlink(tmp_path, root / "up")  # a folder link leading out
    os.symlink(root / "a.jpg", root / "inside.jpg")  # a link that stays inside is fine
    assert read_split(_write(tmp_path / "ok.txt", "inside.jpg 0.5\n"), images_root=root)
    for i, name in enumerate(("evil.jpg", "up/secret.jpg")):
        path = _write(tmp_path / f"s{i}.txt", f"a.jpg 0.1\n{name} 0.5\n")
        with pytest.raises(SplitError, match=rf"s{i}.txt:2: .*resolves outside the images root"):
            read_split(path, images_root=root)


def test_root_that_is_itself_a_symlink_is_accepted(tmp_path: Path, root: Path) -> None:
    """`prepare` links data/<dataset>/images -> the external folder; that link is no escape."""
    dataset = tmp_path / "data" / "lamem"
    dataset.mkdir(parents=True)
    os.symlink(root.resolve(), dataset / "images", target_is_directory=True)
    path = _write(tmp_path / "s.txt", "a.jpg 0.1\nsub/c.jpg 0.2\n")
    assert len(read_split(path, images_root=dataset / "images")) == 2


def test_root_checker_can_be_shared(tmp_path: Path, root: Path) -> None:
    checker = RootChecker(root)
    a = _write(tmp_path / "a.txt", "a.jpg 0.1\n")
    b = _write(tmp_path / "b.txt", "a.jpg 0.3\nb.jpg 0.2\n")
    assert read_split(a, images_root=checker) == [("a.jpg", 0.1)]
    assert read_split(b, images_root=checker) == [("a.jpg", 0.3), ("b.jpg", 0.2)]


def test_read_name_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "list.txt", "a.jpg 0.5\n\nsub/b.jpg\n")
    assert read_name_list(path) == [("a.jpg", 0.5), ("sub/b.jpg", None)]
    dup = _write(tmp_path / "dup.txt", "a.jpg\na.jpg 0.2\n")
    with pytest.raises(SplitError, match=r"dup.txt:2: duplicate image name"):
        read_name_list(dup)
    assert len(read_name_list(dup, unique=False)) == 2
    for i, (text, message) in enumerate([("a b c\n", "expected '<image name>'"),
                                         ("a.jpg x\n", "not a finite number"),
                                         ("../a.jpg\n", "contains '..'"),
                                         ("\n", "empty list")]):
        with pytest.raises(SplitError, match=message):
            read_name_list(_write(tmp_path / f"bad{i}.txt", text))


def test_write_split_refuses_what_the_format_cannot_hold(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    with pytest.raises(SplitError, match="whitespace"):
        write_split(path, [("a b.jpg", 0.5)])
    with pytest.raises(SplitError, match="score of 'a.jpg' is nan"):
        write_split(path, [("a.jpg", float("nan"))])
    assert not path.exists()


def test_split_path(tmp_path: Path) -> None:
    assert split_path(tmp_path, "val", 3) == tmp_path / "splits" / "val_3.txt"
    with pytest.raises(ValueError):
        split_path(tmp_path, "dev", 1)
