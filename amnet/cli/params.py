"""params.yaml: the pipeline's settings, checked against the settings dataclasses at stage start.

`load_params(path)` reads the file and returns a `Params`: every section validated by
`amnet.core.settings.validate` -- known keys only, values coerced to the field types, choices and
minimums checked -- with what the file leaves out taken from the dataclass defaults, the only
place defaults are written. A misspelt key stops the stage with one line naming the file, the key
and the valid keys (`params.yaml: unknown key train.epoch (valid: batch_size, ..., epochs, ...)`).

Sections -> settings:

    data         DataConfig (amnet.core.settings)      prepare; paths are data/<dataset>
    backbone     ExtractConfig, the settings that decide the features     (DVC tracks it)
    extract_run  ExtractConfig, its knobs: batch_size, workers, device    (DVC does not)
    model        AMNetConfig (amnet.core.settings), less in_channels/grid: those come from the cache
    train        TrainConfig (amnet.core.settings), the settings that decide the results (tracked)
    train_run    TrainConfig, its knobs: preload, workers, progress       (not tracked)
    evaluate     EvaluateConfig (amnet.core.settings)

A knob (amnet.core.settings) changes speed, not results, so dvc.yaml lists the sections it keeps
apart from the tracked ones: changing `extract_run.workers` never re-runs the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from amnet.core.errors import AmnetError, ParamsError
from amnet.core.settings import (AMNetConfig, DataConfig, EvaluateConfig, ExtractConfig,
                                 TrainConfig, setting_names, validate)

__all__ = ["Params", "load_params", "SECTIONS", "extract_options", "prepare_options"]


@dataclass(frozen=True)
class _Section:
    attr: str                 # the Params field it fills
    cls: type                 # its settings dataclass
    knobs: bool | None        # which of the dataclass's settings: all (None), knobs, the others


SECTIONS: dict[str, _Section] = {
    "data": _Section("data", DataConfig, None),
    "backbone": _Section("extract", ExtractConfig, False),
    "extract_run": _Section("extract", ExtractConfig, True),
    "model": _Section("model", AMNetConfig, None),
    "train": _Section("train", TrainConfig, False),
    "train_run": _Section("train", TrainConfig, True),
    "evaluate": _Section("evaluate", EvaluateConfig, None),
}


def section_keys(name: str) -> tuple[str, ...]:
    """The keys allowed in params section `name`."""
    s = SECTIONS[name]
    return setting_names(s.cls, knobs=s.knobs)


@dataclass(frozen=True)
class Params:
    """A validated params file: one settings object per part of the pipeline."""
    data: DataConfig
    extract: ExtractConfig      # backbone + extract_run
    model: AMNetConfig
    train: TrainConfig          # train + train_run
    evaluate: EvaluateConfig
    source: str = "params.yaml"


def _hint(section: str):
    """Extra words for an unknown key: where it belongs when it is a setting of another section."""
    def hint(key: str) -> str:
        cls = SECTIONS[section].cls
        for other, s in SECTIONS.items():
            if other != section and s.cls is cls and key in section_keys(other):
                return f"; did you mean {other}.{key}?"
        if key in {f for f in cls.__dataclass_fields__} - set(setting_names(cls)):
            return f"; {key} is not a setting (the library sets it, e.g. from the feature cache)"
        return ""
    return hint


def _read(path: Path, source: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{source}: not found") from None
    except OSError as e:
        raise ParamsError(f"{source}: cannot read ({e.strerror or e})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{source}: not valid YAML{where} ({problem})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(doc).__name__}")
    return doc


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file (see the module docstring). Raises ParamsError, one line."""
    path = Path(path)
    source = str(path)
    doc = _read(path, source)
    for name in doc:
        if name not in SECTIONS:
            raise ParamsError(f"{source}: unknown key {name} (valid: {', '.join(sorted(SECTIONS))})")
    values: dict[str, dict[str, Any]] = {s.attr: {} for s in SECTIONS.values()}
    for name, s in SECTIONS.items():
        values[s.attr].update(validate(s.cls, doc.get(name), where=name, source=source,
                                       names=section_keys(name), hint=_hint(name)))
    classes = {s.attr: s.cls for s in SECTIONS.values()}
    return Params(**{attr: classes[attr](**kw) for attr, kw in values.items()}, source=source)


# ---- settings -> library calls ---------------------------------------------------------------

def extract_options(cfg: ExtractConfig) -> dict[str, Any]:
    """The keyword arguments of `amnet.extract.run.extract` for `cfg` (workers -1 resolved: auto)."""
    from amnet.core.device import resolve_device
    from amnet.extract.run import auto_workers

    workers = cfg.workers if cfg.workers >= 0 else auto_workers(resolve_device(cfg.device))
    return dict(weights=cfg.weights, image_size=cfg.image_size, layers=cfg.layers, flip=cfg.flip,
                precision=cfg.precision, views=cfg.views, view_seed=cfg.view_seed,
                batch_size=cfg.batch_size, workers=workers, device=cfg.device)


def prepare_options(data: DataConfig, source: str = "params.yaml") -> dict[str, Any]:
    """Map the `data` section onto the options of `amnet.data.prepare_dataset(data.dataset,
    ...)` for the chosen data set kind."""
    kind, protocol = data.dataset, data.protocol
    val, test = protocol.val_fraction, protocol.test_fraction
    if kind == "demo":
        return dict(n_images=data.demo.n_images, image_size=data.demo.image_size,
                    splits=list(data.splits), fractions=(1 - val - test, val, test),
                    seed=protocol.seed)
    if not data.root:
        raise AmnetError(f"{source} data.root is empty: data set {kind!r} needs its source "
                         f"folder (or CSV file); see README, 'Other data sets'")
    if kind == "csv":
        return dict(path=data.root, splits=list(data.splits), fractions=(1 - val - test, val, test),
                    seed=protocol.seed)
    options: dict[str, Any] = dict(root=data.root, splits=list(data.splits), val_fraction=val,
                                   seed=protocol.seed)
    if kind == "lamem":
        options["download"] = data.download
    return options
