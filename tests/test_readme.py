"""The README and docs/ pages against the project: the two set-up commands CI runs, links that
resolve, the attention figure, and every `amnet` / `amnet-cache` command line they show parsed
against the real click commands (a renamed or removed option fails here, not in a user's shell)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from amnet.cli import cache_cli, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_first_lines_are_the_two_setup_commands_ci_runs() -> None:
    lines = README.read_text().splitlines()
    assert lines[0] == "```bash" and lines[3] == "```", "the README must open with one bash block"
    setup, tests = (line.split("#")[0].strip() for line in lines[1:3])
    assert setup.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert 'pip install -e ".[dev]"' in setup and setup.endswith("dvc repro")
    assert tests == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'^pip install (-q )?-e "\.\[dev\]"$', ci, re.M), ".ci/run installs otherwise"
    assert re.search(r"^python -m pytest -q$", ci, re.M), ".ci/run tests otherwise"
    # the slow tests, deselected by default (setup.cfg), are one more command that CI runs and
    # the README names
    slow = "python -m pytest -q -m slow"
    assert re.search(f"^{slow}( --junitxml=\\S+)?$", ci, re.M), ".ci/run does not run the slow tests"
    assert f"`{slow}`" in README.read_text(), f"the README does not name `{slow}`"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT):
            continue                       # ../shared/...: the development machines' spec and data
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor")
    assert not bad, f"{page.name}: " + "; ".join(bad)


def test_attention_figure_is_committed_and_small() -> None:
    figure = ROOT / "docs" / "attention-demo.png"
    assert "](docs/attention-demo.png)" in README.read_text()
    assert figure.stat().st_size < 200_000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _command_lines(text: str) -> list[str]:
    """`amnet ...` / `amnet-cache ...` command lines from bash blocks (continuations joined,
    comments cut) and from inline code spans."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            for hit in re.findall(r"(?:^|&& |--no-python )(amnet(?:-cache)? .*)", line):
                found.append(re.split(r" \| |&&|;", hit)[0])   # up to a pipe or the next command
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [m for m in re.findall(r"`(amnet(?:-cache)? [^`]*)`", prose)]
    return found


def _resolve(line: str) -> tuple[click.Command, list[str]]:
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("...", " "))
    command: click.Command = main if words[0] == "amnet" else cache_cli
    rest = words[1:]
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def test_every_command_line_matches_the_cli() -> None:
    lines = [(p.name, line) for p in PAGES for line in _command_lines(p.read_text())]
    assert len(lines) > 20, "the README's command lines were not found"
    bad = []
    for page, line in lines:
        command, rest = _resolve(line)
        if isinstance(command, click.Group):
            if rest and not rest[0].startswith("-"):
                bad.append(f"{page}: {line!r}: no command {rest[0]!r}")
            continue
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        for word in rest:
            option = word.split("=")[0].rstrip(",.")
            if option.startswith("-") and len(option) > 1 and option not in known:
                bad.append(f"{page}: {line!r}: {command.name} has no option {option}")
    assert not bad, "\n".join(bad)
