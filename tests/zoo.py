"""The bad-input zoo's machinery (issue 11, "The suite"): the shared inputs every case starts from
(`World`), a case's scratch folder (`Workspace`), how a case runs the real CLI and how its outcome
is judged (`run_case` -> `Outcome`). The cases are registered by tests/zoo_cases.py (and its
group modules zoo_images, zoo_lists, zoo_files); pytest runs them in tests/test_zoo.py,
bench/faults.py counts them.

A case builds its bad input in a fresh folder and returns a `Call`: the command line of
`amnet` or `amnet-cache` (run in-process through click's CliRunner, or in a child python when
the behaviour needs a real process), the exit code the right behaviour has, and what must hold
afterwards. The outcome is clean when
  - the exit code is the expected one and nothing raised past the CLI (no traceback);
  - a non-zero exit printed exactly one `Error: ...` line (informational lines a case allows,
    such as a download's progress, aside) naming the file (and line) and saying what is wrong;
  - nothing was lost: every `protect`ed file is byte-identical (a feature cache's rows, a
    checkpoint, an earlier run's outputs), and the case's own checks hold (rows byte-identical
    to an uninterrupted extraction, a skipped image recorded, recovery works);
  - no debris: no temp file (`.<stem>.<tag>-<pid><ext>`, `<name>.tmp`) or lock file is left.

Everything runs on CPU in fp32 with `random:0` weights at --image-size 32 (a 1024 x 2 x 2 grid)
and batches of one image, so a row's bytes depend on its image only.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import h5py

from conftest import subprocess_env, write_image

N_GOOD = 8
GOOD = [f"a{i}.jpg" for i in range(N_GOOD)]
SCORES = {n: round(0.40 + 0.07 * i, 6) for i, n in enumerate(GOOD)}
SPLITS = {"train": GOOD[:4], "val": GOOD[4:6], "test": GOOD[6:]}  # disjoint
HEAD = dict(in_channels=1024, grid=2, feature_dim=16, hidden_dim=16, regressor_dim=8)
EXTRACT = ["--weights", "random:0", "--image-size", "32", "--device", "cpu", "--batch-size", "1",
           "--workers", "0", "--precision", "fp32"]
TRAIN = ["--epochs", "1", "--batch-size", "4", "--eval-batch-size", "8", "--feature-dim", "16",
         "--hidden-dim", "16", "--regressor-dim", "8", "--device", "cpu", "--precision", "fp32",
         "--preload", "ram", "--workers", "0", "-q"]
PREDICT = ["--device", "cpu", "--precision", "fp32", "--batch-size", "1"]
# what `amnet predict` prints besides an error for a head trained on random:* weights
DEMO_WARNING = r"scores mean nothing for real photos|--model lamem-resnet50"
# temp files of amnet.core.atomic (.<stem>.<tag>-<pid><ext>, any tag), older <name>.tmp ones, locks
DEBRIS = re.compile(r"^\..+\.[a-z]+-\d+(\.\w+)*$|\.tmp$|\.lock$|\.lock\.break$")


def cli(name: str):
    from amnet.cli import cache_cli, main
    return {"amnet": main, "amnet-cache": cache_cli}[name]


# ---- loaded trunks, shared by every case of a process ------------------------------------------

@contextlib.contextmanager
def shared_trunks() -> Iterator[None]:
    """Load each `random:*` trunk once for every command run in this process (building ResNet50's
    random weights takes seconds; the trunk is frozen, so sharing it changes no result)."""
    import amnet.extract.backbone
    import amnet.extract.run
    real = amnet.extract.backbone.load_backbone
    loaded: dict = {}

    def load_backbone(weights, precision="auto", device="cpu", layers="layer3"):
        if not str(weights).startswith("random:"):
            return real(weights, precision, device, layers)
        key = (weights, precision, str(device), layers)
        if key not in loaded:
            loaded[key] = real(weights, precision, device, layers)
        return loaded[key]
    amnet.extract.backbone.load_backbone = amnet.extract.run.load_backbone = load_backbone
    try:
        yield
    finally:
        amnet.extract.backbone.load_backbone = amnet.extract.run.load_backbone = real


# ---- running a command ------------------------------------------------------------------------

class CaseTimeout(BaseException):
    """A command ran past its case's time limit (it hung: a FIFO read, a loop). A BaseException,
    like KeyboardInterrupt, so that no `except Exception` of the code under test swallows it."""


@dataclass
class Run:
    code: int | None
    output: str                    # stdout and stderr together
    traceback: str = ""            # an exception that escaped the CLI (a bug), formatted
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.output.splitlines() if ln.strip()]


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise CaseTimeout(f"still running after {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cli(name: str, args: list[str], *, env: dict[str, str] | None = None,
            in_process: bool = True, timeout: float = 180.0) -> Run:
    """`name args...` (amnet or amnet-cache) in this process through CliRunner, or in a child
    python (`in_process=False`) that imports this checkout's amnet."""
    args = [str(a) for a in args]
    t0 = time.perf_counter()
    if not in_process:
        fn = {"amnet": "main", "amnet-cache": "cache_cli"}[name]
        code = f"import sys; from amnet.cli import {fn}; sys.argv[0] = {name!r}; {fn}()"
        try:
            p = subprocess.run([sys.executable, "-c", code, *args],
                               env=subprocess_env(**(env or {})), capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return Run(None, out, f"CaseTimeout: still running after {timeout:.0f} s",
                       time.perf_counter() - t0)
        tb = p.stderr[p.stderr.find("Traceback"):] if "Traceback (most recent" in p.stderr else ""
        return Run(p.returncode, p.stdout + p.stderr, tb, time.perf_counter() - t0)
    from click.testing import CliRunner
    with _time_limit(timeout):
        try:
            r = CliRunner().invoke(cli(name), args, env=env, prog_name=name,
                                   catch_exceptions=True)
        except CaseTimeout as e:  # CliRunner catches Exception only
            return Run(None, "", f"CaseTimeout: {e}", time.perf_counter() - t0)
    tb = ""
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        tb = "".join(traceback.format_exception(*r.exc_info))
    return Run(r.exit_code if not tb else None, r.output, tb, time.perf_counter() - t0)


# ---- what was there before ----------------------------------------------------------------------

def cache_rows(path: Path, dataset: str = "features") -> dict[str, bytes]:
    """name -> the bytes of its row, for every row marked done."""
    with h5py.File(path, "r") as f:
        names = f["names"].asstr()[:].tolist()
        done = f["done"][:]
        return {n: f[dataset][i].tobytes() for i, n in enumerate(names) if done[i]}


def cache_failed(path: Path) -> dict[str, str]:
    with h5py.File(path, "r") as f:
        g = f["failed"]
        return dict(zip(g["names"].asstr()[:].tolist(), g["reasons"].asstr()[:].tolist()))


def cache_names(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return f["names"].asstr()[:].tolist()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _units(path: Path) -> int:
    """How much a changed file counts as lost: a cache's done rows, a CSV's data rows, else 1."""
    try:
        if path.suffix == ".h5":
            return len(cache_rows(path))
        if path.suffix == ".csv":
            return max(1, len(path.read_text().splitlines()) - 1)
    except Exception:  # noqa: BLE001 - unreadable: it is one thing lost
        pass
    return 1


def snapshot(paths: list[Path]) -> dict[Path, tuple[str, int]]:
    files: dict[Path, tuple[str, int]] = {}
    for p in paths:
        for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())):
            files[f] = (_sha(f), _units(f))
    return files


# ---- the shared inputs --------------------------------------------------------------------------

@dataclass
class World:
    """What every case copies from: good images, their cache (the reference rows), a head on
    that cache's backbone, split files, the reference scores, and shard files."""
    root: Path
    images: Path                 # a0.jpg .. a5.jpg
    cache: Path                  # complete: random:0, 32 px, fp32
    ckpt: Path                   # a 16-wide head on that backbone (untrained: scores differ)
    splits: dict[str, Path]      # train (all 6), val (a0-a2), test (a3-a5)
    rows: dict[str, bytes]       # the reference rows
    scores: dict[str, str]       # `amnet predict` on the images: name -> score text
    cached_scores: dict[str, str]  # `amnet predict --cache` on the cache
    shards: dict[str, Path]      # "0/2", "1/2" (a 2-shard run), "1/3" (another run's)


def split_text(names: list[str]) -> str:
    return "".join(f"{n} {SCORES[n]:.6f}\n" for n in names)


def read_scores(csv_path: Path) -> dict[str, str]:
    """`amnet predict`'s CSV -> {base name: score text} ('' for a failed row)."""
    import csv
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).name: r["score"] for r in csv.DictReader(fh)}


def read_errors(csv_path: Path) -> dict[str, str]:
    import csv
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {Path(r["path"]).name: r["error"] for r in csv.DictReader(fh)}


def build_world(root: Path) -> World:
    """Make the shared inputs under `root` (within `shared_trunks()`)."""
    import torch

    from amnet.core.settings import AMNetConfig
    from amnet.cache.reader import FeatureCache
    from amnet.extract.image_files import list_image_folder
    from amnet.extract.run import extract
    from amnet.head.checkpoint import backbone_from_attrs, make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet

    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    for i, n in enumerate(GOOD):
        write_image(images / n, "rgb", seed=i)
    kw = dict(weights="random:0", image_size=32, device="cpu", batch_size=1, workers=0,
              precision="fp32", progress=False)
    items = list_image_folder(images)
    cache = root / "cache.h5"
    extract(items, cache, **kw)
    shards = {}
    for i, n in ((0, 2), (1, 2), (1, 3)):
        s = extract(items, root / "shard{i}of{n}.h5".replace("{i}", str(i)).replace("{n}", str(n)),
                    shard=(i, n), **kw)
        shards[f"{i}/{n}"] = Path(s["out"])
    with FeatureCache(cache) as fc:
        attrs = dict(fc.attrs)
    torch.manual_seed(0)
    model = AMNet(AMNetConfig(**HEAD))
    ckpt = save_checkpoint(make_checkpoint(model, backbone=backbone_from_attrs(attrs), epoch=1),
                           root / "head.pt")
    splits = {}
    for part, names in SPLITS.items():
        splits[part] = root / "splits" / f"{part}.txt"
        splits[part].parent.mkdir(exist_ok=True)
        splits[part].write_text(split_text(names))
    for out, extra in (("scores.csv", [images]), ("cached.csv", ["--cache", cache])):
        r = run_cli("amnet", ["predict", "--checkpoint", ckpt, *extra, "--out", root / out,
                              *PREDICT])
        assert r.code == 0 and not r.traceback, r.output + r.traceback
    return World(root, images, cache, ckpt, splits, cache_rows(cache),
                 read_scores(root / "scores.csv"), read_scores(root / "cached.csv"), shards)


# ---- a case's scratch folder ---------------------------------------------------------------------

class Workspace:
    """A case's folder, with copies of the world's inputs made on demand."""

    def __init__(self, world: World, folder: Path):
        self.world, self.dir = world, folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lost = 0  # rows/files the case's own checks found lost

    def copy(self, src: Path, name: str | None = None) -> Path:
        dst = self.dir / (name or src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copyfile(src, dst)
        return dst

    def images(self, name: str = "images") -> Path:
        return self.copy(self.world.images, name)

    def cache(self, name: str = "cache.h5") -> Path:
        return self.copy(self.world.cache, name)

    def ckpt(self, name: str = "head.pt") -> Path:
        return self.copy(self.world.ckpt, name)

    def write(self, name: str, data: str | bytes) -> Path:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        return p

    def splits(self, **override: Path) -> dict[str, Path]:
        """Copies of the split files, with some replaced (`train=path`)."""
        out = {k: self.copy(p, f"splits/{k}.txt") for k, p in self.world.splits.items()
               if k not in override}
        return {**out, **override}

    def previous_run(self, folder: str) -> Path:
        """A folder holding an earlier run's outputs, which a refused run must leave alone."""
        out = self.dir / folder
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.world.ckpt, out / "head.pt")
        (out / "metrics.json").write_text('{"rho": 0.5, "note": "an earlier run"}\n')
        (out / "predictions.csv").write_text("name,gt,pred\na3.jpg,0.61,0.6\n")
        return out

    def plain(self, text: str) -> str:
        """`text` without the case's and the world's folder paths (they hold the case's name,
        which must not satisfy a check on what a message says)."""
        for folder, tag in ((self.dir, "<case>"), (self.world.root, "<world>")):
            for form in {str(folder), os.path.realpath(folder)}:
                text = text.replace(form, tag)
        return text

    def says(self, pattern: str, text: str) -> bool:
        return bool(re.search(pattern, self.plain(text)))

    # -- checks a case runs afterwards; each returns problems and counts what was lost --

    def rows_match(self, cache: Path, names: list[str], *, exact: bool = False) -> list[str]:
        """`names` hold their reference rows in `cache` (byte for byte); with `exact`, no other
        row is done."""
        try:
            got = cache_rows(cache)
        except Exception as e:  # noqa: BLE001
            self.lost += len(names)
            return [f"{cache.name}: unreadable ({type(e).__name__}: {e})"]
        bad = [n for n in names if got.get(n) != self.world.rows[n]]
        self.lost += len(bad)
        problems = [f"{cache.name}: rows lost or changed: {bad}"] if bad else []
        extra = sorted(set(got) - set(names))
        if exact and extra:
            problems.append(f"{cache.name}: unexpected rows {extra}")
        return problems

    def scores_match(self, csv_path: Path, names: list[str], cached: bool = False) -> list[str]:
        ref = self.world.cached_scores if cached else self.world.scores
        try:
            got = read_scores(csv_path)
        except Exception as e:  # noqa: BLE001
            self.lost += len(names)
            return [f"{csv_path.name}: unreadable ({type(e).__name__}: {e})"]
        bad = [n for n in names if got.get(n) != ref[n]]
        self.lost += len(bad)
        return [f"{csv_path.name}: scores lost or changed: {bad}"] if bad else []


# ---- a case --------------------------------------------------------------------------------------

@dataclass
class Call:
    """A command to run and what the right behaviour is."""
    cli: str                                    # "amnet" | "amnet-cache"
    args: list
    code: int = 1
    names: tuple[str, ...] = ()                 # the error line contains each (file, file:line)
    says: str = ""                              # regex the error line must match
    prefix: str = "Error: "                     # how the error line starts
    not_says: str = ""                          # regex it must not match (a wrong diagnosis)
    protect: tuple[Path, ...] = ()              # byte-identical afterwards
    check: Callable[[Run], list[str]] | None = None   # more checks (problems)
    allow: tuple[str, ...] = ()                 # regexes of further lines a failure may print
    env: dict[str, str] | None = None
    context: Callable[[], contextlib.AbstractContextManager] | None = None
    in_process: bool = True
    timeout: float = 180.0


@dataclass(frozen=True)
class Case:
    id: str                                     # group/name
    build: Callable[[Workspace], Call]
    pending: str | None = None                  # why it fails until a fix lands (xfail reason)

    @property
    def group(self) -> str:
        return self.id.split("/")[0]


@dataclass
class Outcome:
    id: str
    code: int | None
    clean: bool                  # the right exit code, one clean line (or none), checks held
    traceback: bool
    lost: int                    # rows (caches, CSVs) or files changed or removed
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "code", "clean", "traceback", "lost",
                                              "problems", "seconds", "output")}


def _judge_line(call: Call, run: Run, ws: Workspace) -> list[str]:
    # warnings (amnet.core.caveats: a small test set, ...) are no error lines
    allow = call.allow + (r"^warning: ",) + (
        (DEMO_WARNING,) if call.args[:1] == ["predict"] else ())
    lines = [ln for ln in run.lines if not any(re.search(a, ln) for a in allow)]
    if call.code == 0:
        bad = [ln for ln in lines if ln.startswith("Error")]
        return [f"printed an error: {bad[0]!r}"] if bad else []
    if len(lines) != 1:
        return [f"expected one error line, got {len(lines)}: {lines[:6]}"]
    line = lines[0]
    problems = [] if line.startswith(call.prefix) else [f"not a {call.prefix!r} line: {line!r}"]
    problems += [f"the line does not name {n!r}: {line!r}" for n in call.names if n not in line]
    if call.says and not ws.says(call.says, line):
        problems.append(f"the line does not say /{call.says}/: {line!r}")
    if call.not_says and ws.says(call.not_says, line):
        problems.append(f"wrong diagnosis /{call.not_says}/: {line!r}")
    return problems


def run_case(case: Case, world: World, folder: Path) -> Outcome:
    """Build `case` in `folder`, run its command, judge the outcome."""
    ws = Workspace(world, folder)
    t0 = time.perf_counter()
    call = case.build(ws)
    before = snapshot(list(call.protect))
    debris_before = {p for p in folder.rglob("*") if DEBRIS.search(p.name)}
    with (call.context() if call.context else contextlib.nullcontext()):
        run = run_cli(call.cli, call.args, env=call.env, in_process=call.in_process,
                      timeout=call.timeout)
    problems: list[str] = []
    if run.traceback:
        problems.append("traceback: " + run.traceback.strip().splitlines()[-1])
    elif run.code != call.code:
        problems.append(f"exit code {run.code}, expected {call.code}")
    problems += _judge_line(call, run, ws)
    lost = 0
    for p, (sha, units) in before.items():
        if not p.is_file():
            problems.append(f"{p.relative_to(folder)} was removed")
            lost += units
        elif _sha(p) != sha:
            problems.append(f"{p.relative_to(folder)} was changed")
            lost += units
    if call.check is not None and not run.traceback:
        try:
            problems += call.check(run)
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a problem
            problems.append(f"check failed: {type(e).__name__}: {e}")
    debris = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                    if DEBRIS.search(p.name) and p not in debris_before)
    if debris:
        problems.append(f"left behind: {debris}")
    return Outcome(case.id, run.code, not problems, bool(run.traceback), lost + ws.lost, problems,
                   round(time.perf_counter() - t0, 2), run.output[-2000:])
