"""The bad-input zoo (issue 11, "The suite"): every case of tests/zoo_cases.py through the real
CLI, judged by tests/zoo.py (exit code, one line naming the file and line, no traceback, nothing
lost, no debris). `python bench/faults.py` runs the same cases and prints the totals."""
from __future__ import annotations

import pytest

import zoo
from zoo_cases import all_cases


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with zoo.shared_trunks():
        yield zoo.build_world(tmp_path_factory.mktemp("zoo-world"))


CASES = all_cases()


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=case.pending)] if case.pending else []
    return pytest.param(case, id=case.id, marks=marks)


def test_the_zoo_is_big_enough():
    groups = {c.group for c in CASES}
    assert len(CASES) >= 80 and groups == {"images", "lists", "caches", "shards", "pickles"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.slow  # a fresh CLI run per case: minutes in all (`python -m pytest -q -m slow`)
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_zoo(case, world, tmp_path):
    with zoo.shared_trunks():
        outcome = zoo.run_case(case, world, tmp_path / "case")
    assert outcome.clean, "\n".join(outcome.problems) + "\n--- output:\n" + outcome.output
