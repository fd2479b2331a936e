"""Shared test helpers and fixtures (sections per topic; add yours in a section of its own)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ---- logging: no test leaves its levels to the next -------------------------------------------

@pytest.fixture(autouse=True)
def _restore_log_levels():
    """Put the root's and every amnet logger's level back after each test: code run in-process
    (bench/lnsim.py's main sets the amnet.train logger to INFO, the train CLI sets the root's level) would
    otherwise change what later tests' commands print."""
    import logging

    def levels() -> dict[str, int]:
        names = [n for n in logging.root.manager.loggerDict if n.startswith("amnet")]
        return {"": logging.root.level, **{n: logging.getLogger(n).level for n in names}}

    before = levels()
    yield
    for name in levels():
        logging.getLogger(name or None).setLevel(before.get(name, logging.NOTSET))


# ---- the fast set: what `-m "not slow"` (setup.cfg's addopts) left out, and how to run it ---------

_SLOW_LEFT_OUT: list = []


def pytest_deselected(items) -> None:
    _SLOW_LEFT_OUT.extend(i for i in items if i.get_closest_marker("slow") is not None)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say that the slow tests were left out and how to run them, so that a green fast run is
    not taken for the whole suite."""
    if _SLOW_LEFT_OUT and config.getoption("markexpr") == "not slow":
        terminalreporter.write_line(
            f"{len(_SLOW_LEFT_OUT)} slow tests deselected (setup.cfg: -m \"not slow\"); run them "
            f"with `python -m pytest -q -m slow`, everything with `python -m pytest -q -m \"\"`")


# ---- small images (stage one): every kind `amnet-cache extract` must handle -------------------

GOOD_KINDS = ("rgb", "gray", "cmyk", "palette", "rgba", "png16", "png16rgb", "exif", "bmp",
              "webp")
BAD_KINDS = ("truncated", "empty", "text", "bomb")


def rgb_array(w: int = 48, h: int = 40, seed: int = 0) -> np.ndarray:
    """A smooth-ish random uint8 `[h, w, 3]` picture (gradients + noise, like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * rng.uniform(80, 200, 3)
    a = base + rng.normal(0, 25, (h, w, 3)) + rng.uniform(0, 50, 3)
    return np.clip(a, 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) +
            _png_chunk(b"IDAT", zlib.compress(raw_rows)) + _png_chunk(b"IEND", b""))


def write_image(path: str | Path, kind: str = "rgb", w: int = 48, h: int = 40, seed: int = 0) -> Path:
    """Write one test image of `kind` (GOOD_KINDS decode to RGB, BAD_KINDS must fail)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = rgb_array(w, h, seed)
    img = Image.fromarray(a)
    if kind == "rgb":
        img.save(path, format="JPEG", quality=90)
    elif kind == "gray":
        img.convert("L").save(path, format="JPEG")
    elif kind == "cmyk":
        img.convert("CMYK").save(path, format="JPEG")
    elif kind == "palette":
        p = img.convert("P", palette=Image.ADAPTIVE, colors=16)
        p.info["transparency"] = 0
        p.save(path, format="PNG", transparency=0)
    elif kind == "rgba":
        alpha = Image.fromarray(np.linspace(0, 255, w * h).reshape(h, w).astype(np.uint8))
        rgba = img.copy()
        rgba.putalpha(alpha)
        rgba.save(path, format="PNG")
    elif kind == "png16":  # 16-bit grayscale: PIL opens it as mode I;16
        g = (a.mean(axis=2) * 257).astype(">u2")
        path.write_bytes(png_bytes(w, h, 16, 0, b"".join(b"\x00" + r.tobytes() for r in g)))
    elif kind == "png16rgb":  # 16-bit RGB
        c = (a.astype(np.uint32) * 257).astype(">u2")
        path.write_bytes(png_bytes(w, h, 16, 2, b"".join(b"\x00" + r.tobytes() for r in c)))
    elif kind == "exif":  # stored sideways, EXIF orientation 6 = rotate 90 degrees clockwise
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    elif kind == "bmp":
        img.save(path, format="BMP")
    elif kind == "webp":
        img.save(path, format="WEBP", lossless=True)
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(rgb_array(max(w, 64), max(h, 64), seed)).save(buf, format="JPEG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "bomb":  # a tiny file claiming 30000 x 30000 pixels (PIL's limit is ~179 M)
        path.write_bytes(png_bytes(30000, 30000, 8, 0, b"\x00" * 31))
    else:
        raise ValueError(kind)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A folder of 11 small RGB JPEGs, one in a sub-folder, one with an upper-case suffix."""
    root = tmp_path / "images"
    for i in range(9):
        write_image(root / f"img{i:02d}.jpg", "rgb", seed=i)
    write_image(root / "sub" / "deep.jpg", "rgb", seed=20)
    write_image(root / "UPPER.JPEG", "rgb", seed=21)
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


# ---- stage one: loaded trunks and runs killed at a batch boundary ---------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def backbones():
    """`backbones(weights, precision="auto")` -> a loaded `(trunk, spec)`, built once per session
    per (weights, resolved precision), for `extract(..., backbone=...)` (pass the same `weights`
    and `precision` to extract, it records them)."""
    from amnet.core.device import resolve_trunk_precision
    from amnet.extract.backbone import load_backbone

    loaded: dict = {}

    def get(weights: str = "random:0", precision: str = "auto"):
        key = (weights, resolve_trunk_precision(precision, "cpu", weights))
        if key not in loaded:
            loaded[key] = load_backbone(weights, precision, "cpu")
        return loaded[key]
    return get


def copy_pipeline(dest: Path) -> None:
    """This checkout's pipeline into the project folder `dest`: dvc.yaml, .dvcignore, the stage
    scripts and the library code the stages depend on (dvc.yaml lists amnet/ folders: DVC
    refuses a stage whose dependency is missing). The stages import the checkout's amnet
    (`subprocess_env`); the copy is what DVC hashes."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copyfile(REPO / name, dest / name)
    for name in ("pipeline", "amnet"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child python that must import this checkout's amnet."""
    import os
    path = os.environ.get("PYTHONPATH")
    from amnet.core.device import available_cores
    # the same thread count as this process's own extract() calls (amnet.core.device.
    # set_compute_threads): fp32 kernels sum in another order with another count, and the
    # byte-identity tests compare a child's rows with rows made here
    threads = os.environ.get("OMP_NUM_THREADS", str(available_cores()))
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
            "OMP_NUM_THREADS": threads, **extra}


_KILL_SCRIPT = """\
import json, os, signal, sys
from amnet.extract.run import extract
from amnet.extract.image_files import list_image_folder

root, out, after, kw = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])


def kill(batches, extracted):
    if batches >= after:  # rows and done flags of this batch written, the flush not yet done
        os.kill(os.getpid(), signal.SIGKILL)


extract(list_image_folder(root), out, on_batch=kill, progress=False, **kw)
sys.exit("not killed")
"""


def extract_killed_after(tmp_path: Path, images: Path, out: Path, batches: int, **kw):
    """Run `extract(list_image_folder(images), out, **kw)` in a child python that SIGKILLs itself
    after `batches` batches (through `on_batch`); returns the CompletedProcess."""
    import json
    import subprocess
    import sys
    script = tmp_path / "extract_and_die.py"
    script.write_text(_KILL_SCRIPT)
    return subprocess.run([sys.executable, str(script), str(images), str(out), str(batches),
                           json.dumps(kw)], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


# ---- downloads: a loopback HTTP server with Range support -----------------------------------------

class RangeServer:
    """Serves `payload` at /<name> on 127.0.0.1 (port chosen by the OS), honouring `Range:
    bytes=N-`; can cut the first response short (`cut_after` bytes) or ignore Range
    (`honour_range=False`). Records each request's Range header in `ranges`. A context manager;
    a timer stops it after `lifetime` seconds whatever happens."""

    def __init__(self, payload: bytes, name: str, lifetime: float = 120.0):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.payload, self.name, self.cut_after, self.honour_range = payload, name, None, True
        self.ranges: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                owner.ranges.append(self.headers.get("Range"))
                if self.path != "/" + owner.name:
                    self.send_error(404)
                    return
                data, start = owner.payload, 0
                header = self.headers.get("Range")
                if header and owner.honour_range:
                    start = int(header.split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = memoryview(data)[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cut_after is not None:
                    body, owner.cut_after = body[:owner.cut_after], None  # only once
                    self.close_connection = True
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.base}/{name}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.timer = threading.Timer(lifetime, self.httpd.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> "RangeServer":
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# ---- the authors' released .pkl files (spec section 9 layout), rebuilt with random values -------

RELEASE_PREFIX = "core_cnn.core_cnn."


def original_head(width: int = 1024, hidden: int = 1024, regressor: int = 512, locations: int = 196):
    """The layer names and shapes of the original AMemNetModel (spec 2 / 9); no forward.
    `width`: D (inconv's outputs), `hidden`: the LSTM's H, `regressor`: regnet1's outputs."""
    import warnings

    from torch import nn

    warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
    head = nn.Module()
    head.inconv = nn.Conv2d(1024, width, 1)
    head.bn1 = nn.BatchNorm2d(width)
    head.hs1, head.hc1 = nn.Linear(width, hidden), nn.Linear(width, hidden)
    head.e1 = nn.Linear(width, width, bias=False)
    head.eh1 = nn.Linear(hidden, locations)
    head.eh3 = nn.Linear(width, 1, bias=False)
    head.rnn = nn.LSTM(width, hidden, 1, dropout=0.5)
    head.regnet1, head.regnet4 = nn.Linear(hidden, regressor), nn.Linear(regressor, 1)
    return head


def drift_bn(module, gen, affine: bool = True) -> None:
    """'Drifted' BatchNorm running statistics (and, with `affine`, gamma/beta too), so eval mode
    is not an identity. The original froze gamma/beta and let only the running stats drift."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def release_state_dict(arch: str = "resnet50", *, trunk_seed: int = 0, drift_seed: int = 0,
                       head_seed: int = 0, affine: bool = True, **head_widths) -> dict:
    """A released model's state dict: `core_cnn.core_cnn.<torchvision keys>` (the whole ResNet,
    layer4 and fc included) + the head's keys, without num_batches_tracked (2018 files).
    Splits of one release share `trunk_seed` (the frozen conv weights) and differ in
    `drift_seed` (the BN statistics that drifted while each split trained)."""
    import torch
    import torchvision

    torch.manual_seed(trunk_seed)
    net = getattr(torchvision.models, arch)()
    drift_bn(net, torch.Generator().manual_seed(drift_seed), affine=affine)
    torch.manual_seed(head_seed)
    head = original_head(**head_widths)
    drift_bn(head, torch.Generator().manual_seed(head_seed))
    sd = {RELEASE_PREFIX + k: v for k, v in net.state_dict().items()}
    sd.update(head.state_dict())
    return {k: v.clone() for k, v in sd.items() if not k.endswith("num_batches_tracked")}


# ---- bad inputs to listing and warnings: a small head on a real trunk, no hang ---------------

def save_small_head(path: Path, spec, image_size: int = 32, seed: int = 0) -> Path:
    """A small untrained AMNet head checkpoint for features of the trunk `spec` (a loaded
    `BackboneSpec`, its precision included) at `image_size`, for `amnet predict` tests."""
    import torch

    from amnet.core.provenance import BackboneRecord
    from amnet.core.settings import AMNetConfig
    from amnet.extract.layers import grid_for
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet

    torch.manual_seed(seed)
    model = AMNet(AMNetConfig(grid=grid_for(image_size)[0], feature_dim=16, hidden_dim=16,
                              regressor_dim=8))
    return save_checkpoint(make_checkpoint(model.eval(), backbone=BackboneRecord.from_spec(
        spec, image_size)), path)


@pytest.fixture
def no_hang():
    """`with no_hang(seconds):` fails the test (instead of hanging the suite) when the block
    blocks longer, e.g. on reading a FIFO. SIGALRM: main thread, POSIX."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def limit(seconds: int = 60):
        def expire(signum, frame):
            raise TimeoutError(f"blocked for more than {seconds} s")
        old = signal.signal(signal.SIGALRM, expire)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return limit


# ---- tiny head checkpoints (predict, the differentiable score, serve) -----------------------

def save_tiny_head(path: str | Path, weights: str = "random:0", seed: int = 0, size: int = 64,
                   steps: int = 3, **record) -> Path:
    """A random narrow AMNet head checkpoint for the `weights` trunk at `size` x `size` input
    (fp32 provenance), its outputs spread x20 so that scores differ between images. `record`:
    what else the checkpoint records (`train_config`, `metrics`: make_checkpoint's keywords)."""
    import torch
    from amnet.core.provenance import BackboneRecord
    from amnet.core.settings import AMNetConfig
    from amnet.extract.backbone import load_backbone
    from amnet.extract.layers import grid_for
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet

    _, spec = load_backbone(weights, "fp32")
    prov = BackboneRecord.from_spec(spec, image_size=size)
    torch.manual_seed(seed)
    model = AMNet(AMNetConfig(grid=grid_for(size)[0], feature_dim=32, hidden_dim=32,
                              regressor_dim=16, lstm_steps=steps))
    with torch.no_grad():
        model.regnet4.weight.mul_(20.0)
        model.eh3.weight.mul_(20.0)
    return save_checkpoint(make_checkpoint(model.eval(), backbone=prov, **record), path)


# ---- faults: a CLI's one error line, a file's bytes --------------------------------------------

def error_line(res) -> str:
    """A click result's error: exactly one `Error: ...` line, the last one (warnings may come
    before it), no traceback; returned without `Error: `."""
    lines = res.output.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.output
    assert "Traceback" not in res.output
    return errors[0][len("Error: "):]


# `amnet predict`, `serve` and `export` without a model, or with two sources (exact text)
NO_MODEL = ("Error: no model: give --checkpoint FILE (repeatable: the heads are averaged) or "
            "--model NAME (a published model: `amnet models list`)\n")
BOTH_MODELS = "Error: give --checkpoint or --model NAME, not both\n"


def sha256_of(path) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# what `amnet train` records about the demo's data (amnet.head.run: the splits' paths, the cache)
DEMO_TRAIN_CONFIG = {"cache": "data/features/demo.h5",
                     "splits": {"train": {"path": "data/demo/splits/train_1.txt"}}}
