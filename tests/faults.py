"""Fault injection (issue 11, "The suite"): kill -9 at chosen and at seeded random points of
`amnet-cache extract`, `amnet-cache merge`, `amnet train` and the `dvc repro` stage children; each
killed run is resumed with the same command and compared byte for byte with an uninterrupted run
(CPU, fp32). tests/test_faults.py runs them all (slow tests: `python -m pytest -q -m slow`);
bench/faults.py counts them.

A kill point is `(target, when, at)`: the child python replaces `target` (`module:attr`, e.g.
`amnet.cache.writer:write_rows`, `h5py:Dataset.__setitem__`, `os:replace`) with a wrapper that SIGKILLs
its own process right before (`when="before"`) or right after (`"after"`) the `at`-th call: at a
batch boundary, between a batch's feature rows and their done flags, inside a flush, between a
temp file's write and its rename. With `delay` instead of `at`, a timer armed at the first call
kills it that many seconds later, wherever it is then (inside HDF5's C code included).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import zoo
from conftest import REPO, copy_pipeline, subprocess_env, write_image

N_IMAGES = 12
NAMES = [f"p{i:02d}.jpg" for i in range(N_IMAGES)]
EXTRACT = ["--weights", "random:0", "--image-size", "32", "--device", "cpu", "--batch-size", "2",
           "--workers", "0", "--precision", "fp32"]
TRAIN = ["--epochs", "3", "--batch-size", "2", "--eval-batch-size", "4", "--feature-dim", "16",
         "--hidden-dim", "16", "--regressor-dim", "8", "--device", "cpu", "--precision", "fp32",
         "--preload", "ram", "--workers", "0", "--lr", "0.003", "-q"]
TRAIN_OUTPUTS = ("head.pt", "history.csv", "predictions.csv", "metrics.json")

_CHILD = r"""
import importlib, json, os, signal, sys, threading, time
spec = json.loads(sys.argv[1])
kill = spec["kill"]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


mod, attr = kill["target"].split(":")
owner = importlib.import_module(mod)
*path, name = attr.split(".")
for p in path:
    owner = getattr(owner, p)
real = getattr(owner, name)
calls = [0]


def hooked(*args, **kwargs):
    calls[0] += 1
    if kill.get("pause") and calls[0] == kill["at"]:  # hold on (alive) until told to go on
        open(kill["pause"] + ".ready", "w").close()
        while not os.path.exists(kill["pause"] + ".go"):
            time.sleep(0.05)
        return real(*args, **kwargs)
    if kill.get("delay") is not None:
        if calls[0] == 1:
            threading.Timer(kill["delay"], die).start()
        return real(*args, **kwargs)
    if calls[0] == kill["at"] and kill["when"] == "before":
        die()
    out = real(*args, **kwargs)
    if calls[0] == kill["at"] and kill["when"] == "after":
        die()
    return out


setattr(owner, name, hooked)
from amnet.cli import cache_cli, main
{"amnet": main, "amnet-cache": cache_cli}[spec["cli"]](spec["args"], prog_name=spec["cli"])
"""


@dataclass(frozen=True)
class Kill:
    target: str
    when: str = "after"
    at: int = 1
    delay: float | None = None
    pause: str | None = None     # instead of dying: wait at call `at` until `<pause>.go` exists

    def label(self) -> str:
        where = f"{self.delay:.2f}s-after-first" if self.delay is not None else \
            f"{self.when}-{self.at}"
        return f"{self.target.replace(':', '.')}-{where}"


def _child(folder: Path, cli: str, args: list, kill: Kill) -> list[str]:
    script = folder / "killed_child.py"
    script.write_text(_CHILD)
    spec = {"cli": cli, "args": [str(a) for a in args], "kill": kill.__dict__}
    return [sys.executable, str(script), json.dumps(spec)]


def run_killed(folder: Path, cli: str, args: list, kill: Kill, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """`cli args` in a child python that SIGKILLs itself at `kill`."""
    return subprocess.run(_child(folder, cli, args, kill), cwd=folder, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_paused(folder: Path, cli: str, args: list, target: str, at: int,
                 timeout: float = 600) -> tuple[subprocess.Popen, Path]:
    """`cli args` in a child python that stops (alive) at the `at`-th call of `target` until
    the returned path's `.go` file exists; returns once it is waiting there."""
    pause = folder / "pause"
    p = subprocess.Popen(_child(folder, cli, args, Kill(target, at=at, pause=str(pause))),
                         cwd=folder, env=subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not pause.with_suffix(".ready").exists():
        if p.poll() is not None or time.monotonic() > deadline:
            out, err = p.communicate()
            raise AssertionError(f"the child did not reach its pause: {out}{err}")
        time.sleep(0.05)
    return p, pause


@dataclass
class FaultOutcome:
    id: str
    killed: bool                # the child died of SIGKILL (else the point was never reached)
    clean: bool                 # killed, resumed with exit 0, no traceback, identical, no debris
    traceback: bool
    lost: int                   # rows (or output files) that differ from the uninterrupted run's
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "killed", "clean", "traceback", "lost",
                                              "problems", "seconds", "output")}


@dataclass(frozen=True)
class Fault:
    id: str
    run: Callable[["FaultWorld", Path], FaultOutcome]
    pending: str | None = None


# ---- the uninterrupted runs ----------------------------------------------------------------------

@dataclass
class FaultWorld:
    root: Path
    images: Path
    cache: Path                  # `amnet-cache extract` of the 12 images, uninterrupted
    rows: dict[str, bytes]
    shards: list[Path]           # its 2 shards
    splits: dict[str, Path]
    train_ref: Path              # `amnet train` outputs, uninterrupted


def _cli_ok(cli: str, args: list) -> zoo.Run:
    r = zoo.run_cli(cli, args)
    assert r.code == 0 and not r.traceback, r.output + r.traceback
    return r


def build_fault_world(root: Path) -> FaultWorld:
    """Within `zoo.shared_trunks()`."""
    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    for i, n in enumerate(NAMES):
        write_image(images / n, "rgb", seed=100 + i)
    cache = root / "cache.h5"
    _cli_ok("amnet-cache", ["extract", images, "--out", cache, *EXTRACT, "-q"])
    shards = []
    for i in range(2):
        _cli_ok("amnet-cache", ["extract", images, "--out", root / "s{i}.h5", *EXTRACT,
                                "--shard", f"{i}/2", "-q"])
        shards.append(root / f"s{i}.h5")
    scores = {n: 0.3 + 0.04 * i for i, n in enumerate(NAMES)}
    splits = {}
    for part, names in (("train", NAMES[:8]), ("val", NAMES[8:10]), ("test", NAMES[10:])):
        splits[part] = root / f"{part}.txt"
        splits[part].write_text("".join(f"{n} {scores[n]:.6f}\n" for n in names))
    train_ref = root / "train-ref"
    _cli_ok("amnet", train_args(cache, splits, train_ref))
    return FaultWorld(root, images, cache, zoo.cache_rows(cache), shards, splits, train_ref)


def train_args(cache: Path, splits: dict[str, Path], out: Path) -> list:
    return ["train", "--cache", cache, "--train", splits["train"], "--val", splits["val"],
            "--test", splits["test"], "--out", out, *TRAIN]


# ---- comparing with them -------------------------------------------------------------------------

def debris(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if (zoo.DEBRIS.search(p.name) and p.name != "dvc.lock")  # DVC's record
                  or p.name == ".train-state")


def compare_cache(out: Path, ref_rows: dict[str, bytes], names: list[str]) -> tuple[int, list[str]]:
    """(rows lost, problems) of `out` against the uninterrupted run's rows."""
    try:
        rows = zoo.cache_rows(out)
        got_names = zoo.cache_names(out)
    except Exception as e:  # noqa: BLE001
        return len(ref_rows), [f"{out.name}: unreadable after resume ({type(e).__name__}: {e})"]
    lost = [n for n in names if rows.get(n) != ref_rows[n]]
    problems = [f"{len(lost)} rows differ from the uninterrupted run: {lost[:4]}"] if lost else []
    if got_names != names:
        problems.append(f"names {got_names[:4]}... differ from the uninterrupted run's")
    v = zoo.run_cli("amnet-cache", ["verify", out])
    if v.code != 0:
        problems.append(f"verify after resume: {v.output.strip()}")
    return len(lost), problems


def compare_train(out: Path, ref: Path) -> tuple[int, list[str]]:
    """(output files that differ, problems): metrics.json and predictions.csv byte for byte, the
    checkpoint's every tensor and entry, the history but for its seconds column."""
    import pandas as pd
    import torch
    bad = []
    for name in ("metrics.json", "predictions.csv"):
        a, b = out / name, ref / name
        # metrics.json names its checkpoint: the reference's lives elsewhere
        if not a.is_file() or a.read_bytes().replace(str(out).encode(), str(ref).encode()) \
                != b.read_bytes():
            bad.append(name)
    try:
        ca, cb = (torch.load(d / "head.pt", weights_only=True) for d in (out, ref))
        sa, sb = ca.pop("state_dict"), cb.pop("state_dict")
        if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa) or ca != cb:
            bad.append("head.pt")
    except Exception:  # noqa: BLE001
        bad.append("head.pt")
    try:
        ha, hb = (pd.read_csv(d / "history.csv").drop(columns="seconds") for d in (out, ref))
        if not ha.equals(hb):
            bad.append("history.csv")
    except Exception:  # noqa: BLE001
        bad.append("history.csv")
    return len(bad), ([f"differ from the uninterrupted run: {bad}"] if bad else [])


def _outcome(fid: str, child: subprocess.CompletedProcess, resumed: zoo.Run, lost: int,
             problems: list[str], folder: Path, t0: float, timed: bool = False) -> FaultOutcome:
    killed = child.returncode == -signal.SIGKILL
    if not killed and not (timed and child.returncode == 0):
        problems.insert(0, f"the child was not killed (exit {child.returncode}): "
                           f"{child.stderr[-500:]}")
    if resumed.traceback:
        problems.append("traceback on resume: " + resumed.traceback.strip().splitlines()[-1])
    elif resumed.code != 0:
        problems.append(f"resume exit {resumed.code}: {resumed.output.strip()[-400:]}")
    left = debris(folder)
    if left:
        problems.append(f"left behind after the resume: {left}")
    return FaultOutcome(fid, killed, not problems, bool(resumed.traceback), lost, problems,
                        round(time.perf_counter() - t0, 2), resumed.output[-1500:])


# ---- the commands --------------------------------------------------------------------------------

def extract_fault(kill: Kill) -> Callable[[FaultWorld, Path], FaultOutcome]:
    def run(world: FaultWorld, folder: Path) -> FaultOutcome:
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "f.h5"
        args = ["extract", world.images, "--out", out, *EXTRACT, "-q"]
        child = run_killed(folder, "amnet-cache", args, kill)
        resumed = zoo.run_cli("amnet-cache", args)
        lost, problems = compare_cache(out, world.rows, NAMES) if resumed.code == 0 else \
            (len(NAMES), [])
        return _outcome(f"extract/{kill.label()}", child, resumed, lost, problems, folder, t0,
                        kill.delay is not None)
    return run


def merge_fault(kill: Kill) -> Callable[[FaultWorld, Path], FaultOutcome]:
    def run(world: FaultWorld, folder: Path) -> FaultOutcome:
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        shards = [Path(shutil.copyfile(s, folder / s.name)) for s in world.shards]
        out = folder / "merged.h5"
        args = ["merge", out, *shards]
        child = run_killed(folder, "amnet-cache", args, kill)
        resumed = zoo.run_cli("amnet-cache", args)
        lost, problems = compare_cache(out, world.rows, NAMES) if resumed.code == 0 else \
            (len(NAMES), [])
        return _outcome(f"merge/{kill.label()}", child, resumed, lost, problems, folder, t0,
                        kill.delay is not None)
    return run


def train_fault(kill: Kill) -> Callable[[FaultWorld, Path], FaultOutcome]:
    def run(world: FaultWorld, folder: Path) -> FaultOutcome:
        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "run"
        args = train_args(world.cache, world.splits, out)
        child = run_killed(folder, "amnet", args, kill)
        resumed = zoo.run_cli("amnet", args)
        lost, problems = compare_train(out, world.train_ref) if resumed.code == 0 else \
            (len(TRAIN_OUTPUTS), [])
        return _outcome(f"train/{kill.label()}", child, resumed, lost, problems, folder, t0,
                        kill.delay is not None)
    return run


# Where each command can be killed: (target, calls it sees in one run, the sides of a call a
# kill may land on). extract: 6 batches of 2; merge: one block, then its rename (killed after
# it, a merge is done); train: 3 epochs of 4 batches, a state save per epoch, then 4 renames
# publishing the outputs. The seeded random points are drawn from these; the timed ones arm
# at the first call of the first target (a merge is too short to time).
POINTS = {
    "extract": [("amnet.cache.writer:write_rows", 6, "ba"), ("h5py:Dataset.__setitem__", 12, "ba"),
                ("h5py:File.flush", 3, "ba"), ("amnet.cache.writer:create", 1, "ba"),
                ("os:replace", 1, "b")],
    "merge": [("amnet.cache.writer:write_rows", 1, "ba"), ("h5py:Dataset.__setitem__", 2, "ba"),
              ("amnet.cache.writer:create", 1, "ba"), ("os:replace", 1, "b")],
    "train": [("amnet.head.epochs:amnet_loss", 12, "ba"), ("amnet.head.epochs:train_epoch", 3, "ba"),
              ("torch:save", 4, "ba"), ("os:replace", 7, "ba")],
}
MAX_DELAY = {"extract": 0.3, "merge": 0.0, "train": 0.5}  # seconds; about a run's length here
MAKERS = {"extract": extract_fault, "merge": merge_fault, "train": train_fault}


def seeded_kills(command: str, seed: int, extra: int = 0, timed: int = 0) -> list[Kill]:
    """Kill points of `command` drawn with `random.Random` seeded by (command, seed): one per
    target of POINTS[command] (its call and side drawn), `extra` more from any target, and
    `timed` timer kills at delays up to MAX_DELAY[command] after the first call of its first
    target."""
    rng = random.Random(f"{command}:{seed}")
    kills = []
    for k in range(len(POINTS[command]) + extra):
        target, calls, sides = POINTS[command][k] if k < len(POINTS[command]) else \
            rng.choice(POINTS[command])
        when = {"b": "before", "a": "after"}[rng.choice(sides)]
        kills.append(Kill(target, when, rng.randint(1, calls)))
    if MAX_DELAY[command]:
        arm = POINTS[command][0][0]
        kills += [Kill(arm, delay=round(rng.uniform(0, MAX_DELAY[command]), 3))
                  for _ in range(timed)]
    return kills


# the fixed points: a batch boundary and mid-write in extract, a merge killed before its
# rename, a training killed mid-epoch
FIXED = [("extract", Kill("amnet.cache.writer:write_rows", "after", 2)),
         ("extract", Kill("h5py:Dataset.__setitem__", "before", 6)),
         ("merge", Kill("os:replace", "before", 1)),
         ("train", Kill("amnet.head.epochs:amnet_loss", "after", 6))]


def faults(seed: int = 0, extra: int = 0, timed: int = 2) -> list[Fault]:
    """The fixed points, then per command the seeded points (one per target, `extra` more,
    `timed` timer points), then the DVC ones."""
    out = [Fault(f"{c}/{k.label()}", MAKERS[c](k)) for c, k in FIXED]
    seen = {f.id for f in out}
    for command in ("extract", "merge", "train"):
        for k in seeded_kills(command, seed, extra, timed):
            fid = f"{command}/{k.label()}"
            if fid not in seen:
                seen.add(fid)
                out.append(Fault(fid, MAKERS[command](k)))
    out += [Fault(f"dvc/{stage}-kill-{who}", dvc_fault(stage, who, seed))
            for stage in ("extract", "train") for who in ("stage", "dvc")]
    return out


# ---- dvc repro -----------------------------------------------------------------------------------

def dvc_params() -> dict:
    """A tiny demo (80 images of 48 px, random:0 at 32 px, a 16-wide head, 6 epochs), fp32."""
    import yaml
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(dataset="demo", root="", splits=[1, 2])
    p["data"]["demo"] = {"n_images": 80, "image_size": 48}
    p["backbone"].update(weights="random:0", image_size=32, flip=False, views=0, precision="fp32")
    p["extract_run"].update(batch_size=2, workers=0, device="cpu")
    p["model"].update(feature_dim=16, hidden_dim=16, regressor_dim=8)
    p["train"].update(epochs=6, batch_size=4, device="cpu", precision="fp32")
    p["evaluate"]["attention_figures"] = 1
    return p


def dvc_env() -> dict[str, str]:
    return subprocess_env(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                          GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")


def dvc_project(folder: Path) -> Path:
    """A git + DVC repository holding this checkout's pipeline with `dvc_params()`."""
    import yaml
    folder.mkdir(parents=True)
    copy_pipeline(folder)
    (folder / "params.yaml").write_text(yaml.safe_dump(dvc_params(), sort_keys=False))
    env = dvc_env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "config", "core.analytics", "false"],
                ["dvc", "config", "core.check_update", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "tiny demo"]):
        subprocess.run(cmd, cwd=folder, env=env, check=True, capture_output=True, timeout=300)
    return folder


def dvc_repro(folder: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", "repro"], cwd=folder, env=dvc_env(), capture_output=True,
                          text=True, timeout=timeout)


DVC_OUTPUTS = ("metrics/summary.json", "metrics/splits/1.json", "metrics/splits/2.json",
               "metrics/predictions.csv", "train/1/predictions.csv", "train/2/predictions.csv",
               "dvc.lock")


def compare_dvc(proj: Path, ref: Path) -> tuple[int, list[str]]:
    """The cache's rows, both checkpoints' tensors and the metrics files against the
    uninterrupted `dvc repro`'s."""
    import torch
    ref_rows = zoo.cache_rows(ref / "data/features/demo.h5")
    names = zoo.cache_names(ref / "data/features/demo.h5")
    lost, problems = compare_cache(proj / "data/features/demo.h5", ref_rows, names)
    for k in (1, 2):
        try:
            a, b = (torch.load(p / f"models/{k}.pt", weights_only=True)["state_dict"]
                    for p in (proj, ref))
            same = a.keys() == b.keys() and all(torch.equal(a[x], b[x]) for x in a)
        except Exception:  # noqa: BLE001
            same = False
        if not same:
            lost += 1
            problems.append(f"models/{k}.pt differs")
    for rel in DVC_OUTPUTS:
        if rel == "dvc.lock":
            continue
        if not (proj / rel).is_file() or (proj / rel).read_bytes() != (ref / rel).read_bytes():
            lost += 1
            problems.append(f"{rel} differs")
    return lost, problems


_DVC_REF: dict[str, Path] = {}


def dvc_reference(base: Path) -> Path:
    """The uninterrupted `dvc repro`, once per process."""
    if "ref" not in _DVC_REF:
        ref = dvc_project(base / "dvc-ref")
        p = dvc_repro(ref)
        assert p.returncode == 0, p.stdout + p.stderr
        _DVC_REF["ref"] = ref
    return _DVC_REF["ref"]


def _stage_process(dvc_pid: int, script: str):
    """The python process running pipeline/<script> under dvc (a child or grandchild)."""
    import psutil
    try:
        for c in psutil.Process(dvc_pid).children(recursive=True):
            try:
                if any(a.endswith(f"pipeline/{script}") for a in c.cmdline()) and \
                        "python" in os.path.basename(c.cmdline()[0]):
                    return c
            except psutil.Error:
                continue
    except psutil.Error:
        return None
    return None


def _started(proj: Path, stage: str) -> bool:
    """The stage did some work already: a feature row written, or an epoch's state saved."""
    if stage == "extract":
        partial = proj / "data/features/demo.partial.h5"
        if not partial.is_file():
            return False
        try:
            import h5py
            with h5py.File(partial, "r", locking=False) as f:
                return bool(f["done"][:].any())
        except Exception:  # noqa: BLE001 - being created
            return False
    return (proj / "models/.train-state/1.pt.state").is_file()


def _pause(proc) -> bool:
    """SIGSTOP `proc` and wait (<= 5 s) until the kernel shows it stopped: the signal is
    delivered asynchronously, so the state read straight after it may still say running.
    False (and the process let go on) when it ended first or never showed as stopped."""
    import psutil
    try:
        proc.suspend()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status = proc.status()
            if status == psutil.STATUS_STOPPED:
                return True
            if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return False
            time.sleep(0.01)
        proc.resume()
    except psutil.Error:
        pass
    return False


def _kill_in_stage(p: subprocess.Popen, proj: Path, stage: str, script: str, who: str,
                   delay: float):
    """Wait for `dvc repro` (`p`) to run pipeline/`script` and for it to have done some work;
    `delay` s later pause the stage's python (SIGSTOP: it is surely mid-work, and alive, from
    then on), then SIGKILL it (`who` "stage") or dvc itself ("dvc"). -> (the stage's psutil
    process or None, killed?); not killed when the stage ended before it could be paused."""
    import psutil
    victim, deadline = None, time.monotonic() + 900
    while p.poll() is None and time.monotonic() < deadline:
        victim = victim or _stage_process(p.pid, script)
        if victim is not None and _started(proj, stage):
            time.sleep(delay)
            if not _pause(victim):
                return victim, False
            os.kill(victim.pid if who == "stage" else p.pid, signal.SIGKILL)
            return victim, True
        time.sleep(0.02)
    return victim, False


def _let_finish(victim) -> int | None:
    """Let a paused orphan go on and wait for its end (killed after 900 s); its exit code."""
    import psutil
    _signal(victim, signal.SIGCONT)
    try:
        return victim.wait(timeout=900)
    except psutil.TimeoutExpired:
        _signal(victim, signal.SIGKILL)
    except psutil.Error:
        pass
    return None


def _signal(proc, sig: int) -> bool:
    """Send `sig` to psutil process `proc`; False when it is gone already."""
    import psutil
    try:
        proc.send_signal(sig)
        return True
    except psutil.Error:
        return False


def dvc_fault(stage: str, who: str, seed: int) -> Callable[[FaultWorld, Path], FaultOutcome]:
    """`dvc repro` killed in `stage` (extract, or train@1): the stage's python alone (`who` =
    "stage": dvc reports the failure), or the `dvc` process alone ("dvc": the stage goes on as
    an orphan; a `dvc repro` started while it lives -- it is paused with SIGSTOP from just
    before dvc is killed, so that it surely does -- must stop, naming it; then it goes on and
    ends). Then `dvc repro` again, compared with an uninterrupted one."""
    script = "extract.py" if stage == "extract" else "train.py"

    def run(world: FaultWorld, folder: Path) -> FaultOutcome:
        t0 = time.perf_counter()
        ref = dvc_reference(world.root)
        proj = dvc_project(folder / "proj")
        delay = random.Random(f"dvc:{stage}:{who}:{seed}").uniform(0, 0.15)
        log = folder / "first-repro.log"  # a file, not a pipe: an orphan holds its write end
        with open(log, "w") as fh:
            p = subprocess.Popen(["dvc", "repro"], cwd=proj, env=dvc_env(), stdout=fh,
                                 stderr=subprocess.STDOUT)
        victim = None
        try:
            victim, killed = _kill_in_stage(p, proj, stage, script, who, delay)
            p.wait(timeout=900)
            problems = [] if killed else [f"{stage} was not caught working (it ended before "
                                          f"it could be paused): {log.read_text()[-500:]}"]
            if killed and who == "dvc":
                # the orphan is paused: a new `dvc repro` starts while it surely lives
                second = dvc_repro(proj)
                said = second.stdout + second.stderr
                if second.returncode == 0 or f"being written by pid {victim.pid}" not in said:
                    problems.append(f"a dvc repro beside the live orphan: exit "
                                    f"{second.returncode}: {said[-600:]}")
        finally:
            orphan_code = _let_finish(victim) if who == "dvc" and victim is not None else None
        final = dvc_repro(proj)
        text = final.stdout + final.stderr
        tb = "Traceback (most recent" in text
        if final.returncode != 0:
            problems.append(f"dvc repro after the kill: exit {final.returncode}: {text[-800:]}")
            lost = len(DVC_OUTPUTS)
        else:
            lost, more = compare_dvc(proj, ref)
            problems += more
        left = [d for d in debris(proj) if not d.startswith((".dvc/", ".git/"))
                and d != "dvc.lock"]
        if left:
            problems.append(f"left behind: {left}")
        out = f"{log.read_text()[-600:]}\n(orphan exit {orphan_code})\n{text[-900:]}"
        return FaultOutcome(f"dvc/{stage}-kill-{who}", killed, killed and not problems, tb, lost,
                            problems, round(time.perf_counter() - t0, 2), out)
    return run
