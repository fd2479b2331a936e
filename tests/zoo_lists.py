"""The zoo's split and list files (tests/zoo_cases.py): `amnet train` and `amnet evaluate`
split files, `amnet-cache extract` and `amnet predict` image lists, each malformed one way
(missing score, out of range, NaN, duplicates, traversal, empty, header, UTF-16, ...) or only
odd (CRLF, BOM, tabs), which must work."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from zoo import (EXTRACT, PREDICT, SCORES, SPLITS, TRAIN, Call, Run, Workspace, read_errors,
                 run_cli)
from zoo_cases import USAGE, add, case, make_image, names_are

# ---- split and list files ------------------------------------------------------------------------

def _lines(names: list[str]) -> list[str]:
    return [f"{n} {SCORES[n]:.6f}" for n in names]


def _text(lines: list[str], eol: str = "\n") -> str:
    return "".join(ln + eol for ln in lines)


_T = _lines(SPLITS["train"])  # the train split's lines
SPLIT_KINDS = {  # kind: (content, exit code, line named, what the line says)
    "missing-score": (_text(_T[:1] + ["a1.jpg"] + _T[2:]), 1, 2,
                      r"expected '<image name> <score>'"),
    "out-of-range": (_text(_T[:1] + ["a1.jpg 1.5"] + _T[2:]), 1, 2, r"outside"),
    "negative": (_text(_T[:1] + ["a1.jpg -0.1"] + _T[2:]), 1, 2, r"outside"),
    "nan": (_text(_T[:1] + ["a1.jpg nan"] + _T[2:]), 1, 2, r"not a finite number"),
    "inf": (_text(_T[:1] + ["a1.jpg inf"] + _T[2:]), 1, 2, r"not a finite number"),
    "comma-decimal": (_text(_T[:1] + ["a1.jpg 0,5"] + _T[2:]), 1, 2, r"not a finite number"),
    "duplicate": (_text(_T + _T[2:3]), 1, len(_T) + 1, r"duplicate .*line 3"),
    "traversal": (_text(_T[:1] + ["../images/a1.jpg 0.5"] + _T[2:]), 1, 2, r"'\.\.'"),
    "absolute": (_text(_T[:1] + ["/etc/passwd 0.5"] + _T[2:]), 1, 2, r"absolute"),
    "backslash": (_text(_T[:1] + ["sub\\a1.jpg 0.5"] + _T[2:]), 1, 2, r"backslash"),
    "three-fields": (_text(_T[:1] + ["a1.jpg 0.5 0.7"] + _T[2:]), 1, 2, r"expected"),
    "empty": ("", 1, None, r"empty"),
    "blank-lines": ("\n   \n\t\n", 1, None, r"empty"),
    "header": (_text(["name score"] + _T), 1, 1, r"not a finite number|header"),
    "utf16": (_text(_T).encode("utf-16"), 1, None, r"UTF-8"),
    "latin1": (_text(_T + ["caf\xe9.jpg 0.5"]).encode("latin-1"), 1, None, r"UTF-8"),
    "not-in-cache": (_text(_T + ["zz.jpg 0.5"]), 1, len(_T) + 1, r"not in the cache.*zz\.jpg"),
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
            n = len(SPLITS["test"])
            return [] if m.get("n") == n else [f"trained, but reports {m}"]
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
        out = ws.cache("f.h5")  # a complete cache of the eight: nothing may touch it
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
