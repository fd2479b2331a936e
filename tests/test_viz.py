"""amnet.predict.viz: overlay maths, Fig. 2 layout (one panel per step), contact sheet ordering/pages."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from amnet.predict import viz


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
            # the T + 1 panels, then the colour bar
            assert len(fig.axes) == steps + 2
            labels = [ax.get_xlabel() for ax in fig.axes[:steps + 1]]
            assert labels[0] == "image"
            assert labels[1] == "step 1: 0.250"
            # the image is squashed to the model input size
            assert fig.axes[0].get_images()[0].get_array().shape[:2] == (64, 64)
            assert "gt 0.700" in fig._suptitle.get_text()
        finally:
            plt.close(fig)


def test_attention_figure_colour_bar_and_step_sum_caption():
    steps = [0.2104, 0.2504, 0.2904]
    fig = viz.attention_figure(np.zeros((32, 32, 3), np.uint8), _maps(3), steps, sum(steps))
    try:
        bar = fig.axes[-1]
        assert [t.get_text() for t in bar.get_yticklabels()] == ["min", "max"]
        assert "attention" in bar.get_ylabel()
        # the bar sits beside the step panels only: right of the last one
        assert bar.get_position().x0 > fig.axes[3].get_position().x1
        caption = fig._supxlabel.get_text()
        # rounded terms, and the sum rounded on its own (0.751, not 0.750)
        assert caption.startswith("The step scores add up to the score: "
                                  "0.210 + 0.250 + 0.290 = 0.751 (3 decimals).")
        assert "mean of the head's 3 step outputs" in caption
        assert "out_t / (3 \u00b7 target_scale) + target_mean / 3" in caption
    finally:
        plt.close(fig)


def test_step_sum_caption_is_what_the_head_computes():
    """The caption's claim, checked on amnet.head.model: score = sum of the step scores, where the
    score is the mean of the step outputs de-normalised (not their sum, unlike the paper's word)."""
    import torch
    from amnet.core.settings import AMNetConfig
    from amnet.head.model import AMNet

    torch.manual_seed(0)
    cfg = AMNetConfig(grid=4, in_channels=8, feature_dim=8, hidden_dim=8, regressor_dim=4,
                      lstm_steps=3, target_mean=0.754, target_scale=2.0)
    head = AMNet(cfg).eval()
    with torch.no_grad():
        head.regnet4.weight.mul_(20.0)
    x = torch.randn(5, 8, 4, 4)
    score, step_scores, _ = head.predict(x)
    with torch.no_grad():
        out, _ = head(x)                                                   # [B, T] normalised
    np.testing.assert_allclose(step_scores.sum(1).numpy(), score.numpy(), atol=1e-6)
    np.testing.assert_allclose(score.numpy(), (out.mean(1) / 2.0 + 0.754).numpy(), atol=1e-6)
    np.testing.assert_allclose(step_scores.numpy(), (out / (3 * 2.0) + 0.754 / 3).numpy(),
                               atol=1e-6)
    assert np.ptp(score.numpy()) > 1e-3  # the inputs get different scores: the check can fail


def test_attention_figure_shape_checks():
    with pytest.raises(ValueError):
        viz.attention_figure(np.zeros((8, 8, 3), np.uint8), _maps(3), [0.1, 0.2], 0.3)


def test_save_attention_figure_png(tmp_path):
    out = viz.save_attention_figure(tmp_path / "sub" / "a.png", np.zeros((64, 64, 3), np.uint8),
                                    _maps(3), [0.2, 0.3, 0.25], 0.75)
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert w > 2.5 * h  # four panels side by side (and a colour bar, under a caption)


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
