"""Issue 24, one path per operation in stage one: `amnet-cache extract` and the DVC stage
`extract` (pipeline/extract.py) both run amnet.extract.resume.extract_to, so a damaged file is
salvaged and resumed by both, Ctrl-C says in both what was kept and that a rerun resumes, and
both end with the same summary line naming the file the rows are in.

Uses test_pipeline's toy project (40 demo images, random:0 at 32 px)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from test_pipeline import N_IMAGES, _command, _copy, _features, _stage, _summary, project  # noqa: F401

pytestmark = pytest.mark.slow  # each test runs a stage or the CLI in a python of its own

# `amnet-cache extract` with the settings of the toy project's params.yaml (test_pipeline._params)
SETTINGS = ["--weights", "random:0", "--image-size", "32", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", "--precision", "auto"]

# Runs `amnet-cache ...` or a stage script with a Ctrl-C (a real SIGINT) right after batch 2 of
# the extraction is written (as a user's Ctrl-C at that moment would).
_CTRL_C = """\
import os, runpy, signal, sys
import amnet.extract.run as E
signal.signal(signal.SIGINT, signal.default_int_handler)  # even under a shell's background job
extract = E.extract


def interrupted(*args, **kw):
    def hook(batches, extracted):
        if batches == 2:
            os.kill(os.getpid(), signal.SIGINT)
    return extract(*args, on_batch=hook, **kw)


E.extract = interrupted  # amnet.extract.resume calls it from here
if sys.argv[1] == "amnet-cache":
    from amnet.cli import cache_cli
    cache_cli.main(sys.argv[2:], prog_name="amnet-cache")
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _cli(proj: Path, out: Path, *, ctrl_c: Path | None = None) -> subprocess.CompletedProcess:
    """`amnet-cache extract` of the project's images into `out`, in a python of its own."""
    data = proj / "data" / "demo"
    args = ["extract", str(data / "images.txt"), "--images-root", str(data / "images"),
            "--out", str(out), *SETTINGS]
    argv = ([sys.executable, str(ctrl_c), "amnet-cache", *args] if ctrl_c else
            [sys.executable, "-c", "from amnet.cli import cache_cli; cache_cli()", *args])
    return subprocess.run(argv, cwd=proj, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)


def _kept(err: str) -> int:
    m = re.search(r"kept (\d+) of 40 rows of ", err)
    assert m, err
    return int(m[1])


def test_cli_and_stage_salvage_the_same_damaged_file_alike(project, tmp_path):
    """issue 24: the same truncated file was salvaged under DVC and an error from the CLI."""
    proj = _copy(project, tmp_path)
    cache = proj / "data" / "features" / "demo.h5"
    ref = _features(cache)
    data = cache.read_bytes()
    cache.unlink()
    cut = data[:int(len(data) * 0.7)]
    partial = cache.with_name("demo.partial.h5")
    partial.write_bytes(cut)
    mine = tmp_path / "mine.h5"
    mine.write_bytes(cut)

    stage, cli = _stage(proj, "extract.py"), _cli(proj, mine)
    assert cli.returncode == 0, cli.stderr
    kept = _kept(stage.stderr)
    assert 0 < kept < N_IMAGES and _kept(cli.stderr) == kept       # the same rows saved
    for err, prefix in ((stage.stderr, "extract: "), (cli.stderr, "warning: ")):
        assert f"{prefix}{Path('data/features/demo.partial.h5') if prefix == 'extract: ' else mine}" \
               f": truncated: " in err and "salvaging its complete rows" in err, err
        assert "in use" not in err
    s = _summary(stage)
    assert s["already"] == kept and s["extracted"] == N_IMAGES - kept and s["complete"]
    for path in (cache, mine):         # the rest extracted, to the uninterrupted run's bytes
        got = _features(path)
        assert got["complete"] and got["features"].tobytes() == ref["features"].tobytes()

    # the same summary line, naming the file the rows are in now (not the partial file)
    line = cli.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{mine}: extracted {N_IMAGES - kept} images in ")
    assert line.endswith(f", {kept} already there, 0 skipped now, 0 failed in total; complete")
    stage_line = stage.stdout.strip().splitlines()[-1]
    assert stage_line.startswith(f"extract: {Path('data/features/demo.h5')}: extracted ")
    assert re.sub(r"^\S+: ", "", stage_line.removeprefix("extract: ")).split(" in ")[0] == \
        re.sub(r"^\S+: ", "", line).split(" in ")[0]
    assert "partial" not in stage.stdout and "{" not in stage.stdout   # no raw dict


def test_ctrl_c_says_what_is_kept_and_that_a_rerun_resumes(project, tmp_path):
    proj = _copy(project, tmp_path)
    cache = proj / "data" / "features" / "demo.h5"
    cache.unlink()
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C)

    mine = tmp_path / "mine.h5"
    cli = _cli(proj, mine, ctrl_c=script)
    assert cli.returncode == 130, cli.stderr
    assert "Aborted!" not in cli.stderr
    assert cli.stderr.strip().splitlines()[-1] == (
        f"Error: interrupted: 16 of {N_IMAGES} images extracted are kept in {mine}; rerun the "
        "same command to resume")
    again = _cli(proj, mine)
    assert f"{mine}: extracted {N_IMAGES - 16} images in " in again.stderr
    assert f", 16 already there, " in again.stderr

    stage = subprocess.run([sys.executable, str(script), *_command("extract")[1:]], cwd=proj,
                           env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert stage.returncode == 130, stage.stderr
    assert "Aborted!" not in stage.stderr
    assert stage.stderr.strip().splitlines()[-1] == (
        f"extract: interrupted: 16 of {N_IMAGES} images extracted are kept in "
        f"{Path('data/features/demo.partial.h5')}; the next `dvc repro` resumes")
    s = _summary(_stage(proj, "extract.py"))
    assert s["already"] == 16 and s["extracted"] == N_IMAGES - 16 and cache.is_file()
