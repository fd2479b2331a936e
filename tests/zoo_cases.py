"""The bad-input zoo's registry and what its cases share (issue 11, "The suite"): the inputs that
need more than bytes (odd images, FIFOs, unreadable files, pickle payloads) and small checks.
The cases are in five groups, one module each registering on import: tests/zoo_images.py
(images), tests/zoo_lists.py (split and list files), tests/zoo_files.py (caches, shards,
pickles); `all_cases()` gathers them for tests/test_zoo.py and bench/faults.py.

Each case builds its input in a fresh folder and returns a `zoo.Call` (the command, the right
exit code and what must hold after); tests/zoo.py runs and judges it. Most inputs are bad: the
command must stop with one line naming the file (and line) and leave everything it had made or
been given as it was. Some are only odd, or bad in a way whose right answer is to skip and
record (a corrupt image with --on-error skip, a missing image in `amnet predict`): those exit 0,
and the case checks what was recorded and that the good rows are byte-identical to an
uninterrupted run's.

`pending` marks a case whose fix had not landed on main when it was written (xfail, strict).
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from conftest import write_image
from zoo import EXTRACT, Call, Case, Workspace, cache_names

CASES: list[Case] = []
USAGE = (r"^Usage: ", r"^Try '")                 # click's usage lines before its `Error:` line


def case(cid: str, pending: str | None = None):
    """Register the decorated `build(ws) -> Call` as case `cid` (group/name)."""
    def register(build: Callable[[Workspace], Call]) -> Callable[[Workspace], Call]:
        CASES.append(Case(cid, build, pending))
        return build
    return register


def add(cid: str, build: Callable[[Workspace], Call], pending: str | None = None) -> None:
    CASES.append(Case(cid, build, pending))


def all_cases() -> list[Case]:
    """Every case, in group order."""
    import zoo_files  # noqa: F401 - each group registers its cases on import
    import zoo_images  # noqa: F401
    import zoo_lists  # noqa: F401
    order = ("images", "lists", "caches", "shards", "pickles")
    return sorted(CASES, key=lambda c: order.index(c.group))


def extract_args(images: Path, out: Path, *more) -> list:
    return ["extract", images, "--out", out, *EXTRACT, *more]


def all_ok(*problem_lists: list[str]) -> list[str]:
    return [p for ps in problem_lists for p in ps]


def names_are(out: Path, want: list[str]) -> list[str]:
    got = cache_names(out)
    return [] if got == want else [f"{out.name} lists {len(got)} names {got[:8]}, expected {want}"]


# ---- inputs that need more than bytes ------------------------------------------------------------

@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[None]:
    """`chmod 000 path`. As root, where that stops nothing, the EACCES the kernel would give is
    injected: opening the file (or listing the folder) raises PermissionError."""
    path = Path(path)
    mode = path.stat().st_mode
    os.chmod(path, 0)
    patches = []
    if os.access(path, os.R_OK):  # root
        target = os.path.realpath(path)

        def denied(p) -> bool:
            try:
                return os.path.realpath(os.fspath(p)) == target
            except TypeError:
                return False

        def guard(module, name):
            real = getattr(module, name)

            def fn(p, *a, **kw):
                if not isinstance(p, int) and denied(p):
                    raise PermissionError(13, "Permission denied", os.fspath(p))
                return real(p, *a, **kw)
            setattr(module, name, fn)
            patches.append((module, name, real))
        guard(builtins, "open")
        guard(os, "open")
        guard(os, "scandir")
        guard(os, "listdir")
    try:
        yield
    finally:
        for module, name, real in reversed(patches):
            setattr(module, name, real)
        os.chmod(path, mode)


@contextlib.contextmanager
def on_sys_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def make_image(path: Path, kind: str, seed: int = 7) -> Path:
    """conftest.write_image's kinds, plus: png_header (a PNG cut after its header), gif_anim (a
    two-frame GIF), one_px (1 x 1), sliver (1 x 300), la (grey + alpha PNG), fifo, dangling_link
    (a link to nothing)."""
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png_header":
        write_image(path, "rgba")
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "gif_anim":
        frames = [Image.new("RGB", (24, 20), c) for c in ((200, 30, 30), (30, 200, 30))]
        frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100,
                       loop=0)
    elif kind == "one_px":
        Image.new("RGB", (1, 1), (120, 60, 200)).save(path, format="PNG")
    elif kind == "sliver":
        Image.new("RGB", (1, 300), (10, 200, 90)).save(path, format="PNG")
    elif kind == "la":
        Image.new("LA", (30, 20), (128, 77)).save(path, format="PNG")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling_link":
        os.symlink(path.parent / "no-such-file.jpg", path)
    else:
        write_image(path, kind, seed=seed)
    return path


# ---- pickles: five kinds of payload, each one that runs code when unpickled --------------------

PAYLOADS = ("system", "exec", "nested", "import", "legacy")


class _System:
    """Unpickled, runs `touch <marker>` through os.system (REDUCE on a GLOBAL callable)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Exec:
    """Unpickled, runs Python source through builtins.exec."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def write_payload(path: Path, kind: str, marker: Path) -> Path:
    """A file at `path` that creates `marker` when fully unpickled (`torch.load(...,
    weights_only=False)`); the safe loader must refuse every one:
      system  os.system via __reduce__, in torch's zip format;
      exec    builtins.exec of Python source, zip format;
      nested  a valid-looking `{'model': state dict}` with the os.system payload as one value;
      import  a bare pickle whose GLOBAL names a module that runs code on import (written
              beside it, so a loader that imported it would find it);
      legacy  the os.system payload in torch's legacy (non-zip) format, as 2018's PyTorch 0.2
              wrote the published weights."""
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "system":
        torch.save(_System(marker), path)
    elif kind == "exec":
        torch.save(_Exec(marker), path)
    elif kind == "nested":
        torch.save({"model": {"core_cnn.core_cnn.conv1.weight": torch.zeros(2, 3, 1, 1),
                              "inconv.weight": _System(marker)}}, path)
    elif kind == "import":
        module = f"zoo_evil_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        (path.parent / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'w').close()\n\n\nclass Thing:\n    pass\n")
        path.write_bytes(b"\x80\x02c" + module.encode() + b"\nThing\n)\x81.")
    elif kind == "legacy":
        torch.save(_System(marker), path, _use_new_zipfile_serialization=False)
    else:
        raise ValueError(kind)
    return path
