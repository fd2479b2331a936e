"""amnet.viz: overlay maths, Fig. 2 layout (one panel per step), contact sheet ordering/pages."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from amnet import viz


def _maps(steps: int = 3, grid: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.random((steps, grid, grid)).astype(np.float32)
    return a / a.sum(axis=(1, 2), keepdims=True)


def test_normalize_map_min_max_and_constant():
    m = viz.normalize_map(np.array([[1.0, 3.0], [2.0, 5.0]]))
    assert m.min() == 0.0 and m.max() == 1.0
    # a uniform map (no-attention ablation) has no range: drawn as all-zero, not NaN
    assert np.all(viz.normalize_map(np.full((4, 4), 1 / 16)) == 0)


def test_overlay_blends_half_image_half_jet():
    img = np.zeros((32, 32, 3), np.uint8)
    att = np.zeros((4, 4), np.float32)
    att[0, 0] = 1.0  # peak in the top-left corner
    out = viz.overlay(img, att)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    # black image: output = jet / 2; the peak is dark red (jet(1) = (0.5, 0, 0)), the rest blue
    assert out[0, 0, 0] > out[0, 0, 2]
    assert out[-1, -1, 2] > out[-1, -1, 0]
    assert out.max() <= 128
    # 50/50: a white image with the same map stays within [127, 255]
    out_w = viz.overlay(np.full((32, 32, 3), 255, np.uint8), att)
    assert out_w.min() >= 127


def test_attention_figure_has_one_panel_per_step():
    img = Image.new("RGB", (80, 50), (120, 30, 200))
    for steps in (1, 3, 5):
        fig = viz.attention_figure(img, _maps(steps), [0.25] * steps, 0.25 * steps, gt=0.7,
                                   title="x.jpg", size=64)
        try:
            assert len(fig.axes) == steps + 1
            labels = [ax.get_xlabel() for ax in fig.axes]
            assert labels[0] == "image"
            assert labels[1] == "step 1: 0.250"
            # the image is squashed to the model input size
            assert fig.axes[0].get_images()[0].get_array().shape[:2] == (64, 64)
            assert "gt 0.700" in fig._suptitle.get_text()
        finally:
            plt.close(fig)


def test_attention_figure_shape_checks():
    with pytest.raises(ValueError):
        viz.attention_figure(np.zeros((8, 8, 3), np.uint8), _maps(3), [0.1, 0.2], 0.3)


def test_save_attention_figure_png(tmp_path):
    out = viz.save_attention_figure(tmp_path / "sub" / "a.png", np.zeros((64, 64, 3), np.uint8),
                                    _maps(3), [0.2, 0.3, 0.25], 0.75)
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w > 3 * h  # four panels side by side


def test_contact_sheet_sorted_and_paged(tmp_path):
    items = [viz.SheetItem(image=f"img{i}", score=s, label=f"img{i}", gt=None)
             for i, s in enumerate([0.5, 0.9, 0.7])]
    loaded = []

    def loader(name):
        loaded.append(name)
        return Image.new("RGB", (40, 30), (10, 200, 10))

    written = viz.contact_sheet(items, tmp_path / "grid.png", columns=2, thumb=32, per_page=2,
                                loader=loader)
    assert [p.name for p in written] == ["grid.png", "grid_2.png"]
    assert all(p.exists() for p in written)
    assert loaded == ["img1", "img2", "img0"]  # most to least memorable
