"""kill -9 of `amnet-cache extract`'s main process (alone, as the OOM killer does) at seeded
random moments while other processes load every core, each killed run resumed at once by the
same command and its cache compared byte for byte with an uninterrupted run's (issue 19, "The
resume failure": DataLoader workers forked while the file was open kept HDF5's lock on it after
their parent died, and a quick rerun exited 1 with "in use by another process").

Two ways to run a command:
  - `Cold`: each run a new `amnet-cache` process (imports torch, builds the trunk: seconds), as a
    user's shell runs it;
  - `Warm`: each run a fork of one python that imported amnet and built the trunk once (with one
    compute thread, so that forking it is safe): a run starts in milliseconds, so the resume
    opens the file while anything the killed run left behind still lives -- the hardest case,
    and many kills fit in a test's minute.
tests/test_extract_kill_resume.py runs it warm; `python bench/resume_kills.py` runs it either way
and records the counts.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import zoo
from conftest import subprocess_env, write_image

EXTRACT = ["--weights", "random:0", "--image-size", "64", "--device", "cpu", "--batch-size", "4",
           "--workers", "2", "--precision", "fp32", "-q"]

_ZYGOTE = r"""
import json, os, sys
import torch
import amnet.extract.backbone, amnet.extract.run
from amnet.cli import cache_cli

weights, precision = sys.argv[1], sys.argv[2]
real, loaded = amnet.extract.backbone.load_backbone, {}


def load_backbone(w, p="auto", device="cpu", layers="layer3"):
    key = (w, p, str(device), layers)
    if key not in loaded:
        loaded[key] = real(w, p, device, layers)
    return loaded[key]


amnet.extract.backbone.load_backbone = amnet.extract.run.load_backbone = load_backbone
load_backbone(weights, precision, torch.device("cpu"))
proto_in, proto_out = sys.stdin, sys.stdout
proto_out.write("ready\n"); proto_out.flush()
for line in proto_in:
    req = json.loads(line)
    if req["op"] == "run":
        pid = os.fork()
        if pid == 0:  # the run: the CLI in this warm process, its output into the log
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0); os.dup2(fd, 1); os.dup2(fd, 2)
            sys.stdin = open(os.devnull)
            sys.stdout = os.fdopen(1, "w", buffering=1); sys.stderr = os.fdopen(2, "w", buffering=1)
            code = 0
            try:
                cache_cli(req["args"], prog_name="amnet-cache")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                import traceback; traceback.print_exc(); code = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        proto_out.write(json.dumps({"pid": pid}) + "\n"); proto_out.flush()
    else:
        _, status = os.waitpid(req["pid"], 0)
        proto_out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        proto_out.flush()
"""


class Cold:
    """Each run a new `amnet-cache` process."""

    def __init__(self, folder: Path):
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, args: list, log: Path) -> int:
        with open(log, "w") as fh:
            p = subprocess.Popen([sys.executable, "-c", "import sys; from amnet.cli import "
                                  "cache_cli; sys.argv[0] = 'amnet-cache'; cache_cli()",
                                  *map(str, args)], stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=subprocess_env())
        self.procs[p.pid] = p
        return p.pid

    def wait(self, pid: int) -> int:
        return self.procs.pop(pid).wait(timeout=600)

    def close(self) -> None:
        pass


class Warm:
    """Each run a fork of one warm python (see the module docstring)."""

    def __init__(self, folder: Path, weights: str = "random:0", precision: str = "fp32"):
        script = folder / "zygote.py"
        script.write_text(_ZYGOTE)
        # one compute thread: no OpenMP pool exists when it forks, and every run uses the same
        self.p = subprocess.Popen([sys.executable, str(script), weights, precision],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=subprocess_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
        line = self.p.stdout.readline()
        assert line.strip() == "ready", f"the warm python did not start: {line!r}"

    def _ask(self, req: dict) -> dict:
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def start(self, args: list, log: Path) -> int:
        return self._ask({"op": "run", "args": [str(a) for a in args], "log": str(log)})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["rc"]

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def cpu_load(n: int | None = None) -> list[subprocess.Popen]:
    """`n` busy processes (one per core by default): another job loading the machine."""
    n = n or len(os.sched_getaffinity(0))
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def make_images(folder: Path, n: int = 32) -> Path:
    for i in range(n):
        write_image(folder / f"k{i:03d}.jpg", "rgb", w=160, h=120, seed=300 + i)
    return folder


@dataclass
class Try:
    delay: float                 # seconds after its file appeared that the main process was killed
    killed: bool                 # it was still running then (else it had finished)
    workers: int                 # its live DataLoader workers at that moment
    resume_rc: int
    resume_output: str
    same: bool                   # the resumed cache's rows and names equal the reference's
    debris: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.resume_rc == 0 and self.same and not self.debris

    def problem(self) -> str:
        said = [ln for ln in self.resume_output.splitlines() if ln.startswith("Error:")]
        return (f"kill at {self.delay:.2f} s ({self.workers} workers alive): resume exit "
                f"{self.resume_rc}, rows {'identical' if self.same else 'DIFFER'}, debris "
                f"{self.debris}: {(said or [self.resume_output.strip()])[-1][-400:]}")


def _workers(pid: int) -> int:
    import psutil
    try:
        return len(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return 0


def _appeared(out: Path, pid: int, runner) -> None:
    """Wait until `out` exists (the run has loaded its trunk and made the file) or run `pid`
    has ended."""
    import psutil
    while not out.exists():
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.01)


def reference(runner, images: Path, folder: Path, args: list = EXTRACT
              ) -> tuple[dict[str, bytes], list[str], float]:
    """An uninterrupted run: (its rows, its names, the seconds from its file's creation to its
    end: the span the kills are drawn from)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "ref.h5"
    pid = runner.start(["extract", images, "--out", out, *args], folder / "ref.log")
    _appeared(out, pid, runner)
    t0 = time.perf_counter()
    rc = runner.wait(pid)
    seconds = time.perf_counter() - t0
    assert rc == 0, (folder / "ref.log").read_text()
    return zoo.cache_rows(out), zoo.cache_names(out), seconds


def kill_and_resume(runner, images: Path, folder: Path, ref: tuple, delay: float,
                    args: list = EXTRACT) -> Try:
    """Start an extraction into a new file, SIGKILL its main process `delay` s after the file
    appeared, rerun the same command at once and compare its file with the reference."""
    import psutil
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "f.h5"
    cmd = ["extract", images, "--out", out, *args]
    pid = runner.start(cmd, folder / "killed.log")
    _appeared(out, pid, runner)
    time.sleep(delay)
    try:
        running = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        running = False
    workers = _workers(pid) if running else 0
    if running:
        os.kill(pid, signal.SIGKILL)  # the main process only; unreaped, its pid is not reused
    killed = runner.wait(pid) == -signal.SIGKILL
    log = folder / "resume.log"
    rc = runner.wait(runner.start(cmd, log))
    same = False
    if rc == 0:
        try:
            same = zoo.cache_rows(out) == ref[0] and zoo.cache_names(out) == ref[1]
        except Exception:  # noqa: BLE001 -- unreadable: not the same
            same = False
    debris = sorted(p.name for p in folder.iterdir() if zoo.DEBRIS.search(p.name))
    return Try(round(delay, 3), killed, workers, rc, log.read_text(), same, debris)


def tries(runner, images: Path, folder: Path, n: int, seed: int, args: list = EXTRACT,
          on_try=None) -> tuple[list[Try], float]:
    """The reference run, then `n` kills at moments drawn uniformly (random.Random(seed)) over
    its extracting span, each resumed; returns (the tries, the reference's span in seconds)."""
    ref = reference(runner, images, folder / "ref", args)
    rng = random.Random(f"kill-resume:{seed}")
    out = []
    for k in range(n):
        t = kill_and_resume(runner, images, folder / f"try{k}", ref,
                            rng.uniform(0.0, ref[2]), args)
        out.append(t)
        if on_try:
            on_try(k, t)
    return out, ref[2]
