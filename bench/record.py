"""Committed benchmark results: `docs/bench/<name>.json`, labelled, and the README blocks rendered
from them.

Every figure of the README's performance tables comes from one of these files (issue 19, item 5).
A bench script measures, calls `save(name, result)` (which adds `label()`: the CPU with its bf16
capability, the date, the versions and the command that made it), then `publish(name, markdown)`
to put its table between the `<!-- bench:<name>:start -->` and `<!-- bench:<name>:end -->`
markers of the README (and of any docs/*.md page that has them). `python bench/<name>.py --render` redoes the second step from the committed JSON without
measuring; `tests/test_readme_numbers.py` checks that each block is exactly that rendering.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench"
README = ROOT / "README.md"
# environment variables that change what a CPU run measures (capping an AMX host at AVX2)
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "AMNET_NATIVE_BF16")


def path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def machine() -> dict:
    """This host: `cpu_label()` (model name, cores, bf16 units, any oneDNN cap) and the flags."""
    from amnet.core.device import available_cores, cpu_features, cpu_label, cpu_model, native_bf16
    feats = cpu_features()
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_label(), "model": cpu_model(), "cores": available_cores(),
            "native_bf16": native_bf16("cpu"), **{k: bool(v) for k, v in feats.items()},
            "load_avg_1_5_15_min": load}


def versions() -> dict:
    import numpy
    import torch

    import amnet
    out = {"python": platform.python_version(), "amnet": getattr(amnet, "__version__", "?"),
           "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("torchvision", "h5py", "onnxruntime"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "?")
    return out


def command(argv: list[str] | None = None) -> str:
    """The command line that made the result, with the ISA-capping variables that were set."""
    argv = sys.argv if argv is None else argv
    env = [f"{k}={os.environ[k]}" for k in ISA_ENV if os.environ.get(k)]
    script = Path(argv[0])
    if script.is_absolute() and script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return " ".join([*env, "python", str(script), *map(shlex.quote, argv[1:])])


def label(argv: list[str] | None = None) -> dict:
    """What every result file carries: machine, date (UTC), versions, command."""
    return {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "versions": versions(), "command": command(argv)}


def save(name: str, result: dict, argv: list[str] | None = None) -> Path:
    """Write `result` + `label()` to docs/bench/<name>.json (atomically); returns the path."""
    from amnet.core.atomic import atomic_write_text
    out = path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({**label(argv), **result}, indent=1, default=str) + "\n")
    return out


def save_run(name: str, run: dict, key: str = "cpu", argv: list[str] | None = None,
             also: tuple[str, ...] = ()) -> Path:
    """Add one labelled run to docs/bench/<name>.json ({"runs": [...]}), replacing the run of the
    same machine[key] (e.g. the same CPU label, capped or not) and the same top-level `also`
    fields (e.g. the weights)."""
    from amnet.core.atomic import atomic_write_text
    run = {**label(argv), **run}

    def same(r: dict) -> bool:
        return r["machine"][key] == run["machine"][key] and all(
            r.get(k, r.get("args", {}).get(k)) == run[k] for k in also)
    runs = [r for r in load(name).get("runs", []) if not same(r)] if path(name).is_file() else []
    out = path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"runs": [*runs, run]}, indent=1, default=str) + "\n")
    return out


def load(name: str) -> dict:
    p = path(name)
    if not p.is_file():
        raise SystemExit(f"{p}: not found; run `python bench/{name}.py` first")
    return json.loads(p.read_text())


def source_line(name: str, res: dict, extra: str = "") -> str:
    """'From docs/bench/NAME.json (`COMMAND`; CPU, DATE[; EXTRA])' -- how every block begins."""
    load = res["machine"].get("load_avg_1_5_15_min")
    return (f"From [docs/bench/{name}.json](docs/bench/{name}.json) (`{res['command']}`; "
            f"{res['machine']['cpu']}, {res['date']}" + (f"; {extra}" if extra else "")
            + (f"; load average {load[1]:.1f} over the last 5 min at the end" if load else "")
            + ")")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def block(text: str, name: str) -> str | None:
    """What lies between the `name` markers of `text` (None when there are none)."""
    start, end = markers(name)
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        return None
    return text[i + len(start):j].strip("\n")


def replace_block(text: str, name: str, body: str,
                  marks: tuple[str, str] | None = None) -> str:
    """`text` with what lies between the `name` markers (or the `marks` given: the faults and
    LNSIM tables keep their own) replaced by `body`; bench/'s one block renderer."""
    start, end = marks or markers(name)
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"no {start} ... {end} block")
    return text[:i + len(start)] + "\n" + body.strip("\n") + "\n" + text[j:]


def pages() -> list[Path]:
    """The pages that may hold rendered blocks: the README and docs/*.md."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def for_page(body: str, page: Path) -> str:
    """`body` (links relative to the repository's root) with its links relative to `page`."""
    if page.parent.resolve() == (ROOT / "docs").resolve():
        return body.replace("](docs/", "](")
    return body


def publish(name: str, body: str) -> None:
    """Print `body` and put it in every page's `name` block (pages without one are left alone)."""
    from amnet.core.atomic import atomic_write_text
    print(body)
    for page in pages():
        text = page.read_text()
        if block(text, name) is not None:
            atomic_write_text(page, replace_block(text, name, for_page(body, page)))
