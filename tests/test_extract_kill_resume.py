"""Issue 19, "The resume failure": `amnet-cache extract` with DataLoader workers, its main
process killed with kill -9 at seeded random moments while every core is loaded, then rerun at
once: every rerun exits 0 and its cache equals an uninterrupted run's byte for byte
(tests/kill_resume.py). Before the fix the workers, forked while the file was open, kept HDF5's
lock on it after their parent died, and a quick rerun failed with "in use by another process".
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import kill_resume
from conftest import subprocess_env

# processes killed and rerun, some under a full CPU load: the slow set (`-m slow`)
pytestmark = pytest.mark.slow

KILLS = 8


def test_kill_9_at_random_points_under_load_resumes_identical(tmp_path):
    images = kill_resume.make_images(tmp_path / "images", 24)
    runner = kill_resume.Warm(tmp_path)
    load = kill_resume.cpu_load()
    try:
        got, seconds = kill_resume.tries(runner, images, tmp_path / "runs", KILLS, seed=0)
    finally:
        for p in load:
            p.kill()
            p.wait()
        runner.close()
    bad = [t.problem() for t in got if not t.clean]
    assert not bad, f"{len(bad)} of {len(got)} resumes failed:\n" + "\n".join(bad)
    # the kills landed while the run and its workers lived (else they tested nothing)
    assert sum(t.killed and t.workers > 0 for t in got) >= KILLS // 2, \
        [(t.delay, t.killed, t.workers) for t in got] + [seconds]


_WORKER_LIFE = r"""
import functools, os, sys, time
import torch
from torch.utils.data import DataLoader


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        time.sleep(30 if i else 0)  # the first batch at once, then each worker busy for 30 s
        return i


init = None
if sys.argv[1] == "1":
    from amnet.extract.decode_workers import die_with_parent
    init = functools.partial(die_with_parent, os.getpid())
loader = DataLoader(Slow(), batch_size=1, num_workers=2, prefetch_factor=8, worker_init_fn=init)
it = iter(loader)
next(it)
print("running", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("tied", [True, False])
def test_workers_die_with_their_parent(tmp_path, tied):
    """`die_with_parent`: a DataLoader's workers end as soon as kill -9 ends the process that
    iterates it, in the middle of an item (without it they finish that item first, and the
    DataLoader's watchdog ends them after); one that had not started yet ends as it starts."""
    import psutil
    script = tmp_path / "loader.py"
    script.write_text(_WORKER_LIFE)
    p = subprocess.Popen([sys.executable, str(script), "1" if tied else "0"],
                         stdout=subprocess.PIPE, text=True, env=subprocess_env())
    workers = []
    try:
        assert p.stdout.readline().strip() == "running"
        workers = psutil.Process(p.pid).children()
        assert len(workers) == 2
        os.kill(p.pid, signal.SIGKILL)  # the main process only
        p.wait(timeout=30)

        def alive():
            return [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        deadline = time.monotonic() + (20 if tied else 2)  # long: a loaded CPU may delay a start
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (alive() == []) == tied, alive()
    finally:
        for proc in [p, *workers]:
            try:
                proc.kill()
            except (psutil.Error, ProcessLookupError):
                pass
        p.wait(timeout=30)


# ---- should a child hold the file anyway: the rerun waits for it, naming it ------------------

_DIES_LEAVING_A_CHILD = r"""
import os, sys, time
import h5py
from amnet.core.lockfile import acquire
acquire(sys.argv[1])
f = h5py.File(sys.argv[1], "r+")
pid = os.fork()
if pid == 0:  # inherits the open file, and HDF5's lock on it, then outlives its parent
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)
    time.sleep(float(sys.argv[2]))
    os._exit(0)
print(pid, flush=True)
os._exit(0)  # killed, in effect: no release, no close
"""

KW = dict(weights="random:0", image_size=32, device="cpu", batch_size=2, workers=0,
          precision="fp32", progress=False)


def _extracted(image_dir, out, backbones):
    from amnet.extract.run import extract
    from amnet.extract.image_files import list_image_folder
    return extract(list_image_folder(image_dir), out, backbone=backbones("random:0", "fp32"),
                   **KW)


def test_a_rerun_waits_for_the_children_a_killed_writer_left(image_dir, tmp_path, backbones,
                                                           caplog):
    """A writer dies (no release, no close) leaving a child that holds the file open: the rerun
    takes the stale lock, says which pid holds the file and that it waits, then resumes."""
    from amnet.core import lockfile
    out = tmp_path / "f.h5"
    _extracted(image_dir, out, backbones)
    script = tmp_path / "dies.py"
    script.write_text(_DIES_LEAVING_A_CHILD)
    p = subprocess.run([sys.executable, str(script), str(out), "3"], env=subprocess_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    child = int(p.stdout)
    dead = json.loads(lockfile.lock_path(out).read_text())["pid"]
    with caplog.at_level("WARNING", logger="amnet.lock"):
        s = _extracted(image_dir, out, backbones)
    assert s["complete"] and not lockfile.lock_path(out).exists()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith(f"{lockfile.lock_path(out)}: removed a stale "
                                                 f"lock of pid {dead} "), said
    assert said[1].startswith(f"{out}: still open in pid {child} ("), said
    assert said[1].endswith(f"which started after the killed writer pid {dead} (its "
                            "children?); waiting up to 60 s for them to let go"), said


def test_a_process_older_than_the_dead_writer_is_named_not_waited_for(image_dir, tmp_path,
                                                                     backbones):
    """A process that had the file open before the dead writer started is no child of it: the
    rerun stops at once with one line naming it, instead of "another process"."""
    from amnet.core import lockfile
    from amnet.core.errors import LockedError
    out = tmp_path / "f.h5"
    _extracted(image_dir, out, backbones)
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time, h5py; "
                               "f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); "
                               "time.sleep(120)", str(out)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    try:
        assert reader.stdout.readline().strip() == "open"
        time.sleep(1.5)  # start times are compared with a second's slack
        p = subprocess.run([sys.executable, "-c", "import os, sys; from amnet.core.lockfile import "
                            "acquire; acquire(sys.argv[1]); os._exit(0)", str(out)],
                           env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        t0 = time.monotonic()
        with pytest.raises(LockedError) as e:
            _extracted(image_dir, out, backbones)
        assert time.monotonic() - t0 < 30
        assert str(e.value).startswith(f"{out}: in use by pid {reader.pid} ("), str(e.value)
        assert str(e.value).endswith("; wait for it to finish or stop it, then rerun")
        assert not lockfile.lock_path(out).exists()
    finally:
        reader.kill()
        reader.wait()
