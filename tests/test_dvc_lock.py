"""The committed dvc.lock tells the truth about the committed code (issue 24).

In a fresh `git clone` of this checkout's HEAD (no outputs, no DVC cache), `dvc status` may say
that outputs are missing (models, features: not in git), but it must name no committed file --
a stage script, a library folder, dvc.yaml's commands, params.yaml -- as changed: that would
mean the lock was written by other code than the code committed beside it, and `dvc repro`
would trust results that code never produced. And since every stage depends on the library
folders it runs (dvc.yaml), an edit to amnet/head/model.py marks every train@k changed, while
an edit to README.md marks nothing.

Fails (with the stale entries named) until `dvc repro` has been rerun and dvc.lock committed
after a code change. .ci/run runs `python tests/test_dvc_lock.py` as its own step too.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                                reason="needs git and a git checkout")


def _env() -> dict[str, str]:
    import os
    # the clone's own amnet, never an installed one: dvc status only hashes files anyway
    return {**os.environ, "DVC_NO_ANALYTICS": "1"}


def clone(dest: Path) -> Path:
    """A fresh clone of HEAD (committed files only, as a newcomer gets them)."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True,
                   env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return dest


def dvc_status(repo: Path) -> dict:
    """`dvc status --json` of `repo`: stage -> list of change entries."""
    p = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, env=_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 0, f"dvc status exited {p.returncode}:\n{p.stderr}"
    return json.loads(p.stdout or "{}")


def committed(repo: Path) -> set[str]:
    """Every committed path and every folder holding one (`amnet/head`)."""
    files = subprocess.run(["git", "ls-files"], cwd=repo, check=True, text=True,
                           stdout=subprocess.PIPE).stdout.split()
    return set(files) | {str(p) for f in files for p in Path(f).parents if str(p) != "."}


def outputs(repo: Path) -> set[str]:
    """The stages' outputs as dvc.lock records them (`models/1.pt`, `data/demo`, ...)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"] for s in lock["stages"].values() for o in s.get("outs", [])}


def stale_entries(repo: Path) -> list[str]:
    """What `dvc status` in `repo` says changed among committed things: `stage: dep (status)`
    for a committed dependency, `stage: params ...` and `stage: changed command`. Missing
    outputs, and dependencies on them (`models`: a folder of outputs that git holds only a
    .gitignore of), are not listed."""
    ours, outs = committed(repo), outputs(repo)

    def an_output(path: str) -> bool:
        return any(o == path or o.startswith(path + "/") or path.startswith(o + "/")
                   for o in outs)
    found = []
    for stage, entries in dvc_status(repo).items():
        for entry in entries:
            if not isinstance(entry, dict):  # "changed checksum", "always changed"
                found.append(f"{stage}: {entry}")
                continue
            for path, state in entry.get("changed deps", {}).items():
                if path in ours and not an_output(path):
                    found.append(f"{stage}: {path} ({state})")
            for path, params in entry.get("changed params", {}).items():
                found.append(f"{stage}: params {path} {params}")
            if "changed command" in entry:
                found.append(f"{stage}: changed command")
    return found


def changed_deps(status: dict, stage: str) -> dict[str, str]:
    return {path: state for entry in status.get(stage, []) if isinstance(entry, dict)
            for path, state in entry.get("changed deps", {}).items()}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    return clone(tmp_path_factory.mktemp("clone") / "amnet")


def test_a_fresh_clone_has_no_stale_lock_entry(fresh):
    stale = stale_entries(fresh)
    assert not stale, ("dvc.lock does not match the committed code/params; rerun `dvc repro` "
                       "and commit dvc.lock:\n  " + "\n  ".join(stale))


def test_a_library_edit_marks_its_stages_changed_and_a_readme_edit_none(fresh):
    splits = yaml.safe_load((fresh / "params.yaml").read_text())["data"]["splits"]
    before = dvc_status(fresh)
    with open(fresh / "README.md", "a") as fh:
        fh.write("\nan edit to the prose\n")
    assert dvc_status(fresh) == before          # README is no stage's dependency
    with open(fresh / "amnet/head/model.py", "a") as fh:
        fh.write("\n# an edit to the head\n")
    after = dvc_status(fresh)
    for k in splits:
        assert changed_deps(after, f"train@{k}").get("amnet/head") == "modified", after
    assert changed_deps(after, "evaluate").get("amnet/head") == "modified", after
    # stage one never runs the head: its code dependencies are unchanged
    for stage in ("prepare", "extract"):
        assert "amnet/head" not in changed_deps(after, stage)
    # bytecode beside the code is no part of it (.dvcignore): compiling changes nothing
    subprocess.run([sys.executable, "-m", "compileall", "-q", "amnet/head"], cwd=fresh,
                   check=True)
    assert dvc_status(fresh) == after


if __name__ == "__main__":  # .ci/run: `python tests/test_dvc_lock.py`
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        stale = stale_entries(clone(Path(tmp) / "amnet"))
    if stale:
        print("dvc.lock is stale (rerun `dvc repro`, commit dvc.lock):\n  " + "\n  ".join(stale))
        sys.exit(1)
    print("dvc.lock matches the committed code and params")
