"""The zoo's files (tests/zoo_cases.py): damaged feature caches (truncated, random bytes, empty,
not ours, a newer format, NaN rows, unfinished, another backbone) at every command that opens
one; shard sets that must not merge (incomplete, overlapping, of another run, other settings);
pickles of five payload kinds at every entry point that reads one."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from zoo import (GOOD, PREDICT, TRAIN, Call, Run, Workspace, cache_rows, read_errors,
                 read_scores, run_cli)
from zoo_cases import (PAYLOADS, add, all_ok, case, extract_args, names_are,
                       on_sys_path, write_payload)

# ---- caches --------------------------------------------------------------------------------------

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


CACHE_SAYS = {"truncated": r"truncat|corrupt|damaged",
              "garbage": r"not a readable|corrupt|damaged|not an",
              "empty": r"not a readable|empty|corrupt|damaged|truncat",
              "foreign": r"not an amnet feature cache",
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


for _entry in ("info", "verify", "train", "evaluate", "predict", "merge"):
    add(f"caches/truncated-{_entry}", cache_entry("truncated", _entry))
for _entry in ("info", "verify", "train", "evaluate", "predict", "extract"):
    add(f"caches/garbage-{_entry}", cache_entry("garbage", _entry))
for _kind, _entries in (("empty", ("info", "train")), ("foreign", ("info", "evaluate")),
                        ("future", ("info", "train")), ("incomplete", ("train", "evaluate")),
                        ("nan_row", ("train", "evaluate")),
                        ("other_backbone", ("evaluate", "predict", "extract"))):
    for _entry in _entries:
        add(f"caches/{_kind}-{_entry}", cache_entry(_kind, _entry))


@case("caches/nan_row-verify")
def _nan_verify(ws: Workspace) -> Call:
    """verify prints its findings as `FILE: problem` lines (not `Error:`), exit 1."""
    c = damage(ws, "nan_row")
    return Call("amnet-cache", ["verify", c], 1, names=(c.name, "a1.jpg"), says=r"NaN/Inf",
                protect=(c,), prefix=f"{c}: ")


@case("caches/nan_row-predict")
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


@case("caches/all_nan-predict")
def _all_nan_predict(ws: Workspace) -> Call:
    """Nothing scored: a non-zero exit, not 'scored 8 of 8' with blank scores."""
    c = damage(ws, "all_nan")
    return Call("amnet", ["predict", "--checkpoint", ws.ckpt(), "--cache", c, "--out",
                          ws.dir / "s.csv", *PREDICT], 1,
                says=r"NaN|non-finite|[Nn]o input|nothing|0 of",
                protect=(c,))


@case("caches/other-image-size-extract")
def _other_size(ws: Workspace) -> Call:
    c = ws.cache()
    args = extract_args(ws.images(), c)
    args[args.index("--image-size") + 1] = "48"
    return Call("amnet-cache", args, 1, names=(c.name,), says=r"other settings.*--overwrite",
                protect=(c,))


@case("caches/truncated-extract")
def _extract_salvages(ws: Workspace) -> Call:
    """`amnet-cache extract` into a truncated cache keeps its complete rows and extracts the
    rest, saying so, as the DVC stage does (one path: amnet.extract.resume.extract_to); every
    row then equals the reference's."""
    c = damage(ws, "truncated")

    def check(run: Run) -> list[str]:
        rows = cache_rows(c)
        wrong = [n for n, b in rows.items() if ws.world.rows.get(n) != b]
        missing = sorted(set(ws.world.rows) - set(rows))
        said = re.search(r"truncat.*salvaging its complete rows", run.output) and \
            re.search(r"kept \d+ of \d+ rows", run.output)
        return ([f"{c.name}: rows differ from the reference: {wrong}"] if wrong else []) + (
            [f"{c.name}: rows missing after the run: {missing}"] if missing else []) + (
            [] if said else ["the salvage was not reported"])
    return Call("amnet-cache", extract_args(ws.images(), c), 0, check=check)


@case("caches/truncated-repair")
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


# ---- shards --------------------------------------------------------------------------------------

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
                                       r"incomplete shard set.*--allow-partial",
                                       lambda ps: ("merged.h5",)))
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


@case("shards/truncated-shard")
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


# ---- pickles: every entry point that reads one, every payload kind -------------------------------

def pickle_case(kind: str, entry: str) -> Callable[[Workspace], Call]:
    """The payload refused by the safe loader, never run (its marker file never appears), one
    line naming the file (import-weights, evaluate, predict, export, extract --weights, models
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
        elif entry == "export":
            call = Call("amnet", ["export", ws.dir / "model.onnx", "--checkpoint", evil,
                                  "--no-check"])
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


for _entry in ("import-weights", "evaluate", "predict", "export", "extract", "train", "download"):
    for _kind in PAYLOADS:
        add(f"pickles/{_kind}-{_entry}", pickle_case(_kind, _entry))
