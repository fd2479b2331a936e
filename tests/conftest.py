"""Shared test helpers and fixtures (sections per topic; add yours in a section of its own)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    from amnet.backbone import load_backbone
    from amnet.device import resolve_trunk_precision

    loaded: dict = {}

    def get(weights: str = "random:0", precision: str = "auto"):
        key = (weights, resolve_trunk_precision(precision, "cpu"))
        if key not in loaded:
            loaded[key] = load_backbone(weights, precision, "cpu")
        return loaded[key]
    return get


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child python that must import this checkout's amnet."""
    import os
    path = os.environ.get("PYTHONPATH")
    from amnet.device import available_cores
    # the same thread count as this process's own extract() calls (amnet.device.
    # set_compute_threads): fp32 kernels sum in another order with another count, and the
    # byte-identity tests compare a child's rows with rows made here
    threads = os.environ.get("OMP_NUM_THREADS", str(available_cores()))
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
            "OMP_NUM_THREADS": threads, **extra}


_KILL_SCRIPT = """\
import json, os, signal, sys
from amnet.extract import extract
from amnet.images import list_image_folder

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


# ---- small head checkpoints (amnet serve) ------------------------------------------------------

# what `amnet train` records about the demo's data (amnet.train: the splits' paths, the cache)
DEMO_TRAIN_CONFIG = {"cache": "data/features/demo.h5",
                     "splits": {"train": {"path": "data/demo/splits/train_1.txt"}}}


def small_head(path: str | Path, *, seed: int = 1, weights: str = "random:0",
               image_size: int = 224, train_config: dict | None = None,
               metrics: dict | None = None) -> Path:
    """A narrow AMNet head checkpoint on `weights`' trunk (its provenance as `amnet train` would
    record it), its output weights scaled x20 so that images get visibly different scores."""
    import torch
    from amnet.backbone import grid_for, load_backbone
    from amnet.checkpoint import make_checkpoint, save_checkpoint
    from amnet.model import AMNet, AMNetConfig
    from amnet.provenance import BackboneRecord

    _, spec = load_backbone(weights, "fp32")
    torch.manual_seed(seed)
    model = AMNet(AMNetConfig(grid=grid_for(image_size)[0], feature_dim=32, hidden_dim=32,
                              regressor_dim=16, lstm_steps=3))
    with torch.no_grad():
        model.regnet4.weight.mul_(20.0)
        model.eh3.weight.mul_(20.0)
    record = BackboneRecord.from_spec(spec, image_size=image_size)
    return save_checkpoint(make_checkpoint(model.eval(), backbone=record, metrics=metrics,
                                           train_config=train_config), path)
