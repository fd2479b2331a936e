"""Issue 24, one path per operation in stage one: `amnet-cache extract` and the DVC stage
`extract` (pipeline/extract.py) both run amnet.extract.resume.extract_to, so a damaged file is
salvaged and resumed by both, Ctrl-C says in both what was kept and that a rerun resumes, and
both end with the same summary line naming the file the rows are in.

The library function itself is tested in-process (fast); the CLI and the stage each in a python
of their own, on test_pipeline's toy project (40 demo images, random:0 at 32 px; slow)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from amnet.core.errors import DamagedCacheError, RunInterrupted
from amnet.extract.image_files import list_image_folder
from amnet.extract.resume import extract_to, partial_path
from conftest import subprocess_env
from test_pipeline import N_IMAGES, _command, _copy, _features, _stage, _summary, project  # noqa: F401

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


# ---- extract_to in-process: fast --------------------------------------------------------------

def _kw(backbones) -> dict:
    return dict(weights="random:0", image_size=32, device="cpu", batch_size=4, progress=False,
                backbone=backbones("random:0"))


def test_extract_to_salvages_a_damaged_file_then_resumes(image_dir, tmp_path, backbones):
    items = list_image_folder(image_dir)
    whole = tmp_path / "whole.h5"
    ref = extract_to(items, whole, **_kw(backbones))
    assert ref["complete"] and ref["extracted"] == 11 and ref["out"] == str(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:int(len(data) * 0.75)])
    notes: list[str] = []
    s = extract_to(items, cut, note=notes.append, **_kw(backbones))
    assert notes[0].startswith(f"{cut}: truncated: ") and notes[0].endswith(
        "; salvaging its complete rows")
    assert notes[1] == f"kept {s['already']} of 11 rows of {cut}; extracting the rest"
    assert 0 < s["already"] < 11 and s["extracted"] == 11 - s["already"] and s["complete"]
    assert _features(cut)["features"].tobytes() == _features(whole)["features"].tobytes()

    junk = tmp_path / "junk.h5"                     # nothing to salvage: refused, one line
    junk.write_bytes(b"not a cache at all" * 100)
    with pytest.raises(DamagedCacheError, match=r"nothing to salvage.*\(--overwrite starts it "
                                                r"afresh\)$"):
        extract_to(items, junk, note=notes.append, **_kw(backbones))


def test_extract_to_via_partial_renames_only_when_complete(image_dir, tmp_path, backbones):
    items = list_image_folder(image_dir)
    out = tmp_path / "feats.h5"
    partial = partial_path(out)
    assert partial == tmp_path / "feats.partial.h5"

    def stop(batches, _):
        if batches == 2:
            raise KeyboardInterrupt  # a Ctrl-C right after batch 2 was written

    with pytest.raises(RunInterrupted) as e:
        extract_to(items, out, via_partial=True, on_batch=stop, **_kw(backbones))
    assert str(e.value) == (f"interrupted: 8 of 11 images extracted are kept in {partial}; "
                            "rerun the same command to resume")
    assert e.value.exit_code == 130 and partial.is_file() and not out.exists()
    s = extract_to(items, out, via_partial=True, **_kw(backbones))
    assert s["already"] == 8 and s["extracted"] == 3 and s["out"] == str(out)
    assert out.is_file() and not partial.exists()


# ---- the CLI and the stage, each in a python of its own: slow ---------------------------------

@pytest.mark.slow
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


@pytest.mark.slow
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
