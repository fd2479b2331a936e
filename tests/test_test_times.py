"""bench/test_times.py, which times the README's two test commands: what it reads from pytest's
output and JUnit XML, that a set's run replaces only that set's, and the README row of a set not
measured yet. (That the fast set is the default and `-m slow` the rest: setup.cfg's addopts.)"""
from __future__ import annotations

import configparser
import json
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import record, test_times  # noqa: E402

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_a" name="test_one" time="1.50" />
<testcase classname="tests.test_a" name="test_two[x-1]" time="2.25" />
<testcase classname="tests.test_b.TestGroup" name="test_three" time="4.00" />
<testcase classname="tests.test_c" name="test_four" time="0.001"><skipped /></testcase>
</testsuite></testsuites>"""


def test_the_default_command_deselects_exactly_the_slow_tests():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert shlex.split(cfg["tool:pytest"]["addopts"])[-2:] == ["-m", "not slow"]
    assert test_times.pytest_command("fast") == "python -m pytest -q"
    assert test_times.pytest_command("slow") == "python -m pytest -q -m slow"


def test_summary_counts_reads_the_last_summary_line():
    out = ("....s..\n== 3 passed in 0.5s ==\nFAILED tests/test_x.py::test_y - 2 passed\n"
           "1 failed, 557 passed, 2 skipped, 275 deselected, 1 xfailed, 3 warnings, 1 error in "
           "160.53s (0:02:40)\n")
    assert test_times.summary_counts(out) == {"failed": 1, "passed": 557, "skipped": 2,
                                              "deselected": 275, "xfailed": 1, "error": 1}
    with pytest.raises(SystemExit, match="no summary line"):
        test_times.summary_counts("ERROR: usage: pytest [options]\n")


def test_junit_times_sum_per_file_largest_first(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(JUNIT)
    files, tests = test_times.junit_times(xml)
    assert list(files.items()) == [("tests/test_b.py", 4.0), ("tests/test_a.py", 3.75),
                                   ("tests/test_c.py", 0.0)]
    assert tests[:2] == [{"test": "tests/test_b.py::test_three", "seconds": 4.0},
                         {"test": "tests/test_a.py::test_two[x-1]", "seconds": 2.25}]


def test_a_set_is_recorded_from_a_junit_report_made_elsewhere(tmp_path):
    """`--slow --junit artifacts/junit-slow.xml`: the slow set of a .ci/run, from its report."""
    xml = tmp_path / "junit-slow.xml"
    xml.write_text(JUNIT.replace('tests="4"', 'tests="4" failures="0" errors="0" skipped="1" '
                                 'time="812.25"'))
    run = test_times.run_from_junit("slow", xml)
    assert (run["set"], run["pytest_command"], run["exit_code"], run["seconds"]) == \
        ("slow", "python -m pytest -q -m slow", 0, 812.2)
    assert run["counts"] == {"passed": 3, "skipped": 1}
    assert list(run["file_seconds"])[0] == "tests/test_b.py"
    xml.write_text(JUNIT.replace('tests="4"', 'tests="4" failures="1"'))
    assert test_times.run_from_junit("slow", xml)["exit_code"] == 1
    with pytest.raises(SystemExit, match="no such JUnit report"):
        test_times.run_from_junit("slow", tmp_path / "missing.xml")
    with pytest.raises(SystemExit, match="give --fast or --slow"):
        test_times.main(["--all", "--junit", str(xml)])


def _run(which: str, seconds: float, counts: dict) -> dict:
    return {"set": which, "pytest_command": test_times.pytest_command(which), "exit_code": 0,
            "seconds": seconds, "counts": counts,
            "file_seconds": {"tests/test_a.py": 100.0, "tests/test_b.py": 61.4,
                             "tests/test_c.py": 9.0, "tests/test_d.py": 1.0},
            "slowest_tests": []}


def test_a_run_replaces_only_its_sets_run_and_renders(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS", tmp_path)
    argv = ["bench/test_times.py"]
    test_times.save(_run("fast", 150.0, {"passed": 530, "skipped": 3, "deselected": 280}), argv)
    block = test_times.render(record.load("test_times"))
    assert ("| slow | `python -m pytest -q -m slow` | 280 tests (deselected by the fast run) | "
            "not measured yet (`python bench/test_times.py --slow`) | |") in block
    assert ("| fast (the default) | `python -m pytest -q` | 530 passed, 3 skipped | 2 min 30 s | "
            "`test_a` 1 min 40 s, `test_b` 1 min 01 s, `test_c` 9 s |") in block
    test_times.save(_run("slow", 2000.4, {"passed": 280, "deselected": 534}),
                    ["bench/test_times.py", "--slow"])
    test_times.save(_run("fast", 140.0, {"passed": 533, "deselected": 280}), argv)
    runs = json.loads((tmp_path / "test_times.json").read_text())["runs"]
    assert [(r["set"], r["seconds"], r["command"]) for r in runs] == [
        ("fast", 140.0, "python bench/test_times.py"),
        ("slow", 2000.4, "python bench/test_times.py --slow")]
    block = test_times.render({"runs": runs})
    assert "| slow | `python -m pytest -q -m slow` | 280 passed | 33 min 20 s |" in block
    assert block.count("(`python bench/test_times.py") == 2 and "not measured" not in block
