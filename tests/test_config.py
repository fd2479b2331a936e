"""params.yaml against the settings dataclasses (amnet.cli.params, amnet.core.settings): every shipped
params file validates, a misspelt key is one line naming file, key and valid keys, defaults come
from the dataclasses only, and dvc.yaml tracks exactly the settings that change results."""
from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from amnet.cli.params import SECTIONS, Params, load_params, section_keys
from amnet.core.errors import AmnetError, ParamsError
from amnet.core.settings import (AMNetConfig, DataConfig, EvaluateConfig, ExtractConfig,
                                 dataclass_defaults, field_help, field_spec, knob_names,
                                 setting_names, TrainConfig)
from amnet.head.run import NOT_FINGERPRINTED

REPO = Path(__file__).resolve().parents[1]
# params files: params.yaml and every configs/*.yaml but the bench's sweep recipes
SWEEPS = {p.name for p in (REPO / "configs").glob("lnsim-sweep*.yaml")}
PARAMS_FILES = [REPO / "params.yaml"] + sorted(p for p in (REPO / "configs").glob("*.yaml")
                                               if p.name not in SWEEPS)


def _write(tmp_path: Path, doc) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _load(tmp_path: Path, doc) -> Params:
    return load_params(_write(tmp_path, doc))


def _error(tmp_path: Path, doc) -> str:
    with pytest.raises(ParamsError) as e:
        _load(tmp_path, doc)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- the shipped files ------------------------------------------------------------------------

@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_every_params_file_validates_and_keeps_its_values(path):
    p = load_params(path)
    doc = yaml.safe_load(path.read_text())
    assert set(doc) <= set(SECTIONS)
    for name, values in doc.items():
        obj = getattr(p, SECTIONS[name].attr)
        for key, value in values.items():
            got = getattr(obj, key)
            if isinstance(value, dict):  # data.protocol, data.demo
                assert {k: getattr(got, k) for k in value} == value
            else:
                assert got == value and type(got) is type(value), (name, key)


def test_sweep_recipes_name_settings():
    """bench/lnsim_sweep.py's entries override AMNetConfig / TrainConfig settings."""
    known = set(setting_names(AMNetConfig)) | set(setting_names(TrainConfig)) | {
        "name", "cache_views", "layers"}
    assert SWEEPS >= {"lnsim-sweep.yaml", "lnsim-sweep-top.yaml"}
    for name in SWEEPS:
        doc = yaml.safe_load((REPO / "configs" / name).read_text())
        for entry in doc["configs"]:
            assert set(entry) <= known, (name, set(entry) - known)


# ---- defaults: the dataclasses only -----------------------------------------------------------

@pytest.mark.parametrize("doc", ["", "{}\n", {"train": None, "model": {}}])
def test_an_empty_file_or_section_takes_every_default(tmp_path, doc):
    p = _load(tmp_path, doc)
    assert p.data == DataConfig() and p.extract == ExtractConfig() and p.model == AMNetConfig()
    assert p.train == TrainConfig() and p.evaluate == EvaluateConfig()


def test_a_key_left_out_takes_its_default_and_sections_merge(tmp_path):
    p = _load(tmp_path, {"backbone": {"weights": "random:0"}, "extract_run": {"workers": 2},
                         "train": {"epochs": 3}, "train_run": {"preload": "ram"},
                         "data": {"protocol": {"seed": 7}}})
    assert p.extract == ExtractConfig(weights="random:0", workers=2)
    assert p.train == TrainConfig(epochs=3, preload="ram")
    assert p.data.protocol.seed == 7 and p.data.protocol.val_fraction == 0.1
    assert p.data.demo.n_images == dataclass_defaults(DataConfig)["demo"].n_images


def test_defaults_are_fresh_copies():
    a, b = DataConfig(), DataConfig()
    a.splits.append(9)
    assert b.splits == [1, 2] and a.protocol is not b.protocol


def test_extract_defaults_match_the_library_function():
    """ExtractConfig's defaults are extract()'s; where they differ, on purpose: weights (required
    there; the CLI's imagenet here) and workers (-1 = auto, the CLI's default; extract() takes a
    resolved count, amnet.cli.params.extract_options resolves it)."""
    from amnet.extract.run import extract
    sig = inspect.signature(extract).parameters
    for name, default in dataclass_defaults(ExtractConfig).items():
        if name in ("weights", "workers"):
            continue
        assert sig[name].default == default, name
    assert sig["weights"].default is inspect.Parameter.empty
    assert ExtractConfig().weights == "imagenet" and ExtractConfig().workers == -1


def test_extract_options_resolve_auto_workers():
    from amnet.cli.params import extract_options
    from amnet.extract.run import extract
    opts = extract_options(ExtractConfig(device="cpu"))
    assert opts["workers"] == 1  # auto on CPU
    assert set(opts) <= set(inspect.signature(extract).parameters)
    assert extract_options(ExtractConfig(workers=0))["workers"] == 0


def test_settings_carry_help_for_the_clis():
    for cls in (ExtractConfig, AMNetConfig, TrainConfig, DataConfig, EvaluateConfig):
        help_ = field_help(cls)
        assert set(help_) == set(setting_names(cls)) and all(help_.values()), cls
        assert set(dataclass_defaults(cls)) == set(help_)
    spec = field_spec(ExtractConfig)
    assert spec["precision"].choices == ("auto", "mixed", "bf16", "fp32")
    assert spec["image_size"].min == 32 and spec["image_size"].type is int
    assert spec["workers"].knob and not spec["weights"].knob
    assert "in_channels" not in field_spec(AMNetConfig)  # internal: set from the cache
    assert set(dataclass_defaults(AMNetConfig, internal=True)) == {f.name for f in fields(AMNetConfig)}


def test_knobs_are_what_the_training_fingerprint_ignores():
    assert NOT_FINGERPRINTED == knob_names(TrainConfig) == ("preload", "workers", "progress")
    assert knob_names(ExtractConfig) == ("batch_size", "workers", "device")
    assert "device" not in knob_names(TrainConfig)  # another device rounds differently


def test_dataset_kinds_are_prepares():
    from amnet.data import KINDS
    assert sorted(field_spec(DataConfig)["dataset"].choices) == sorted(KINDS)


# ---- one line for a bad file -----------------------------------------------------------------

def test_unknown_key_is_one_line_naming_file_key_and_valid_keys(tmp_path):
    path = _write(tmp_path, {"train": {"epoch": 3}})
    with pytest.raises(ParamsError) as e:
        load_params(path)
    valid = ", ".join(sorted(section_keys("train")))
    assert str(e.value) == f"{path}: unknown key train.epoch (valid: {valid})"
    assert "batch_size, device, epochs, eval_batch_size" in valid and "preload" not in valid
    assert isinstance(e.value, AmnetError)  # the stage scripts' one-line exit


def test_unknown_key_in_a_nested_section_and_unknown_section(tmp_path):
    msg = _error(tmp_path, {"data": {"protocol": {"sed": 1}}})
    assert msg.endswith("unknown key data.protocol.sed (valid: seed, test_fraction, val_fraction)")
    msg = _error(tmp_path, {"trian": {"epochs": 1}})
    assert msg.endswith("unknown key trian (valid: backbone, data, evaluate, extract_run, model, "
                        "train, train_run)")


@pytest.mark.parametrize("section,key,other", [("backbone", "workers", "extract_run"),
                                               ("extract_run", "flip", "backbone"),
                                               ("train", "preload", "train_run")])
def test_a_setting_in_the_wrong_section_says_where_it_belongs(tmp_path, section, key, other):
    msg = _error(tmp_path, {section: {key: 1}})
    assert f"unknown key {section}.{key} (valid: " in msg
    assert msg.endswith(f"; did you mean {other}.{key}?")


def test_internal_fields_are_not_settings(tmp_path):
    msg = _error(tmp_path, {"model": {"grid": 5}})
    assert "unknown key model.grid" in msg and "from the feature cache" in msg


@pytest.mark.parametrize("doc,words", [
    ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer, got 'ten'"),
    ({"train": {"epochs": True}}, "train.epochs: expected an integer, got True"),
    ({"train": {"tta": "yes please"}}, "train.tta: expected true or false, got 'yes please'"),
    ({"train": {"epochs": 0}}, "train.epochs: 0 is below the minimum 1"),
    ({"train": {"holdout": 0.95}}, "train.holdout: 0.95 is above the maximum 0.9"),
    ({"model": {"dropout": 1.0}}, "model.dropout: 1.0 is not below 1.0"),
    ({"backbone": {"precision": "fp16"}}, "backbone.precision: 'fp16' is not one of auto, mixed"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset: 'imagenet' is not one of demo, lamem"),
    ({"data": {"splits": 3}}, "data.splits: expected a list of integers, got 3"),
    ({"data": {"splits": [1, "x"]}}, "data.splits: expected a list of integers, got [1, 'x']"),
    ({"train_run": {"progress": "on"}}, "train_run.progress: expected true or false or null"),
    ({"model": [1, 2]}, "model: expected a mapping of settings, got list"),
    ({"data": {"demo": 5}}, "data.demo: expected a mapping of settings, got int"),
    ("train: [epochs: 1\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping of sections, got list"),
])
def test_bad_values_are_one_line(tmp_path, doc, words):
    msg = _error(tmp_path, doc)
    assert msg.startswith(f"{tmp_path / 'params.yaml'}: ") and words in msg, msg


def test_numbers_are_coerced(tmp_path):
    # DVC's `-S train.lr=1e-4` writes 1e-4, which PyYAML reads as a string
    p = _load(tmp_path, "train:\n  lr: 1e-4\n  epochs: 3.0\nmodel:\n  target_scale: 1\n"
                        "train_run:\n  progress: null\n")
    assert p.train.lr == 1e-4 and type(p.train.lr) is float
    assert p.train.epochs == 3 and type(p.train.epochs) is int
    assert p.model.target_scale == 1.0 and type(p.model.target_scale) is float
    assert p.train.progress is None


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ParamsError, match=r"nothere\.yaml: not found$"):
        load_params(tmp_path / "nothere.yaml")


# ---- dvc.yaml tracks what changes results, and no knob -----------------------------------------

def _stage_params() -> dict[str, list[str]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: (s.get("do", s)).get("params", []) for name, s in stages.items()}


def _key_exists(dotted: str) -> bool:
    section, *rest = dotted.split(".")
    if section not in SECTIONS:
        return False
    if not rest:
        return True
    cls = SECTIONS[section].cls
    allowed = section_keys(section)
    for key in rest:
        if key not in allowed:
            return False
        cls = field_spec(cls)[key].type
        allowed = setting_names(cls) if isinstance(cls, type) and hasattr(cls, "__dataclass_fields__") else ()
    return True


def test_dvc_yaml_tracks_the_result_sections_and_never_a_knob():
    tracked = _stage_params()
    every = [p for ps in tracked.values() for p in ps]
    assert all(isinstance(p, str) and _key_exists(p) for p in every), every
    # knobs: never tracked, so changing them re-runs nothing
    assert not [p for p in every if p.split(".")[0] in ("extract_run", "train_run")]
    # the settings that decide results: each whole section, so any key added to it re-runs the
    # stage (which then validates it) -- a misspelt key cannot be silently ignored
    assert {"backbone"} <= set(tracked["extract"])
    assert {"model", "train"} <= set(tracked["train"])
    assert "evaluate" in tracked["evaluate"] and "data" in tracked["prepare"]
    assert "data.splits" in tracked["evaluate"]
    # what makes the images (data.dataset is in each command's paths)
    assert {"data.root", "data.demo"} <= set(tracked["extract"])


def test_dvc_yaml_passes_every_path_and_scripts_build_none():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, s in stages.items():
        spec = s.get("do", s)
        cmd = spec["cmd"]
        assert cmd.startswith(f"python pipeline/{name}.py"), cmd
        for out in spec.get("outs", []):
            out = out if isinstance(out, str) else next(iter(out))
            assert out in cmd or out.rsplit("/", 1)[0] in cmd, (name, out)
        script = (REPO / "pipeline" / f"{name}.py").read_text()
        assert f"from amnet.cli.stages import {name}_stage, run" in script or \
            f"from amnet.cli.stages import run, {name}_stage" in script, name
    # the stages' commands (amnet/cli/stages.py): every path an argument, every setting from
    # the validated params file
    stages_py = (REPO / "amnet" / "cli" / "stages.py").read_text()
    assert '"data/features' not in stages_py and 'Path("data")' not in stages_py
    assert "yaml.safe_load" not in stages_py
    assert stages_py.count("load_params(params)") == len(stages)
