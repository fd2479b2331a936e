"""The head grid vs the input size: the trunk's grid is ceil(S / 16) (amnet.extract.layers.grid_for), so
a 72-px cache (grid 5) is extracted and trained on -- and its heads must load for prediction.

Predictor.from_checkpoint checks the head's grid against grid_for(image_size), as extract does
(it used to check `grid * 16 == image_size`, refusing every size 16 does not divide)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from amnet.core.errors import WeightsError
from amnet.extract.layers import grid_for


def _head(path: Path, image_size: int, grid: int) -> Path:
    from amnet.core.settings import AMNetConfig
    from amnet.extract.backbone import load_backbone
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet
    _, spec = load_backbone("random:0")
    d = asdict(spec)
    prov = {"arch": d["arch"], "layer": d.get("layer", "layer3"), "weights_id": d["weights_id"],
            "weights_sha256": d["weights_sha256"], "image_size": image_size, "mean": d["mean"],
            "std": d["std"], "precision": "fp32"}
    model = AMNet(AMNetConfig(grid=grid, feature_dim=8, hidden_dim=8, regressor_dim=4))
    return save_checkpoint(make_checkpoint(model.eval(), backbone=prov), path)


def test_a_head_trained_on_a_72px_cache_loads(tmp_path):
    assert grid_for(72) == (5, 5)
    from amnet.predict.predictor import Predictor
    p = Predictor.from_checkpoint(_head(tmp_path / "h.pt", 72, 5), device="cpu", backbone=False)
    assert p.grid == 5 and p.image_size == 72


@pytest.mark.parametrize("size,grid", [(72, 4), (64, 5), (224, 13)])
def test_a_head_whose_grid_does_not_fit_the_input_size_is_refused(tmp_path, size, grid):
    from amnet.predict.predictor import Predictor
    with pytest.raises(WeightsError, match="does not fit input size"):
        Predictor.from_checkpoint(_head(tmp_path / "h.pt", size, grid), device="cpu",
                                  backbone=False)
