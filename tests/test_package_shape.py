"""The package's shape, checked at run time (third-party code included): what importing a module
drags in, and each public name in one home. The static contracts (one-way layers over the
subpackages; stage two free of PIL/torchvision) are `lint-imports`, run by .ci/run."""
from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import amnet
import amnet.head

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "amnet"


def _run(code: str) -> dict:
    """Run `code` in a fresh interpreter (this checkout first on sys.path); its last line of
    stdout is JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_stage_two_imports_neither_pil_nor_torchvision():
    """Every module of amnet.head (stage two), imported in a fresh interpreter, leaves PIL and
    torchvision out of sys.modules: what it reads from amnet.cache and below too. Nor does it
    load stage one (amnet.extract): the cache is the only contract between the stages."""
    modules = [m.name for m in pkgutil.iter_modules(amnet.head.__path__, "amnet.head.")]
    assert "amnet.head.run" in modules and "amnet.head.feeding" in modules
    got = _run("import importlib, json, sys\n"
               f"for m in {modules!r}: importlib.import_module(m)\n"
               "print(json.dumps({k: k in sys.modules for k in ('PIL', 'torchvision', "
               "'amnet.extract', 'amnet.cache.schema')}))")
    assert got == {"PIL": False, "torchvision": False, "amnet.extract": False,
                   "amnet.cache.schema": True}


def test_version_without_torch_and_lazy_names():
    got = _run("import json, sys, amnet\n"
               "v = amnet.__version__\n"
               "before = {k: k in sys.modules for k in ('torch', 'numpy', 'h5py')}\n"
               "names = {n: getattr(amnet, n).__module__ for n in\n"
               "         ('Predictor', 'FeatureCache', 'AMNet', 'MemorabilityLoss')}\n"
               "print(json.dumps({'v': v, 'before': before, 'names': names}))")
    from amnet._version import __version__
    assert got["v"] == __version__
    assert got["before"] == {"torch": False, "numpy": False, "h5py": False}
    assert got["names"] == {"Predictor": "amnet.predict.predictor",
                            "FeatureCache": "amnet.cache.reader",
                            "AMNet": "amnet.head.model",
                            "MemorabilityLoss": "amnet.predict.memorability_loss"}


def test_cli_help_imports_no_torch():
    """`amnet --help` and `amnet-cache --help` stay instant: building the commands' options
    imports the settings, never torch, h5py or PIL."""
    got = _run("import json, sys\n"
               "from click.testing import CliRunner\n"
               "from amnet.cli import cache_cli, main\n"
               "codes = [CliRunner().invoke(c, args).exit_code for c, args in\n"
               "         [(main, ['--help']), (main, ['train', '--help']),\n"
               "          (cache_cli, ['extract', '--help'])]]\n"
               "print(json.dumps({'codes': codes,\n"
               "                  'heavy': sorted(k for k in ('torch', 'h5py', 'PIL') if k in sys.modules)}))")
    assert got == {"codes": [0, 0, 0], "heavy": []}


def test_installed_version_is_the_version_module():
    """setup.cfg reads the version from amnet._version: what pip installed says the same."""
    try:
        installed = version("amnet")
    except PackageNotFoundError:
        pytest.skip("amnet is not installed (pip install -e .)")
    assert installed == amnet.__version__


def _top_level_defs(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def test_every_public_name_has_one_home():
    """No module outside amnet/__init__.py hands on another module's names: its `__all__` lists
    only what it defines, and nothing it imports from amnet goes unused (a re-export shim)."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        rel = path.relative_to(ROOT)
        tree = ast.parse(path.read_text())
        defined = _top_level_defs(tree)
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple))
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)):
                problems += [f"{rel}: __all__ names {e.value}, defined elsewhere"
                             for e in node.value.elts if e.value not in defined]
        used = ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
                | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)})
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("amnet"):
                problems += [f"{rel}:{node.lineno}: imports {a.name} from {node.module}, unused"
                             for a in node.names if (a.asname or a.name) not in used]
    assert problems == []


def test_the_package_is_its_stages():
    """A few modules at the top, the stages as subpackages (docs/architecture.md)."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert modules == ["__init__.py", "_version.py"]
    assert packages == ["cache", "cli", "core", "data", "extract", "head", "predict"]
