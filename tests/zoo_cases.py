"""The bad-input zoo's cases (issue 11, "The suite"), in five groups: images, lists (split and
list files), caches, shards, pickles. Each builds its input in a fresh folder and returns a
`zoo.Call` (the command, the right exit code and what must hold after); tests/zoo.py runs and
judges it. `CASES` is the registry tests/test_zoo.py and bench/faults.py run.

Most inputs are bad: the command must stop with one line naming the file (and line) and leave
everything it had made or been given as it was. Some are only odd, or bad in a way whose right
answer is to skip and record (a corrupt image with --on-error skip, a missing image in
`amnet predict`): those exit 0, and the case checks what was recorded and that the good rows are
byte-identical to an uninterrupted run's.

`pending` marks a case whose fix had not landed on main when it was written (xfail, strict).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from zoo import (DEMO_WARNING, EXTRACT, GOOD, PAYLOADS, PREDICT, SCORES, TRAIN, Call, Case, Run,
                 Workspace, cache_failed, cache_names, cache_rows, make_image, on_sys_path,
                 read_errors, read_scores, run_cli, split_text, unreadable, write_payload)

CASES: list[Case] = []
USAGE = (r"^Usage: ", r"^Try '")                 # click's usage lines before its `Error:` line
SUMMARY = (r": extracted \d+ images", r"^scored \d+ of")


def case(cid: str, pending: str | None = None):
    def register(build: Callable[[Workspace], Call]) -> Callable[[Workspace], Call]:
        CASES.append(Case(cid, build, pending))
        return build
    return register


def add(cid: str, build: Callable[[Workspace], Call], pending: str | None = None) -> None:
    CASES.append(Case(cid, build, pending))


ITEM1 = "issue 11 item 1 (NaN/Inf features, nothing scored), fix on branch faults1"
ITEM3 = "issue 11 item 3 (truncated .h5 said 'in use'; amnet-cache repair), fix on branch faults1"


def extract_args(images: Path, out: Path, *more) -> list:
    return ["extract", images, "--out", out, *EXTRACT, *more]


def all_ok(*problem_lists: list[str]) -> list[str]:
    return [p for ps in problem_lists for p in ps]


# ---- images ----------------------------------------------------------------------------------------
# A folder of the six good images plus one more, `a2x.<ext>`, sorted between a2 and a3.

BAD_IMAGES = {  # kind: (suffix, what the line/reason must say, pending)
    "empty": ("jpg", r"empty file|0 bytes", None),
    "truncated": ("jpg", r"truncat|cannot decode|corrupt", None),
    "text": ("jpg", r"not an image", None),
    "bomb": ("png", r"decompression bomb", None),
    "png_header": ("png", r"truncat|cannot decode|corrupt|not an image", None),
    "fifo": ("jpg", r"FIFO|fifo|pipe|not a regular|not an image file", None),
    "chmod_000": ("jpg", r"[Pp]ermission denied|cannot read", None),
    "dangling_link": ("jpg", r"not found|[Nn]o such|dangling", None),
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


for _kind, (_, _, _pending) in BAD_IMAGES.items():
    add(f"images/{_kind}-extract-fail", image_fail(_kind), _pending)
    add(f"images/{_kind}-extract-skip", image_skip(_kind), _pending)
    add(f"images/{_kind}-predict", image_predict(_kind), _pending)


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


@case("images/predict-nothing-scored", pending=ITEM1)
def _predict_none(ws: Workspace) -> Call:
    folder = ws.dir / "bad"
    make_image(folder / "t.jpg", "truncated")
    make_image(folder / "e.jpg", "empty")
    return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), folder, "--out",
                          ws.dir / "s.csv", *PREDICT], 1, says=r"[Nn]o input|nothing|none|0 of")


ODD_IMAGES = {  # kind: (suffix, pending) -- decodable, so extracted like any image
    "rgba": ("png", None), "la": ("png", None), "png16": ("png", None),
    "png16rgb": ("png", None), "gray": ("jpg", None), "cmyk": ("jpg", None),
    "palette": ("png", None), "exif": ("jpg", None), "one_px": ("png", None),
    "sliver": ("png", None), "bmp": ("bmp", None), "webp": ("webp", None),
    "gif_anim": ("gif", None),
}


def odd_extract(kind: str) -> Callable[[Workspace], Call]:
    def build(ws: Workspace) -> Call:
        images = ws.images()
        odd = make_image(images / f"odd.{ODD_IMAGES[kind][0]}", kind)
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
        odd = make_image(images / f"odd.{ODD_IMAGES[kind][0]}", kind)
        out = ws.dir / "scores.csv"

        def check(run: Run) -> list[str]:
            score = read_scores(out).get(odd.name, "")
            return all_ok([] if score else [f"{odd.name} not scored: "
                                            f"{read_errors(out).get(odd.name)!r}"],
                          ws.scores_match(out, GOOD))
        return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), images, "--out", out,
                              *PREDICT], 0, check=check)
    return build


for _kind, (_, _pending) in ODD_IMAGES.items():
    add(f"images/{_kind}-extract", odd_extract(_kind), _pending)
for _kind in ("rgba", "png16", "cmyk", "one_px", "gif_anim"):
    add(f"images/{_kind}-predict", odd_predict(_kind), ODD_IMAGES[_kind][1])

ODD_NAMES = {"unicode": "ünïcødé 日本.jpg", "spaces": "two  spaces .jpg", "newline": "new\nline.jpg",
             "dash": "-rf.jpg", "quotes": "it's \"100%\".jpg", "long": "l" * 200 + ".jpg",
             "upper": "SHOUT.JPG"}


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


def names_are(out: Path, want: list[str]) -> list[str]:
    got = cache_names(out)
    return [] if got == want else [f"{out.name} lists {len(got)} names {got[:8]}, expected {want}"]


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


# ---- split and list files ---------------------------------------------------------------------------

def _lines(names: list[str]) -> list[str]:
    return [f"{n} {SCORES[n]:.6f}" for n in names]


def _text(lines: list[str], eol: str = "\n") -> str:
    return "".join(ln + eol for ln in lines)


_T = _lines(GOOD)  # the train split's lines
SPLIT_KINDS = {  # kind: (content, exit code, line named, what the line says)
    "missing-score": (_text(_T[:1] + ["a1.jpg"] + _T[2:]), 1, 2, r"expected '<image name> <score>'"),
    "out-of-range": (_text(_T[:1] + ["a1.jpg 1.5"] + _T[2:]), 1, 2, r"outside"),
    "negative": (_text(_T[:1] + ["a1.jpg -0.1"] + _T[2:]), 1, 2, r"outside"),
    "nan": (_text(_T[:1] + ["a1.jpg nan"] + _T[2:]), 1, 2, r"not a finite number"),
    "inf": (_text(_T[:1] + ["a1.jpg inf"] + _T[2:]), 1, 2, r"not a finite number"),
    "comma-decimal": (_text(_T[:1] + ["a1.jpg 0,5"] + _T[2:]), 1, 2, r"not a finite number"),
    "duplicate": (_text(_T + _T[2:3]), 1, 7, r"duplicate .*line 3"),
    "traversal": (_text(_T[:1] + ["../images/a1.jpg 0.5"] + _T[2:]), 1, 2, r"'\.\.'"),
    "absolute": (_text(_T[:1] + ["/etc/passwd 0.5"] + _T[2:]), 1, 2, r"absolute"),
    "backslash": (_text(_T[:1] + ["sub\\a1.jpg 0.5"] + _T[2:]), 1, 2, r"backslash"),
    "three-fields": (_text(_T[:1] + ["a1.jpg 0.5 0.7"] + _T[2:]), 1, 2, r"expected"),
    "empty": ("", 1, None, r"empty"),
    "blank-lines": ("\n   \n\t\n", 1, None, r"empty"),
    "header": (_text(["name score"] + _T), 1, 1, r"not a finite number|header"),
    "utf16": (_text(_T).encode("utf-16"), 1, None, r"UTF-8"),
    "latin1": (_text(_T + ["caf\xe9.jpg 0.5"]).encode("latin-1"), 1, None, r"UTF-8"),
    "not-in-cache": (_text(_T + ["zz.jpg 0.5"]), 1, None, r"not in the cache.*zz\.jpg"),
    "crlf": (_text(_T, "\r\n"), 0, None, ""),
    "bom": (("\ufeff" + _text(_T)).encode("utf-8"), 0, None, ""),
    "tabs": (_text([ln.replace(" ", "\t") for ln in _T]), 0, None, ""),
    "no-final-newline": (_text(_T).rstrip("\n"), 0, None, ""),
}


def _split_file(ws: Workspace, kind: str, names: list[str] | None = None) -> Path:
    content = SPLIT_KINDS[kind][0]
    if names is not None:  # the same kind over other names (evaluate's test part)
        content = content.replace(_text(_T), _text(_lines(names))) if isinstance(content, str) \
            else content
    return ws.write("bad.txt", content)


def _names(kind: str, path: Path) -> tuple[str, ...]:
    line = SPLIT_KINDS[kind][2]
    return (f"{path.name}:{line}",) if line else (path.name,)


def split_train(kind: str, part: str = "train") -> Callable[[Workspace], Call]:
    """`amnet train` with a bad `part` split: one line naming file:line, the cache and an
    earlier run's outputs untouched; an odd but valid file (CRLF, BOM, tabs) trains."""
    def build(ws: Workspace) -> Call:
        bad = _split_file(ws, kind)
        s = ws.splits(**{part: bad})
        cache, out = ws.cache(), ws.previous_run("run")
        code = SPLIT_KINDS[kind][1]
        args = ["train", "--cache", cache, "--train", s["train"], "--val", s["val"], "--test",
                s["test"], "--out", out, *TRAIN]

        def check(run: Run) -> list[str]:
            m = json.loads(run.output.strip().splitlines()[-1])
            return [] if m.get("n") == 3 else [f"trained, but reports {m}"]
        return Call("amnet", args, code, names=_names(kind, bad), says=SPLIT_KINDS[kind][3],
                    protect=(cache,) + ((out,) if code else ()),
                    check=check if code == 0 else None)
    return build


def split_evaluate(kind: str) -> Callable[[Workspace], Call]:
    """`amnet evaluate --split BAD`; an odd but valid file gives the same metrics as the plain
    one."""
    def build(ws: Workspace) -> Call:
        bad = _split_file(ws, kind)
        cache, ckpt, out = ws.cache(), ws.ckpt(), ws.previous_run("eval")
        code = SPLIT_KINDS[kind][1]
        common = [ckpt, "--cache", cache, "--device", "cpu", "--precision", "fp32"]

        def check(run: Run) -> list[str]:
            ref = run_cli("amnet", ["evaluate", *common, "--split", ws.world.splits["train"]])
            a, b = (json.loads(r.output.strip().splitlines()[-1]) for r in (run, ref))
            return [] if a == b else [f"{kind} file: {a}, plain file: {b}"]
        return Call("amnet", ["evaluate", *common, "--split", bad, "--out", out], code,
                    names=_names(kind, bad), says=SPLIT_KINDS[kind][3],
                    protect=(cache, ckpt) + ((out,) if code else ()),
                    check=check if code == 0 else None)
    return build


for _kind in SPLIT_KINDS:
    add(f"lists/train-split-{_kind}", split_train(_kind))
for _kind in ("missing-score", "out-of-range", "nan", "duplicate", "traversal", "empty", "header",
              "utf16", "not-in-cache", "crlf", "bom"):
    add(f"lists/evaluate-split-{_kind}", split_evaluate(_kind))
add("lists/val-split-nan", split_train("nan", "val"))
add("lists/test-split-duplicate", split_train("duplicate", "test"))


@case("lists/train-split-missing-file")
def _missing_split(ws: Workspace) -> Call:
    s = ws.splits()
    return Call("amnet", ["train", "--cache", ws.cache(), "--train", ws.dir / "nope.txt",
                          "--val", s["val"], "--out", ws.dir / "o", *TRAIN], 2,
                names=("nope.txt",), says=r"does not exist", allow=USAGE)


LIST_KINDS = {  # kind: (content, exit code, line named, says)  -- extract's image lists
    "traversal": ("a0.jpg\n../images/a1.jpg\n", 1, 2, r"'\.\.'"),
    "absolute": ("a0.jpg\n/etc/hostname\n", 1, 2, r"absolute"),
    "duplicate": ("a0.jpg\na1.jpg\na0.jpg\n", 1, 3, r"duplicate"),
    "empty": ("", 1, None, r"empty"),
    "missing-image": ("a0.jpg\nzz.jpg\n", 1, 2, r"not found"),
    "folder-as-image": ("a0.jpg\nsub\n", 1, 2, r"not found|not a (regular )?file|folder"),
    "link-escapes-root": ("a0.jpg\nout.jpg\n", 1, 2, r"symlink|outside"),
    "header": ("name score\na0.jpg 0.4\n", 1, 1, r"not a finite number|not found|header"),
    "nan-score": ("a0.jpg 0.4\na1.jpg nan\n", 1, 2, r"not a finite number"),
    "utf16": ("a0.jpg\na1.jpg\n".encode("utf-16"), 1, None, r"UTF-8"),
    "crlf": ("a0.jpg\r\na1.jpg\r\n", 0, None, ""),
    "bom": ("\ufeffa0.jpg\na1.jpg\n".encode("utf-8"), 0, None, ""),
}


def list_extract(kind: str) -> Callable[[Workspace], Call]:
    def build(ws: Workspace) -> Call:
        images = ws.images()
        (images / "sub").mkdir()
        make_image(ws.dir / "outside.jpg", "rgb")
        os.symlink(ws.dir / "outside.jpg", images / "out.jpg")
        content, code, line, says = LIST_KINDS[kind]
        listing = ws.write("list.txt", content)
        out = ws.cache("f.h5")  # a complete cache of the six: nothing may touch it
        args = ["extract", listing, "--images-root", images, "--out", out, *EXTRACT]
        if code == 0:
            out = ws.dir / "g.h5"
            args[args.index("--out") + 1] = out
        return Call("amnet-cache", args, code,
                    names=(f"list.txt:{line}",) if line else ("list.txt",), says=says,
                    protect=(out,) if code else (),
                    check=(lambda run: names_are(out, ["a0.jpg", "a1.jpg"])
                           + ws.rows_match(out, ["a0.jpg", "a1.jpg"])) if code == 0 else None)
    return build


for _kind in LIST_KINDS:
    add(f"lists/extract-list-{_kind}", list_extract(_kind))

PREDICT_LISTS = {  # kind: (content, exit code, says / the failed name)
    "traversal": ("a0.jpg\n../x/a1.jpg\n", 1, r"'\.\.'"),
    "empty": ("", 1, r"empty"),
    "utf16": ("a0.jpg\n".encode("utf-16"), 1, r"UTF-8"),
    "missing-image": ("a0.jpg\nzz.jpg\na1.jpg\n", 0, "zz.jpg"),
    "duplicate": ("a0.jpg\na1.jpg\na0.jpg\n", 0, ""),
    "crlf": ("a0.jpg\r\na1.jpg\r\n", 0, ""),
}


def list_predict(kind: str) -> Callable[[Workspace], Call]:
    """`amnet predict LIST`: a malformed list stops with one line and leaves an earlier CSV; a
    missing image is a row with its reason (the others scored); a name twice is scored twice."""
    def build(ws: Workspace) -> Call:
        images = ws.images()
        content, code, says = PREDICT_LISTS[kind]
        listing = ws.write("list.txt", content)
        out = ws.write("scores.csv", "path,score\nold.jpg,0.5\n")
        args = ["predict", "--checkpoint", ws.ckpt(), listing, "--images-root", images, "--out",
                out, *PREDICT]

        def check(run: Run) -> list[str]:
            import csv
            with open(out, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            problems = ws.scores_match(out, ["a0.jpg", "a1.jpg"])
            if kind == "missing-image" and "not found" not in read_errors(out).get("zz.jpg", ""):
                problems.append(f"no 'not found' row for zz.jpg: {rows}")
            if kind == "duplicate" and [r["score"] for r in rows if r["path"].endswith("a0.jpg")
                                        ] != [ws.world.scores["a0.jpg"]] * 2:
                problems.append(f"a0.jpg not scored twice alike: {rows}")
            return problems
        return Call("amnet", args, code, names=("list.txt",), says=says,
                    protect=(out,) if code else (), check=check if code == 0 else None)
    return build


for _kind in PREDICT_LISTS:
    add(f"lists/predict-list-{_kind}", list_predict(_kind))


# ---- caches ---------------------------------------------------------------------------------------

def damage(ws: Workspace, kind: str) -> Path:
    """A copy of the reference cache, damaged: truncated (60% of its bytes), garbage (random
    bytes), empty (0 bytes), foreign (HDF5, not a feature cache), future (format version 99),
    nan_row (a1's row NaN), all_nan (every row NaN), incomplete (a3 not extracted),
    other_backbone (attributes of random:1's features)."""
    p = ws.cache("damaged.h5")
    if kind == "truncated":
        data = p.read_bytes()
        p.write_bytes(data[:len(data) * 6 // 10])
    elif kind == "garbage":
        p.write_bytes(np.random.default_rng(0).bytes(8192))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "foreign":
        p.unlink()
        with h5py.File(p, "w") as f:
            f["features"] = np.zeros((2, 3))
    else:
        with h5py.File(p, "r+") as f:
            if kind == "future":
                f.attrs["format_version"] = 99
            elif kind in ("nan_row", "all_nan"):
                rows = [1] if kind == "nan_row" else list(range(len(GOOD)))
                for i in rows:
                    f["features"][i] = np.full(f["features"].shape[1:], np.nan, np.float16)
            elif kind == "incomplete":
                f["done"][3] = False
                f.attrs["complete"] = False
            elif kind == "other_backbone":
                f.attrs["weights_id"] = "random:1"
                f.attrs["weights_sha256"] = "ab" * 32
            else:
                raise ValueError(kind)
    return p


CACHE_SAYS = {"truncated": r"truncat|corrupt|damaged", "garbage": r"not a readable|corrupt|damaged|not an",
              "empty": r"not a readable|empty|corrupt|damaged|truncat", "foreign": r"not an amnet feature cache",
              "future": r"newer", "nan_row": r"NaN|non-finite|not finite",
              "incomplete": r"not in the cache|no features|not extracted",
              "other_backbone": r"backbone|settings|weights"}


def cache_entry(kind: str, entry: str) -> Callable[[Workspace], Call]:
    """`entry` (info, verify, train, evaluate, predict --cache, merge, extract into it) on a
    damaged cache: one line naming it and the damage (never 'in use by another process'), the
    file left as it is."""
    def build(ws: Workspace) -> Call:
        c = damage(ws, kind)
        names: tuple[str, ...] = (c.name,)
        if entry in ("info", "verify"):
            call = Call("amnet-cache", [entry, c])
        elif entry == "train":
            s = ws.splits()
            call = Call("amnet", ["train", "--cache", c, "--train", s["train"], "--val", s["val"],
                                  "--test", s["test"], "--out", ws.previous_run("run"), *TRAIN])
        elif entry == "evaluate":
            call = Call("amnet", ["evaluate", ws.ckpt(), "--cache", c, "--split",
                                  ws.splits()["train"], "--device", "cpu", "--precision", "fp32"])
        elif entry == "predict":
            call = Call("amnet", ["predict", "--checkpoint", ws.ckpt(), "--cache", c, "--out",
                                  ws.dir / "s.csv", *PREDICT])
        elif entry == "merge":
            call = Call("amnet-cache", ["merge", ws.dir / "merged.h5", c, ws.cache("other.h5")])
        elif entry == "extract":
            call = Call("amnet-cache", extract_args(ws.images(), c))
        else:
            raise ValueError(entry)
        if kind == "nan_row":
            names += ("a1.jpg",)
        elif kind == "incomplete":
            names += ("train.txt", "a3.jpg")
        call.names, call.says = names, CACHE_SAYS[kind]
        call.not_says = r"in use by another process"
        call.protect = (c,) + tuple(p for p in (ws.dir / "run",) if p.exists())
        return call
    return build


for _entry in ("info", "verify", "train", "evaluate", "predict", "merge", "extract"):
    add(f"caches/truncated-{_entry}", cache_entry("truncated", _entry), ITEM3)
for _entry in ("info", "verify", "train", "evaluate", "predict", "extract"):
    add(f"caches/garbage-{_entry}", cache_entry("garbage", _entry))
for _kind, _entries in (("empty", ("info", "train")), ("foreign", ("info", "evaluate")),
                        ("future", ("info", "train")), ("incomplete", ("train", "evaluate")),
                        ("nan_row", ("train", "evaluate")),
                        ("other_backbone", ("evaluate", "predict", "extract"))):
    for _entry in _entries:
        add(f"caches/{_kind}-{_entry}", cache_entry(_kind, _entry),
            ITEM1 if _kind == "nan_row" else None)


@case("caches/nan_row-verify")
def _nan_verify(ws: Workspace) -> Call:
    """verify prints its findings as `FILE: problem` lines (not `Error:`), exit 1."""
    c = damage(ws, "nan_row")
    return Call("amnet-cache", ["verify", c], 1, names=(c.name, "a1.jpg"), says=r"NaN/Inf",
                protect=(c,), prefix=f"{c}: ")


@case("caches/nan_row-predict", pending=ITEM1)
def _nan_predict(ws: Workspace) -> Call:
    """--on-error skip (predict's default): a1's row carries the reason, the others scored."""
    c = damage(ws, "nan_row")
    out = ws.dir / "s.csv"

    def check(run: Run) -> list[str]:
        why = read_errors(out).get("a1.jpg", "")
        rest = [n for n in GOOD if n != "a1.jpg"]
        return all_ok([] if ws.says(CACHE_SAYS["nan_row"], why) else
                      [f"a1.jpg: error column {why!r}, score {read_scores(out).get('a1.jpg')!r}"],
                      ws.scores_match(out, rest, cached=True))
    return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), "--cache", c, "--out", out,
                          *PREDICT], 0, protect=(c,), check=check)


@case("caches/all_nan-predict", pending=ITEM1)
def _all_nan_predict(ws: Workspace) -> Call:
    """Nothing scored: a non-zero exit, not 'scored 6 of 6' with blank scores."""
    c = damage(ws, "all_nan")
    return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), "--cache", c, "--out",
                          ws.dir / "s.csv", *PREDICT], 1, says=r"NaN|non-finite|[Nn]o input|nothing|0 of",
                protect=(c,))


@case("caches/other-image-size-extract")
def _other_size(ws: Workspace) -> Call:
    c = ws.cache()
    args = extract_args(ws.images(), c)
    args[args.index("--image-size") + 1] = "48"
    return Call("amnet-cache", args, 1, names=(c.name,), says=r"other settings.*--overwrite",
                protect=(c,))


@case("caches/truncated-repair", pending=ITEM3)
def _repair(ws: Workspace) -> Call:
    """`amnet-cache repair IN OUT` salvages every complete row of a truncated cache."""
    c = damage(ws, "truncated")
    out = ws.dir / "repaired.h5"

    def check(run: Run) -> list[str]:
        rows = cache_rows(out)
        wrong = [n for n, b in rows.items() if ws.world.rows.get(n) != b]
        return ([f"{out.name}: rows differ from the reference: {wrong}"] if wrong else []) + (
            [] if rows else [f"{out.name}: no row salvaged"])
    return Call("amnet-cache", ["repair", c, out], 0, protect=(c,), check=check)


# ---- shards -----------------------------------------------------------------------------------------

def _shard(ws: Workspace, key: str, name: str | None = None, **attrs) -> Path:
    p = ws.copy(ws.world.shards[key], name)
    if attrs:
        with h5py.File(p, "r+") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
    return p


def merge_refused(build_inputs: Callable[[Workspace], list[Path]], says: str,
                  names: Callable[[list[Path]], tuple[str, ...]] = lambda ps: ()
                  ) -> Callable[[Workspace], Call]:
    def build(ws: Workspace) -> Call:
        inputs = build_inputs(ws)
        out = ws.dir / "merged.h5"

        def check(run: Run) -> list[str]:
            return [f"{out.name} was written"] if out.exists() else []
        return Call("amnet-cache", ["merge", out, *inputs], 1, names=names(inputs), says=says,
                    protect=tuple(inputs), check=check)
    return build


add("shards/incomplete", merge_refused(lambda ws: [_shard(ws, "0/2")],
                                       r"incomplete shard set.*--allow-partial", lambda ps: ("merged.h5",)))
add("shards/same-shard-twice", merge_refused(
    lambda ws: [_shard(ws, "0/2"), _shard(ws, "0/2", "copy0.h5"), _shard(ws, "1/2")],
    r"also in", lambda ps: (ps[1].name,)))
add("shards/overlapping-caches", merge_refused(lambda ws: [ws.cache("a.h5"), ws.cache("b.h5")],
                                               r"also in.*disjoint", lambda ps: ("b.h5", "a.h5")))
add("shards/another-run", merge_refused(lambda ws: [_shard(ws, "0/2"), _shard(ws, "1/3")],
                                        r"another --shard run", lambda ps: (ps[1].name,)))
add("shards/other-settings", merge_refused(
    lambda ws: [_shard(ws, "0/2"), _shard(ws, "1/2", weights_id="random:1",
                                          weights_sha256="ab" * 32)],
    r"settings differ", lambda ps: (ps[1].name,)))
add("shards/not-complete", merge_refused(
    lambda ws: [_shard(ws, "0/2"), _shard(ws, "1/2", complete=False)], r"not complete",
    lambda ps: (ps[1].name,)))
add("shards/shard-and-cache", merge_refused(lambda ws: [_shard(ws, "0/2"), ws.cache()],
                                            r"not a shard", lambda ps: (ps[1].name,)))


@case("shards/truncated-shard", pending=ITEM3)
def _trunc_shard(ws: Workspace) -> Call:
    s0, s1 = _shard(ws, "0/2"), _shard(ws, "1/2")
    s1.write_bytes(s1.read_bytes()[:s1.stat().st_size * 6 // 10])
    return Call("amnet-cache", ["merge", ws.dir / "m.h5", s0, s1], 1, names=(s1.name,),
                says=CACHE_SAYS["truncated"], not_says=r"in use", protect=(s0, s1))


@case("shards/out-exists")
def _out_exists(ws: Workspace) -> Call:
    out = ws.cache("merged.h5")
    return Call("amnet-cache", ["merge", out, _shard(ws, "0/2"), _shard(ws, "1/2")], 1,
                names=("merged.h5",), says=r"already exists.*--overwrite", protect=(out,))


@case("shards/partial-allowed")
def _partial(ws: Workspace) -> Call:
    """--allow-partial merges what it has; verify then reports the partial set (exit 1)."""
    out = ws.dir / "m.h5"

    def check(run: Run) -> list[str]:
        v = run_cli("amnet-cache", ["verify", out])
        return ws.rows_match(out, GOOD[0::2], exact=True) + (
            [] if v.code == 1 and "partial merge" in v.output else
            [f"verify of a partial merge: exit {v.code}: {v.output}"])
    return Call("amnet-cache", ["merge", out, _shard(ws, "0/2"), "--allow-partial"], 0,
                check=check)


@case("shards/whole-set")
def _whole(ws: Workspace) -> Call:
    """Given in either order, the two shards merge into the single run's rows."""
    out = ws.dir / "m.h5"
    return Call("amnet-cache", ["merge", out, _shard(ws, "1/2"), _shard(ws, "0/2")], 0,
                check=lambda run: names_are(out, GOOD) + ws.rows_match(out, GOOD, exact=True))


# ---- pickles: every entry point that reads one, every payload kind ------------------------------------

def pickle_case(kind: str, entry: str) -> Callable[[Workspace], Call]:
    """The payload refused by the safe loader, never run (its marker file never appears), one
    line naming the file (import-weights, evaluate, predict, extract --weights, models
    download); a training state holding it is set aside and the run starts fresh (exit 0)."""
    def build(ws: Workspace) -> Call:
        marker = ws.dir / "PWNED"

        def never_ran(run: Run) -> list[str]:
            return [f"the {kind} payload ran: {marker} exists"] if marker.exists() else []
        evil = ws.dir / "evil" / "lamem_ResNet50FC_lstm3_train_1" / "weights_35.pkl"
        if entry != "download":
            write_payload(evil, kind, marker)
        context = (lambda: on_sys_path(evil.parent)) if kind == "import" else None
        names: tuple[str, ...] = (evil.name,)
        if entry == "import-weights":
            call = Call("amnet", ["import-weights", evil, ws.dir / "out"], says=r"--trust-pickle")
        elif entry == "evaluate":
            call = Call("amnet", ["evaluate", evil, "--cache", ws.cache(), "--split",
                                  ws.splits()["train"], "--device", "cpu"])
        elif entry == "predict":
            call = Call("amnet", ["predict", "--checkpoint", evil, ws.images(), "--out",
                                  ws.dir / "s.csv", *PREDICT])
        elif entry == "extract":
            args = extract_args(ws.images(), ws.dir / "f.h5")
            args[args.index("--weights") + 1] = f"file:{evil}"
            call = Call("amnet-cache", args)
        elif entry == "train":
            s, out = ws.splits(), ws.dir / "run"
            state = out / ".train-state" / "head.pt.state"
            state.parent.mkdir(parents=True)
            shutil.copyfile(evil, state)

            def check(run: Run) -> list[str]:
                return never_ran(run) + ([] if (out / "metrics.json").is_file()
                                         and not state.exists() else
                                         ["the run did not start fresh and finish"])
            call = Call("amnet", ["train", "--cache", ws.cache(), "--train", s["train"], "--val",
                                  s["val"], "--test", s["test"], "--out", out, *TRAIN], 0,
                        check=check)
            names = ()
        elif entry == "download":
            import zipfile
            home = ws.dir / "home"
            folder = home / "models" / "lamem-resnet50"
            folder.mkdir(parents=True)
            member = "lamem_ResNet50FC_lstm3_train_1/weights_35.pkl"
            write_payload(ws.dir / "payload" / "weights_35.pkl", kind, marker)
            with zipfile.ZipFile(folder / "lamem_ResNet50FC_lstm3.zip", "w") as z:
                z.write(ws.dir / "payload" / "weights_35.pkl", member)
            if kind == "import":
                context = lambda: on_sys_path(ws.dir / "payload")  # noqa: E731
            call = Call("amnet", ["models", "download", "lamem-resnet50"], env={
                "AMNET_HOME": str(home), "AMNET_HUB_MIRROR": "http://127.0.0.1:9/"},
                allow=(r"^checking .*\(sha256\)$", r"^converting split", r"^note: "))
        else:
            raise ValueError(entry)
        call.names = names
        call.context = context
        if call.check is None:
            call.check = never_ran
        return call
    return build


for _entry in ("import-weights", "evaluate", "predict", "extract", "train", "download"):
    for _kind in PAYLOADS:
        add(f"pickles/{_kind}-{_entry}", pickle_case(_kind, _entry))
