"""Fault injection (issue 11, "The suite"): kill -9 at batch boundaries, mid-write and at seeded
random points of extract, merge and train, and of the `dvc repro` stage children; each resumed
and compared byte for byte with an uninterrupted run (tests/faults.py). The fixed points run in
CI; the seeded and the DVC ones are marked slow (`-m slow`); `python bench/faults.py` counts
them all."""
from __future__ import annotations

import shutil

import pytest

import faults
import zoo

FAULTS = faults.faults()


@pytest.fixture(scope="module")
def fault_world(tmp_path_factory):
    with zoo.shared_trunks():
        yield faults.build_fault_world(tmp_path_factory.mktemp("fault-world"))


def _param(f: faults.Fault):
    marks = [pytest.mark.slow] if f.slow else []
    if f.pending:
        marks.append(pytest.mark.xfail(strict=True, reason=f.pending))
    if f.id == "dvc/extract-kill-dvc":   # the orphan may finish before the second repro starts
        marks.append(pytest.mark.xfail(strict=False, reason="timing-dependent on a loaded host: "
                                       "the orphaned extract can finish before the second dvc "
                                       "repro looks (tests/test_pipeline.py checks the refusal)"))
    if f.id == "dvc/train-kill-dvc":   # known, timing-dependent: only extract has a writer lock
        marks.append(pytest.mark.xfail(strict=False, reason="the train stage has no writer lock "
                                       "(issue 11 item 2 covers extraction): a second dvc repro "
                                       "beside an orphaned train stage may run alongside it"))
    if f.id.startswith("dvc/") and shutil.which("dvc") is None:
        marks.append(pytest.mark.skip(reason="dvc is not installed"))
    return pytest.param(f, id=f.id, marks=marks)


def test_fault_points_are_seeded():
    """The same seed draws the same points; another seed others."""
    a, b = faults.seeded_kills("train", 0, 6, 2), faults.seeded_kills("train", 0, 6, 2)
    assert a == b and a != faults.seeded_kills("train", 1, 6, 2)
    assert all(0 <= k.delay <= 1 for k in a if k.delay is not None)


@pytest.mark.parametrize("fault", [_param(f) for f in FAULTS])
def test_fault(fault, fault_world, tmp_path):
    with zoo.shared_trunks():
        outcome = fault.run(fault_world, tmp_path / "case")
    if outcome.clean and not outcome.killed:
        pytest.skip("the run finished before its timer went off")
    assert outcome.clean, "\n".join(outcome.problems) + "\n--- output:\n" + outcome.output
