"""The zoo's images (tests/zoo_cases.py): bad ones (empty, truncated, not an image, a
decompression bomb, a FIFO, chmod 000, a dangling link) with --on-error fail, skip and in
`amnet predict`; odd but decodable ones (alpha, 16-bit, grey, CMYK, 1 x 1, animated GIF, ...);
odd names (unicode, spaces, a newline, ...); and folder listings (a symlink loop, a folder
linked twice, an unreadable folder, hidden files, `./` names).

A folder of the eight good images plus one more, `a2x.<ext>`, sorted between a2 and a3."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from zoo import (EXTRACT, GOOD, PREDICT, Call, Run, Workspace, cache_failed, cache_names,
                 cache_rows, read_errors, read_scores, run_cli)
from zoo_cases import (add, all_ok, case, extract_args, make_image, names_are,
                       unreadable)


BAD_IMAGES = {  # kind: (suffix, what the line/reason must say)
    "empty": ("jpg", r"empty file|0 bytes"),
    "truncated": ("jpg", r"truncat|cannot decode|corrupt"),
    "text": ("jpg", r"not an image"),
    "bomb": ("png", r"decompression bomb"),
    "png_header": ("png", r"truncat|cannot decode|corrupt|not an image"),
    "fifo": ("jpg", r"FIFO|fifo|pipe|not a regular|not an image file"),
    "chmod_000": ("jpg", r"[Pp]ermission denied|cannot read"),
    "dangling_link": ("jpg", r"not found|[Nn]o such|dangling"),
}


def _bad_folder(ws: Workspace, kind: str) -> tuple[Path, Path]:
    images = ws.images()
    bad = images / f"a2x.{BAD_IMAGES[kind][0]}"
    make_image(bad, "rgb" if kind == "chmod_000" else kind)
    return images, bad


def _deny(kind: str, bad: Path):
    return (lambda: unreadable(bad)) if kind == "chmod_000" else None


def _limit(kind: str) -> float:
    """A FIFO hangs a reader that opens it: give up sooner than the default."""
    return 30.0 if kind == "fifo" else 180.0


def _fix(bad: Path, ws: Workspace) -> None:
    """Replace the bad image with a good one (a0's bytes)."""
    bad.unlink()
    shutil.copyfile(ws.world.images / "a0.jpg", bad)


def image_fail(kind: str) -> Callable[[Workspace], Call]:
    """--on-error fail: one line naming the image; the rows before it kept; after the image is
    deleted, a rerun resumes and completes (issue 11 item 5) with every row byte-identical."""
    def build(ws: Workspace) -> Call:
        images, bad = _bad_folder(ws, kind)
        out = ws.dir / "f.h5"
        args = extract_args(images, out, "--on-error", "fail")

        def check(run: Run) -> list[str]:
            kept = ws.rows_match(out, GOOD[:3])
            bad.unlink()
            again = run_cli("amnet-cache", args)
            return all_ok(kept, [] if again.code == 0 else [f"rerun after deleting {bad.name}: "
                                                           f"exit {again.code}: {again.output}"],
                          ws.rows_match(out, GOOD, exact=True))
        return Call("amnet-cache", args, 1, names=(bad.name,), says=BAD_IMAGES[kind][1],
                    check=check, context=_deny(kind, bad), timeout=_limit(kind))
    return build


def image_skip(kind: str) -> Callable[[Workspace], Call]:
    """--on-error skip: exit 0, the image recorded as failed with its reason, every good row
    byte-identical; once fixed, --retry-failed extracts it."""
    def build(ws: Workspace) -> Call:
        images, bad = _bad_folder(ws, kind)
        out = ws.dir / "f.h5"
        args = extract_args(images, out, "--on-error", "skip")

        def check(run: Run) -> list[str]:
            failed = cache_failed(out)
            why = failed.get(bad.name, "")
            problems = [] if ws.says(BAD_IMAGES[kind][1], why) and bad.name in why else [
                f"failed record of {bad.name}: {why!r} (all: {failed})"]
            problems += ws.rows_match(out, GOOD, exact=True)
            _fix(bad, ws)
            again = run_cli("amnet-cache", args + ["--retry-failed"])
            if again.code != 0 or cache_rows(out).get(bad.name) != ws.world.rows["a0.jpg"]:
                problems.append(f"--retry-failed after fixing {bad.name}: exit {again.code}, "
                                f"row {'missing' if bad.name not in cache_rows(out) else 'wrong'}")
            return problems
        return Call("amnet-cache", args, 0, check=check, context=_deny(kind, bad),
                    timeout=_limit(kind))
    return build


def image_predict(kind: str) -> Callable[[Workspace], Call]:
    """`amnet predict` (default --on-error skip): a row with the reason, every good image scored
    exactly as without it."""
    def build(ws: Workspace) -> Call:
        images, bad = _bad_folder(ws, kind)
        out = ws.dir / "scores.csv"

        def check(run: Run) -> list[str]:
            why = read_errors(out).get(bad.name, "")
            return all_ok([] if ws.says(BAD_IMAGES[kind][1], why) else
                          [f"error column of {bad.name}: {why!r}"], ws.scores_match(out, GOOD))
        return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), images, "--out", out,
                              *PREDICT], 0, check=check, context=_deny(kind, bad),
                    timeout=_limit(kind))
    return build


for _kind in BAD_IMAGES:
    add(f"images/{_kind}-extract-fail", image_fail(_kind))
    add(f"images/{_kind}-extract-skip", image_skip(_kind))
    add(f"images/{_kind}-predict", image_predict(_kind))


@case("images/fifo-extract-fail-subprocess")
def _fifo_process(ws: Workspace) -> Call:
    """The FIFO that hung extract (issue 11 item 4), in a real process with a time limit."""
    images, bad = _bad_folder(ws, "fifo")
    return Call("amnet-cache", extract_args(images, ws.dir / "f.h5", "--on-error", "fail"), 1,
                names=(bad.name,), says=BAD_IMAGES["fifo"][1], in_process=False, timeout=90)


@case("images/predict-fail-keeps-previous-csv")
def _predict_fail(ws: Workspace) -> Call:
    images, bad = _bad_folder(ws, "truncated")
    out = ws.write("scores.csv", "path,score\nold.jpg,0.5\n")
    return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), images, "--out", out, *PREDICT,
                          "--on-error", "fail"], 1, names=(bad.name,),
                says=BAD_IMAGES["truncated"][1], protect=(out,))


@case("images/predict-nothing-scored")
def _predict_none(ws: Workspace) -> Call:
    folder = ws.dir / "bad"
    make_image(folder / "t.jpg", "truncated")
    make_image(folder / "e.jpg", "empty")
    return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), folder, "--out",
                          ws.dir / "s.csv", *PREDICT], 1, says=r"[Nn]o input|nothing|none|0 of")


ODD_IMAGES = {  # kind: suffix -- decodable, so extracted like any image (a GIF's first frame)
    "rgba": "png", "la": "png", "png16": "png", "png16rgb": "png", "gray": "jpg", "cmyk": "jpg",
    "palette": "png", "exif": "jpg", "one_px": "png", "sliver": "png", "bmp": "bmp",
    "webp": "webp", "gif_anim": "gif",
}


def odd_extract(kind: str) -> Callable[[Workspace], Call]:
    def build(ws: Workspace) -> Call:
        images = ws.images()
        odd = make_image(images / f"odd.{ODD_IMAGES[kind]}", kind)
        out = ws.dir / "f.h5"

        def check(run: Run) -> list[str]:
            rows = cache_rows(out)
            problems = ws.rows_match(out, GOOD)
            if odd.name not in rows:
                return problems + [f"{odd.name} not extracted: names {cache_names(out)}, "
                                   f"failed {cache_failed(out)}"]
            if not np.isfinite(np.frombuffer(rows[odd.name], np.float16)).all():
                problems.append(f"{odd.name}: non-finite features")
            return problems
        return Call("amnet-cache", extract_args(images, out), 0, check=check)
    return build


def odd_predict(kind: str) -> Callable[[Workspace], Call]:
    def build(ws: Workspace) -> Call:
        images = ws.images()
        odd = make_image(images / f"odd.{ODD_IMAGES[kind]}", kind)
        out = ws.dir / "scores.csv"

        def check(run: Run) -> list[str]:
            score = read_scores(out).get(odd.name, "")
            return all_ok([] if score else [f"{odd.name} not scored: "
                                            f"{read_errors(out).get(odd.name)!r}"],
                          ws.scores_match(out, GOOD))
        return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), images, "--out", out,
                              *PREDICT], 0, check=check)
    return build


for _kind in ODD_IMAGES:
    add(f"images/{_kind}-extract", odd_extract(_kind))
for _kind in ("rgba", "png16", "cmyk", "one_px", "gif_anim"):
    add(f"images/{_kind}-predict", odd_predict(_kind))

ODD_NAMES = {"unicode": "ünïcødé 日本.jpg", "spaces": "two  spaces .jpg",
             "newline": "new\nline.jpg", "dash": "-rf.jpg", "quotes": "it's \"100%\".jpg",
             "long": "l" * 200 + ".jpg", "upper": "SHOUT.JPG"}


def odd_name(name: str, predict: bool) -> Callable[[Workspace], Call]:
    """A copy of a0.jpg under an odd name: extracted under that exact name with a0's row, or
    scored with a0's score in a CSV that reads back to the same name."""
    def build(ws: Workspace) -> Call:
        images = ws.images()
        shutil.copyfile(images / "a0.jpg", images / name)
        if predict:
            out = ws.dir / "scores.csv"

            def check(run: Run) -> list[str]:
                got = read_scores(out)
                return all_ok([] if got.get(name) == ws.world.scores["a0.jpg"] else
                              [f"{name!r}: score {got.get(name)!r} (rows: {sorted(got)})"],
                              ws.scores_match(out, GOOD))
            return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), images, "--out", out,
                                  *PREDICT], 0, check=check)
        out = ws.dir / "f.h5"

        def check(run: Run) -> list[str]:
            rows = cache_rows(out)
            return all_ok([] if rows.get(name) == ws.world.rows["a0.jpg"] else
                          [f"{name!r}: row {'missing' if name not in rows else 'differs'}; "
                           f"names {cache_names(out)}"], ws.rows_match(out, GOOD))
        return Call("amnet-cache", extract_args(images, out), 0, check=check)
    return build


for _key, _name in ODD_NAMES.items():
    add(f"images/name-{_key}-extract", odd_name(_name, False))
    add(f"images/name-{_key}-predict", odd_name(_name, True))


@case("images/symlink-loop")
def _loop(ws: Workspace) -> Call:
    """sub/up -> .. : each real folder listed once (it turned 23 files into 943 names)."""
    images = ws.images()
    (images / "sub").mkdir()
    shutil.copyfile(images / "a1.jpg", images / "sub" / "s.jpg")
    os.symlink("..", images / "sub" / "up")
    out = ws.dir / "f.h5"
    return Call("amnet-cache", extract_args(images, out), 0, allow=(r"left out|not followed",),
                check=lambda run: names_are(out, GOOD + ["sub/s.jpg"]) + ws.rows_match(out, GOOD))


@case("images/folder-linked-twice")
def _twice(ws: Workspace) -> Call:
    images = ws.images()
    (ws.dir / "ext").mkdir()
    shutil.copyfile(images / "a1.jpg", ws.dir / "ext" / "e.jpg")
    os.symlink(ws.dir / "ext", images / "l1")
    os.symlink(ws.dir / "ext", images / "l2")
    out = ws.dir / "f.h5"
    return Call("amnet-cache", extract_args(images, out), 0,
                check=lambda run: names_are(out, GOOD + ["l1/e.jpg"]))


@case("images/chmod-000-folder")
def _locked(ws: Workspace) -> Call:
    """An unreadable sub-folder is left out with a recorded reason, not silently."""
    images = ws.images()
    make_image(images / "locked" / "l.jpg", "rgb")
    out = ws.dir / "f.h5"

    def check(run: Run) -> list[str]:
        said = [ln for ln in run.lines if "locked" in ws.plain(ln)]
        return names_are(out, GOOD) + ([] if said else [f"nothing says 'locked' was left out: "
                                                         f"{run.lines}"])
    return Call("amnet-cache", extract_args(images, out), 0, check=check,
                context=lambda: unreadable(images / "locked"))


@case("images/hidden-files-ignored")
def _hidden(ws: Workspace) -> Call:
    images = ws.images()
    make_image(images / ".hidden.jpg", "truncated")
    make_image(images / ".git" / "x.jpg", "text")
    (images / "notes.txt").write_text("not an image suffix")
    out = ws.dir / "f.h5"
    return Call("amnet-cache", extract_args(images, out), 0,
                check=lambda run: names_are(out, GOOD) + ws.rows_match(out, GOOD))


@case("images/empty-folder")
def _empty_folder(ws: Workspace) -> Call:
    (ws.dir / "none").mkdir()
    return Call("amnet-cache", extract_args(ws.dir / "none", ws.dir / "f.h5"), 1,
                names=("none",), says=r"no images")


@case("images/dot-slash-list")
def _dot_names(ws: Workspace) -> Call:
    images = ws.images()
    listing = ws.write("list.txt", "./a0.jpg\n./a1.jpg\n")
    out = ws.dir / "f.h5"
    return Call("amnet-cache", ["extract", listing, "--images-root", images, "--out", out,
                                *EXTRACT], 0,
                check=lambda run: names_are(out, ["a0.jpg", "a1.jpg"]) + ws.rows_match(
                    out, ["a0.jpg", "a1.jpg"]))


@case("images/dot-slash-duplicate")
def _dot_dup(ws: Workspace) -> Call:
    images = ws.images()
    listing = ws.write("list.txt", "./a0.jpg\na0.jpg\n")
    return Call("amnet-cache", ["extract", listing, "--images-root", images, "--out",
                                ws.dir / "f.h5", *EXTRACT], 1, names=("list.txt:2",),
                says=r"duplicate")
