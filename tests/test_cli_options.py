"""The CLIs' settings options are generated from the settings dataclasses (amnet/cli/_options.py):
every option's default, help, choices and range are its field's, so they cannot drift; the
commands build their settings from the parsed values with no default of their own; the options
keep their historical spellings."""
from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from amnet.cli import cache_cli, main
from amnet.cli._options import AutoInt, NumberOrWord, SettingOption, options_from, settings_of
from amnet.core.settings import (AMNetConfig, ExtractConfig, TrainConfig, dataclass_defaults,
                                 field_spec, setting_names)

COMMANDS = {"train": main.commands["train"], "evaluate": main.commands["evaluate"],
            "extract": cache_cli.commands["extract"]}
# the settings each command offers, by dataclass (the rest: hand-made options, e.g. -q)
EXPOSED = {
    "train": {TrainConfig: set(setting_names(TrainConfig)) - {"progress"},   # progress: -q
              # trainable_layers, a list: the hand-made --trainable-layers (a comma list)
              AMNetConfig: set(setting_names(AMNetConfig)) - {"trainable_layers"}},
    "evaluate": {TrainConfig: {"device", "eval_batch_size", "preload", "precision", "tta",
                               "on_nonfinite"}},
    "extract": {ExtractConfig: set(setting_names(ExtractConfig))},
}
# the spellings the CLIs had before their options were generated: they must keep working
SPELLINGS = {
    "train": """--epochs --batch-size --eval-batch-size --lr --weight-decay --gamma --seed --device
        --precision --flip --no-flip --views --no-views --tta --no-tta --preload --workers
        --holdout --lstm-steps --attention --no-attention --hidden-dim --feature-dim
        --regressor-dim --feature-dropout --dropout --target-mean --target-scale -q --quiet
        --trainable-layers --trunk-lr --trunk-weight-decay --trunk-bn
        --cache --train --val --test --out""",
    "evaluate": "--cache --split --out --device --batch-size --preload --precision --tta",
    "extract": """--out --images-root --weights --image-size --flip --views --view-seed --device
        --batch-size --workers --on-error --overwrite --shard --precision -q --quiet""",
}


def _setting_options(command: click.Command) -> list[SettingOption]:
    return [p for p in command.params if isinstance(p, SettingOption)]


def _parsed_default(command: click.Command, option: click.Option):
    ctx = click.Context(command)
    return option.type_cast_value(ctx, option.get_default(ctx))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_settings_option_is_its_fields(name):
    command = COMMANDS[name]
    options = _setting_options(command)
    got: dict[type, set[str]] = {}
    for opt in options:
        cls, spec = opt.setting_cls, field_spec(opt.setting_cls)[opt.field]
        got.setdefault(cls, set()).add(opt.field)
        assert opt.name == opt.field                                   # passed under its name
        # the default a user gets is the dataclass's, value and type
        default = _parsed_default(command, opt)
        assert default == dataclass_defaults(cls)[opt.field] == spec.default, (name, opt.field)
        assert type(default) is type(spec.default), (name, opt.field)
        assert opt.help == spec.help and opt.help
        if spec.choices and isinstance(opt.type, NumberOrWord):    # target_mean: number | train
            assert opt.type.words == spec.choices
        elif spec.choices:
            assert tuple(opt.type.choices) == spec.choices
        if isinstance(opt.type, (click.IntRange, click.FloatRange)):
            assert (opt.type.min, opt.type.max, opt.type.max_open) == (spec.min, spec.max,
                                                                       spec.max_open)
        else:
            assert spec.min is None and spec.max is None, (name, opt.field)
    assert got == EXPOSED[name]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_options_keep_their_spellings(name):
    command = COMMANDS[name]
    spelled = {o for p in command.params for o in p.opts + p.secondary_opts}
    assert set(SPELLINGS[name].split()) <= spelled


def test_train_help_lists_every_setting_with_its_default():
    r = CliRunner().invoke(main, ["train", "--help"], terminal_width=400)
    assert r.exit_code == 0, r.output
    lines: dict[str, str] = {}           # option -> its entry (a long name wraps the help)
    option = ""
    for line in r.output.split("Options:", 1)[1].splitlines():
        if line.strip().startswith("-"):
            option = line.split()[0].rstrip(",")
            lines[option] = line
        elif option and line.strip():
            lines[option] += " " + line.strip()
    for cls in (TrainConfig, AMNetConfig):
        for field, default in dataclass_defaults(cls).items():
            if field == "progress":
                continue
            flag = "--attention" if field == "use_attention" else "--" + field.replace("_", "-")
            assert flag in lines, flag
            line = lines[flag]
            if isinstance(default, bool):
                shown = flag[2:] if default else "no-" + flag[2:]
            else:
                shown = str(default)
            assert f"[default: {shown}" in line, line
            assert field_spec(cls)[field].help.split()[0] in line


def test_extract_workers_takes_auto():
    opt = next(p for p in COMMANDS["extract"].params if p.name == "workers")
    assert isinstance(opt.type, AutoInt)
    assert opt.type.convert("auto", opt, None) == -1 and opt.type.convert("3", opt, None) == 3
    with pytest.raises(click.BadParameter):
        opt.type.convert("-2", opt, None)
    r = CliRunner().invoke(cache_cli, ["extract", "--help"], terminal_width=400)
    assert "[default: auto; x>=-1]" in r.output


# ---- the commands build their settings from the parsed values only ----------------------------

@pytest.fixture
def split_files(tmp_path: Path) -> dict[str, str]:
    cache = tmp_path / "c.h5"
    split = tmp_path / "s.txt"
    cache.write_bytes(b"")
    split.write_text("a.jpg 0.5\n")
    return {"cache": str(cache), "split": str(split), "out": str(tmp_path / "out")}


def test_train_builds_its_settings_from_the_dataclasses(monkeypatch, split_files):
    import amnet.head.run

    calls = []
    monkeypatch.setattr(amnet.head.run, "train_split",
                        lambda *a, wait: calls.append(a) or {"rho": 0.5, "n": 1})
    f = split_files
    base = ["train", "--cache", f["cache"], "--train", f["split"], "--out", f["out"]]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1]) == {"rho": 0.5, "n": 1}
    *_, mc, tc = calls[-1]
    assert mc == AMNetConfig() and tc == TrainConfig()
    r = CliRunner().invoke(main, base + ["--no-attention", "--hidden-dim", "8", "--lr", "1e-3",
                                         "--no-flip", "--tta", "--preload", "ram", "--workers",
                                         "2", "--score-max", "100", "-q"])
    assert r.exit_code == 0, r.output
    *_, mc, tc = calls[-1]
    assert mc == AMNetConfig(use_attention=False, hidden_dim=8)
    assert tc == TrainConfig(lr=1e-3, flip=False, tta=True, preload="ram", workers=2,
                             score_max=100.0, progress=False)
    for bad in (["--holdout", "0.95"], ["--dropout", "1"], ["--lr", "-1"], ["--workers", "-2"],
                ["--precision", "fp16"]):
        r = CliRunner().invoke(main, base + bad)
        assert r.exit_code == 2 and "Invalid value" in r.output, (bad, r.output)


def test_evaluate_passes_the_dataclass_defaults(monkeypatch, split_files):
    import amnet.head.evaluation

    calls = []
    monkeypatch.setattr(amnet.head.evaluation, "evaluate",
                        lambda *a, **kw: calls.append(kw) or ({"rho": 0.1}, None))
    f = split_files
    base = ["evaluate", f["cache"], "--cache", f["cache"], "--split", f["split"]]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    d = TrainConfig()
    assert calls[-1] == dict(device=d.device, batch_size=d.eval_batch_size, preload=d.preload,
                             precision=d.precision, out_dir=None, tta=False,
                             on_nonfinite=d.on_nonfinite)
    r = CliRunner().invoke(main, base + ["--batch-size", "7", "--tta", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert calls[-1]["batch_size"] == 7 and calls[-1]["tta"] and calls[-1]["device"] == "cpu"


def test_extract_passes_the_dataclass_defaults(monkeypatch, tmp_path):
    import amnet.extract.run
    import amnet.extract.image_files
    from amnet.cli.params import extract_options

    calls = []
    monkeypatch.setattr(amnet.extract.image_files, "collect_images", lambda images, root, skipped=None: [])
    monkeypatch.setattr(amnet.extract.run, "extract", lambda items, out, **kw: calls.append(kw) or {})
    base = ["extract", str(tmp_path), "--out", str(tmp_path / "f.h5"), "-q", "--device", "cpu"]
    r = CliRunner().invoke(cache_cli, base)
    assert r.exit_code == 0, r.output
    expected = extract_options(ExtractConfig(device="cpu"))         # workers -1 resolved: auto
    assert {k: calls[-1][k] for k in expected} == expected and expected["workers"] >= 0
    r = CliRunner().invoke(cache_cli, base + ["--workers", "auto", "--flip"])
    assert calls[-1]["workers"] == expected["workers"] and calls[-1]["flip"] is True
    r = CliRunner().invoke(cache_cli, base + ["--workers", "0", "--views", "2"])
    assert r.exit_code == 0, r.output
    assert calls[-1]["workers"] == 0 and calls[-1]["views"] == 2


# ---- the helper itself ------------------------------------------------------------------------

def test_options_from_refuses_what_it_cannot_offer():
    with pytest.raises(TypeError, match="progress"):
        options_from(TrainConfig)                       # bool | None: offered by hand (-q)
    with pytest.raises(ValueError, match="nonsense"):
        options_from(TrainConfig, include=("nonsense",))
    with pytest.raises(ValueError, match="flag"):
        options_from(TrainConfig, include=("flip",), flags=("flip",))   # defaults to true
    with pytest.raises(ValueError):
        options_from(AMNetConfig, include=("grid",))    # internal: never an option


def test_options_keep_the_written_order_and_settings_of_takes_only_its_fields():
    @click.command()
    @options_from(AMNetConfig, include=("lstm_steps", "hidden_dim"))
    @click.option("--other")
    def cmd(**kw):
        pass

    assert [p.name for p in cmd.params] == ["lstm_steps", "hidden_dim", "other"]
    values = {"lstm_steps": 1, "hidden_dim": 2, "other": "x"}
    assert settings_of(AMNetConfig, values) == {"lstm_steps": 1, "hidden_dim": 2}
    assert values == {"other": "x"}
