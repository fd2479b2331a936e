"""`target_mean: train`: the head's target shift is the mean of the training scores, fixed when
training starts and saved as a number (LNSIM's mean is ~0.60; the original's 0.754 is LaMem's)."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from amnet.cli import main
from amnet.core.errors import ParamsError
from amnet.core.settings import AMNetConfig, validate
from amnet.head.checkpoint import load_checkpoint
from amnet.head.model import AMNet
from test_train import TINY, _one_thread, run, synthetic  # noqa: F401 (fixture)


def test_train_resolves_the_training_mean_and_equals_that_number_given(tmp_path):
    cache, files = synthetic(tmp_path, n=(96, 32, 32))
    train_scores = np.loadtxt(files["train"], usecols=1)
    want = round(float(train_scores.mean()), 6)
    assert abs(want - 0.754) > 1e-3  # the test would not tell the two apart otherwise
    by_word = run(tmp_path, "word", cache, files, mc=AMNetConfig(**TINY, target_mean="train"))
    model, _ = load_checkpoint(tmp_path / "word" / "head.pt")
    assert model.config.target_mean == want
    by_number = run(tmp_path, "number", cache, files, mc=AMNetConfig(**TINY, target_mean=want))
    for key in ("rho", "mse", "val_rho", "val_mse", "best_epoch"):
        assert by_word[key] == by_number[key], key
    default = run(tmp_path, "default", cache, files)
    assert default["mse"] != by_word["mse"]  # the shift does change training


def test_params_and_cli_take_a_number_or_train():
    v = validate(AMNetConfig, {"target_mean": "train"}, where="model", source="params.yaml")
    assert v == {"target_mean": "train"}
    assert validate(AMNetConfig, {"target_mean": "0.6"}, where="model",
                    source="params.yaml") == {"target_mean": 0.6}
    with pytest.raises(ParamsError, match=r"^params.yaml: model.target_mean: expected a number "
                                          r"or one of train, got 'trian'$"):
        validate(AMNetConfig, {"target_mean": "trian"}, where="model", source="params.yaml")
    res = CliRunner().invoke(main, ["train", "--help"])
    assert "--target-mean FLOAT|TRAIN" in res.output
    res = CliRunner().invoke(main, ["train", "--cache", "x.h5", "--train", "t.txt", "--out", "o",
                                    "--target-mean", "mean"])
    assert res.exit_code == 2


def test_a_head_needs_a_number():
    with pytest.raises(ValueError, match="resolved when training starts"):
        AMNet(AMNetConfig(target_mean="train"))
