"""Click options generated from the settings dataclasses (amnet.core.settings), so that a default, a
help text, the choices or the range of a setting are written once, in its dataclass field.

    @options_from(TrainConfig, exclude=("progress",))
    @options_from(AMNetConfig, rename={"use_attention": "--attention"})
    def train_cmd(cache, ..., **settings):
        tc = TrainConfig(**settings_of(TrainConfig, settings))

One option per user setting (internal fields are never options), named `--field-name`, its value
passed to the command under the field's own name:
  int / float   `click.IntRange` / `click.FloatRange` when the field has a `min` or `max`
  str           `click.Choice` when the field has `choices`
  bool          `--x/--no-x`, or a plain `--x` (default off) for the fields named in `flags`
  `auto`        {field: value}: the option also takes the word "auto" for that value (extract's
                `--workers auto` = -1), shown as the default when it is the field's default
Anything else (`bool | None`, lists, nested settings) raises TypeError: exclude the field and
offer it by hand. Every option shows its default (`show_default=True`).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Collection, Mapping

import click

from amnet.core.settings import FieldSpec, field_spec

__all__ = ["options_from", "settings_of", "SettingOption", "AutoInt", "WAIT",
           "one_model_source"]

# a writer lock's patience (amnet.core.lockfile), for the commands that write OUT under one
WAIT = click.option("--wait", type=click.FloatRange(min=0), default=0, show_default=True,
                    metavar="SECONDS",
                    help="If another live process writes OUT, wait up to this long for it "
                         "(0: refuse at once, naming it).")


def one_model_source(checkpoints: Collection, model_name: str | None) -> None:
    """The heads of `amnet predict`, `serve` and `export` come from --checkpoint (repeatable) or
    --model NAME, exactly one of them: a usage error saying which mistake was made otherwise."""
    if checkpoints and model_name:
        raise click.UsageError("give --checkpoint or --model NAME, not both")
    if not checkpoints and not model_name:
        raise click.UsageError("no model: give --checkpoint FILE (repeatable: the heads are "
                               "averaged) or --model NAME (a published model: `amnet models "
                               "list`)")


class SettingOption(click.Option):
    """A click option made from one field of a settings dataclass (it knows which: the tests
    check its default against the field's)."""

    def __init__(self, *args: Any, setting_cls: type, field: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting_cls = setting_cls
        self.field = field


class AutoInt(click.IntRange):
    """An integer in range, or the word "auto", which stands for the integer `auto`."""

    name = "integer|auto"

    def __init__(self, auto: int, **range_: Any) -> None:
        super().__init__(**range_)
        self.auto = auto

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return self.auto
        return super().convert(value, param, ctx)


class NumberOrWord(click.ParamType):
    """A number, or one of a few words (`--target-mean train`)."""

    name = "number|word"

    def __init__(self, words: Collection[str]) -> None:
        self.words = tuple(words)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) or value in self.words:
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor one of {', '.join(self.words)}",
                      param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "FLOAT|" + "|".join(w.upper() for w in self.words)


def _bound(value: float | None, integer: bool) -> float | None:
    # a whole number as an int, so that the help reads x>=0, not x>=0.0
    if value is None:
        return None
    return int(value) if integer or float(value).is_integer() else value


def _range(spec: FieldSpec, integer: bool) -> dict[str, Any]:
    return {"min": _bound(spec.min, integer), "max": _bound(spec.max, integer),
            "max_open": spec.max_open}


def _option(cls: type, spec: FieldSpec, name: str | None, plain_flag: bool,
            auto: Any) -> Callable:
    where = f"{cls.__name__}.{spec.name}"
    opt = name or "--" + spec.name.replace("_", "-")
    if not opt.startswith("--"):
        raise ValueError(f"{where}: option name {opt!r} must start with --")
    kw: dict[str, Any] = dict(cls=SettingOption, setting_cls=cls, field=spec.name,
                              help=spec.help, show_default=True)
    default = spec.default
    if spec.type is bool:
        if plain_flag:
            if default is not False:
                raise ValueError(f"{where}: a plain flag must default to false")
            return click.option(opt, spec.name, is_flag=True, default=False, **kw)
        return click.option(f"{opt}/--no-{opt[2:]}", spec.name, default=default, **kw)
    if plain_flag:
        raise ValueError(f"{where}: only a bool setting can be a flag")
    has_range = spec.min is not None or spec.max is not None
    if auto is not None:
        if spec.type is not int:
            raise TypeError(f"{where}: 'auto' is offered for int settings only")
        type_: Any = AutoInt(auto, **_range(spec, True))
        if default == auto:
            default = "auto"
    elif spec.choices and spec.type == float | str:
        type_ = NumberOrWord(spec.choices)
    elif spec.choices:
        if spec.type is not str:
            raise TypeError(f"{where}: choices are offered for str settings only")
        type_ = click.Choice(list(spec.choices))
    elif spec.type is int:
        type_ = click.IntRange(**_range(spec, True)) if has_range else click.INT
    elif spec.type is float:
        type_ = click.FloatRange(**_range(spec, False)) if has_range else click.FLOAT
    elif spec.type is str:
        type_ = click.STRING
    else:
        raise TypeError(f"{where}: no click option for type {spec.type!r}; exclude it and "
                        f"offer it by hand")
    return click.option(opt, spec.name, type=type_, default=default, **kw)


def options_from(cls: type, include: Collection[str] | None = None, exclude: Collection[str] = (),
                 rename: Mapping[str, str] | None = None, flags: Collection[str] = (),
                 auto: Mapping[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per user setting of the dataclass `cls` (see the
    module docstring): those in `include` (in that order) or else all of them, less `exclude`.
    `rename`: {field: "--option"} where the option's name is not the field's (a bool's
    `--no-` twin follows it); `flags`: bool fields offered as a plain flag; `auto`: {field:
    value} int fields that also take "auto" for that value."""
    rename, auto = dict(rename or {}), dict(auto or {})
    specs = field_spec(cls)
    names = list(include) if include is not None else [n for n in specs if n not in exclude]
    unknown = (set(names) | set(exclude) | set(rename) | set(flags) | set(auto)) - set(specs)
    if unknown:
        raise ValueError(f"{cls.__name__} has no user setting {', '.join(sorted(unknown))}")
    options = [_option(cls, specs[n], rename.get(n), n in flags, auto.get(n)) for n in names]

    def decorate(f: Callable) -> Callable:
        # click lists options in the order their decorators are written: apply the last first
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def settings_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Take the values of `cls`'s fields out of a command's keyword arguments (`values` is
    changed): `cls(**settings_of(cls, kwargs))` builds the settings the user chose."""
    names = {f.name for f in fields(cls)}
    return {k: values.pop(k) for k in list(values) if k in names}
