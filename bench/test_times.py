"""The test suite's wall times (issue 24, item 4): the README's two test commands, timed.

`python -m pytest -q` runs the fast set (setup.cfg's addopts deselect the tests marked `slow`);
`python -m pytest -q -m slow` runs the slow end-to-end ones (faults, zoo, DVC workflow, LNSIM end
to end, browser, kill-resume, torchrun, disk-full, the pipeline stages). This script runs one set
(or both) in a child pytest exactly as typed, plus a JUnit XML file in a temporary folder for the
per-file times, and records in docs/bench/test_times.json: the wall seconds from start to exit, the
pytest command, the counts of its summary line (passed, skipped, deselected, ...), every file's
seconds (setup + call + teardown of its tests), the slowest tests, and `record.label()` (the CPU,
its load, the date, the versions). A set's run replaces that set's previous run; then the README's
`bench:test_times` block is rendered from the file (`tests/test_readme_numbers.py` checks it).

    python bench/test_times.py            # the fast set (a few minutes on 2 cores)
    python bench/test_times.py --slow     # the slow set (over half an hour on 2 cores)
    python bench/test_times.py --all      # both, one after the other
    python bench/test_times.py --render   # the README block from docs/bench/test_times.json
    python bench/test_times.py --slow --junit artifacts/junit-slow.xml   # record a run made
                                          # elsewhere (.ci/run keeps the slow set's JUnit report)

Time it on a quiet machine: the load average at the end is recorded beside the figure.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import record  # noqa: E402

NAME = "test_times"
# the sets and their commands, as the README gives them (the fast set is pytest's default)
SETS = {"fast": ["-q"], "slow": ["-q", "-m", "slow"]}
BUDGET_S = {"fast": 300.0}  # issue 24: the default command within 5 minutes on 2 cores
SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b")
ORDER = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")


def pytest_command(which: str) -> str:
    return " ".join(["python -m pytest", *SETS[which]])


def summary_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line (`== 5 passed, 2 deselected in 3.1s ==`)."""
    lines = [ln for ln in output.splitlines() if re.search(r"\bin [\d.]+s\b", ln)
             and SUMMARY.search(ln)]
    if not lines:
        raise SystemExit("pytest printed no summary line: it did not run (see its output above)")
    return {word.rstrip("s") if word.startswith("error") else word: int(n)
            for n, word in SUMMARY.findall(lines[-1])}


def junit_times(xml_path: Path) -> tuple[dict[str, float], list[dict]]:
    """Per-file seconds (largest first) and every test's seconds from pytest's JUnit XML
    (`classname` tests.test_x[.Class] -> tests/test_x.py)."""
    files: dict[str, float] = defaultdict(float)
    tests = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        parts = case.get("classname", "").split(".")
        file = "/".join(parts[:2]) + ".py" if len(parts) >= 2 else case.get("classname", "?")
        seconds = float(case.get("time", 0))
        files[file] += seconds
        tests.append({"test": f"{file}::{case.get('name')}", "seconds": round(seconds, 2)})
    by_file = {f: round(s, 2) for f, s in sorted(files.items(), key=lambda kv: -kv[1])}
    return by_file, sorted(tests, key=lambda t: -t["seconds"])


def run_set(which: str) -> tuple[dict, int]:
    """Run one set as the README types it (+ --junitxml); -> (its record, pytest's exit code).
    Its output goes through to this terminal as it comes."""
    with tempfile.TemporaryDirectory(prefix="amnet-test-times-") as tmp:
        xml_path = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *SETS[which], f"--junitxml={xml_path}"]
        print(f"== {which}: {pytest_command(which)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        out = []
        for line in proc.stdout:
            sys.stdout.write(line)
            out.append(line)
        rc = proc.wait()
        seconds = time.perf_counter() - t0
        by_file, tests = junit_times(xml_path) if xml_path.is_file() else ({}, [])
    run = {"set": which, "pytest_command": pytest_command(which), "exit_code": rc,
           "seconds": round(seconds, 1), "counts": summary_counts("".join(out)),
           "file_seconds": by_file, "slowest_tests": tests[:20]}
    return run, rc


def run_from_junit(which: str, xml_path: Path) -> dict:
    """The record of a set's run made elsewhere, from its JUnit XML (.ci/run writes the slow
    set's to artifacts/): the suite's time and counts as pytest wrote them; exit code 0 only when
    nothing failed."""
    if not xml_path.is_file():
        raise SystemExit(f"{xml_path}: no such JUnit report (pytest --junitxml=...)")
    suites = list(ET.parse(xml_path).getroot().iter("testsuite"))
    if not suites:
        raise SystemExit(f"{xml_path}: no <testsuite> in it: not a pytest JUnit report")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors",
                                                                  "skipped")}
    counts = {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
              "failed": total["failures"], "error": total["errors"], "skipped": total["skipped"]}
    by_file, tests = junit_times(xml_path)
    return {"set": which, "pytest_command": pytest_command(which),
            "exit_code": int(bool(total["failures"] or total["errors"])),
            "seconds": round(sum(float(s.get("time", 0)) for s in suites), 1),
            "counts": {k: v for k, v in counts.items() if v}, "file_seconds": by_file,
            "slowest_tests": tests[:20],
            "source": f"a run made elsewhere (its JUnit report {xml_path.name})"}


def save(run: dict, argv: list[str] | None = None) -> Path:
    """Put `run` (+ `record.label()`) in docs/bench/test_times.json, replacing its set's last run."""
    from amnet.core.atomic import atomic_write_text
    old = record.load(NAME)["runs"] if record.path(NAME).is_file() else []
    runs = {r["set"]: r for r in old}
    runs[run["set"]] = {**record.label(argv), **run}
    out = record.path(NAME)
    atomic_write_text(out, json.dumps({"runs": [runs[s] for s in SETS if s in runs]}, indent=1)
                      + "\n")
    return out


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in ORDER if counts.get(k) and k != "deselected")


def _slowest(run: dict, n: int = 3) -> str:
    return ", ".join(f"`{Path(f).stem}` {_duration(s)}" for f, s in
                     list(run["file_seconds"].items())[:n])


def render(res: dict) -> str:
    """The README block: one row per set (command, counts, wall time, its slowest files), then
    where each row was measured."""
    runs = {r["set"]: r for r in res["runs"]}
    lines = ["| tests | command | result | wall time | slowest files |", "|---|---|---|---:|---|"]
    for which in SETS:
        what = "fast (the default)" if which == "fast" else which
        r = runs.get(which)
        if r is None:
            n = runs.get("fast", {}).get("counts", {}).get("deselected")
            lines.append(f"| {what} | `{pytest_command(which)}` | "
                         + (f"{n} tests (deselected by the fast run)" if n else "–")
                         + f" | not measured yet (`python bench/test_times.py --{which}`) | |")
            continue
        lines.append(f"| {what} | `{r['pytest_command']}` | {_counts(r['counts'])} | "
                     f"{_duration(r['seconds'])} | {_slowest(r)} |")
    lines.append("")
    lines += [f"{which.capitalize()}: " + record.source_line(NAME, runs[which])
              .replace("From ", "from ", 1) + "."
              + (f" Timed by pytest in {runs[which]['source']}; the load above is when it was "
                 "recorded, not during that run." if runs[which].get("source") else "")
              for which in SETS if which in runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--fast", dest="sets", action="store_const", const=["fast"],
                       help="time the fast set, `python -m pytest -q` (the default)")
    group.add_argument("--slow", dest="sets", action="store_const", const=["slow"],
                       help="time the slow set, `python -m pytest -q -m slow`")
    group.add_argument("--all", dest="sets", action="store_const", const=list(SETS),
                       help="time both sets, the fast one first")
    group.add_argument("--render", action="store_true",
                       help="only render the README block from docs/bench/test_times.json")
    ap.add_argument("--junit", type=Path, metavar="XML",
                    help="record one set (--fast or --slow) from a JUnit report of a run made "
                         "elsewhere, e.g. .ci/run's artifacts/junit-slow.xml, instead of running it")
    args = ap.parse_args(argv)
    if args.junit is not None and (args.render or len(args.sets or ["fast"]) != 1):
        raise SystemExit("--junit records one set: give --fast or --slow with it")
    worst = 0
    for which in [] if args.render else (args.sets or ["fast"]):
        run, rc = ((run_from_junit(which, args.junit), 0) if args.junit is not None
                   else run_set(which))
        save(run)
        worst = worst or rc
        budget = BUDGET_S.get(which)
        print(f"== {which}: {_counts(run['counts'])} in {_duration(run['seconds'])}"
              + (f" -- over its {_duration(budget)} budget: mark the slowest tests `slow`"
                 if budget and run["seconds"] > budget else ""), flush=True)
    record.publish(NAME, render(record.load(NAME)))
    return worst


if __name__ == "__main__":
    sys.exit(main())
