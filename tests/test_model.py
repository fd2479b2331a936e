"""The AMNet head against spec/amnet.md sections 2, 3, 7 and 9."""
import math

import pytest
import torch

from amnet.core.settings import AMNetConfig
from amnet.head.model import (AMNet, amnet_loss, attention_loss, count_parameters,
                              parameter_breakdown)

SMALL = dict(in_channels=8, feature_dim=12, hidden_dim=10, regressor_dim=6, grid=4)


def test_paper_parameter_count_and_breakdown():
    m = AMNet()
    assert count_parameters(m) == 13_323_461
    assert parameter_breakdown(m) == {
        "inconv": 1_049_600, "bn1": 2_048, "hs1": 1_049_600, "hc1": 1_049_600, "e1": 1_048_576,
        "eh1": 200_900, "eh3": 1_024, "rnn": 8_396_800, "regnet1": 524_800, "regnet4": 513}
    # the ablation still builds the attention layers, but does not use them (spec 7)
    m0 = AMNet(use_attention=False)
    assert count_parameters(m0) == 13_323_461
    used = count_parameters(m0) - sum(parameter_breakdown(m0)[k] for k in ("e1", "eh1", "eh3"))
    assert used == 12_072_961


def test_state_dict_keys_match_the_published_layout():
    keys = set(AMNet().state_dict())
    expected = {"inconv.weight", "inconv.bias", "bn1.weight", "bn1.bias", "bn1.running_mean",
                "bn1.running_var", "bn1.num_batches_tracked", "hs1.weight", "hs1.bias", "hc1.weight",
                "hc1.bias", "e1.weight", "eh1.weight", "eh1.bias", "eh3.weight", "rnn.weight_ih_l0",
                "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0", "regnet1.weight",
                "regnet1.bias", "regnet4.weight", "regnet4.bias"}
    assert keys == expected


def test_paper_shapes_and_attention_rows_sum_to_one():
    torch.manual_seed(0)
    m = AMNet().eval()
    x = torch.randn(2, 1024, 14, 14).half()
    out, alphas = m(x)
    assert out.shape == (2, 3) and alphas.shape == (2, 3, 196)
    assert torch.allclose(alphas.sum(-1), torch.ones(2, 3), atol=1e-6)
    assert (alphas >= 0).all()
    # attention differs between locations (not trivially uniform)
    assert alphas.std() > 0


@pytest.mark.parametrize("train_mode", [False, True])
def test_attention_rows_sum_to_one_small(train_mode):
    torch.manual_seed(1)
    m = AMNet(**SMALL, lstm_steps=4).train(train_mode)
    out, alphas = m(torch.randn(5, 8, 4, 4))
    assert out.shape == (5, 4) and alphas.shape == (5, 4, 16)
    assert torch.allclose(alphas.sum(-1), torch.ones(5, 4), atol=1e-6)


def test_no_attention_ablation_is_uniform():
    torch.manual_seed(2)
    for mode in (True, False):
        m = AMNet(**SMALL, use_attention=False).train(mode)
        _, alphas = m(torch.randn(3, 8, 4, 4))
        assert torch.equal(alphas, torch.full((3, 3, 16), 1 / 16))
    # in eval mode every step sees the same context z = mean(a), from the same h0/c0 -> same
    # input thrice; the LSTM state still advances, so outputs may differ per step, but a
    # forward is deterministic
    m.eval()
    x = torch.randn(3, 8, 4, 4)
    assert torch.equal(m(x)[0], m(x)[0])


def test_attention_loss_known_values():
    # uniform attention over 196 locations, 3 steps: the spec's 6.686e-5 after gamma = 1e-5
    assert (1e-5 * attention_loss(torch.full((4, 3, 196), 1 / 196))).item() == \
        pytest.approx(6.686e-5, abs=5e-9)
    # all three steps on one location: about 1.56e-4 (spec 3)
    peaked = torch.zeros(4, 3, 196)
    peaked[:, :, 0] = 1
    assert (1e-5 * attention_loss(peaked)).item() == pytest.approx(1.56e-4, abs=1e-6)
    # by hand, 2 steps x 3 locations: per location (0.2 - sum over steps)^2, summed, batch mean
    alphas = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],     # sums 2, 0, 0: 3.24 + 0.04 + 0.04
                           [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]])    # sums .5, 1, .5: .09 + .64 + .09
    assert attention_loss(alphas).item() == pytest.approx((3.32 + 0.82) / 2, rel=1e-6)


def test_attention_loss_prefers_spread_and_ignores_order():
    g = torch.Generator().manual_seed(0)
    alphas = torch.softmax(torch.randn(3, 3, 16, generator=g) * 3, dim=-1)
    base = attention_loss(alphas)
    perm = torch.randperm(16, generator=g)
    assert attention_loss(alphas[:, :, perm]).item() == pytest.approx(base.item(), rel=1e-6)
    assert attention_loss(alphas[:, [2, 0, 1]]).item() == pytest.approx(base.item(), rel=1e-6)
    assert attention_loss(alphas.flip(0)).item() == pytest.approx(base.item(), rel=1e-6)
    uniform = attention_loss(torch.full((3, 3, 16), 1 / 16))
    assert uniform < base  # spreading the attention is what the term rewards
    # gradients: the constant 0.2 only shifts every location's gradient by the same amount,
    # which the softmax cancels: logits get the same gradient as from sum_l (sum_t alpha)^2
    logits = torch.randn(2, 3, 16, generator=g, requires_grad=True)
    (g1,) = torch.autograd.grad(attention_loss(torch.softmax(logits, -1)), logits)
    (g2,) = torch.autograd.grad((torch.softmax(logits, -1).sum(1) ** 2).sum(1).mean(), logits)
    assert torch.allclose(g1, g2, atol=1e-6) and g1.abs().max() > 1e-3


def test_loss_known_values():
    cfg = AMNetConfig()  # y' = (y - 0.754) * 2
    uniform = torch.full((2, 3, 196), 1 / 196)
    # per-step outputs averaging exactly y': only the attention term is left
    out = torch.tensor([[0.4, 0.5, 0.6], [-0.3, 0.0, 0.0]])   # means 0.5, -0.1
    y = torch.tensor([1.004, 0.704])                          # y' = 0.5, -0.1
    assert amnet_loss(out, uniform, y, cfg).item() == pytest.approx(6.686e-5, abs=5e-9)
    assert amnet_loss(out, uniform, y, cfg, gamma=0.0).item() == pytest.approx(0.0, abs=1e-12)
    # off by 0.2 and 0.1 in normalised units: MSE (0.04 + 0.01) / 2
    y2 = torch.tensor([0.904, 0.704 - 0.05])                  # y' = 0.3, -0.2
    assert amnet_loss(out, uniform, y2, cfg, gamma=0.0).item() == pytest.approx(0.025, rel=1e-5)
    assert amnet_loss(out, uniform, y2, cfg).item() == pytest.approx(0.025 + 6.686e-5, rel=1e-4)
    # only the mean over steps counts: redistributing a row's outputs changes nothing
    shuffled = torch.tensor([[0.5, 0.5, 0.5], [0.1, -0.2, -0.2]])
    assert amnet_loss(shuffled, uniform, y2, cfg).item() == \
        pytest.approx(amnet_loss(out, uniform, y2, cfg).item(), rel=1e-6)
    # another target mapping: the same outputs are right for other scores
    other = AMNetConfig(target_mean=0.5, target_scale=1.0)
    assert amnet_loss(out, uniform, torch.tensor([1.0, 0.4]), other, gamma=0.0).item() == \
        pytest.approx(0.0, abs=1e-12)


def _constant_head(value: float, steps: int = 3) -> AMNet:
    """A head whose every step outputs `value` (normalised): the regressor's last layer is a bias."""
    m = AMNet(**SMALL, lstm_steps=steps).eval()
    with torch.no_grad():
        m.regnet4.weight.zero_()
        m.regnet4.bias.fill_(value)
    return m


def test_predict_known_values():
    x = torch.randn(4, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    # every step outputs 0.5 (normalised): score 0.5 / 2 + 0.754 = 1.004, steps a third each
    score, steps, alphas = _constant_head(0.5).predict(x)
    assert score.tolist() == pytest.approx([1.004] * 4, abs=1e-6)
    assert torch.allclose(steps, torch.full((4, 3), 1.004 / 3), atol=1e-6)
    assert alphas.shape == (4, 3, 16)
    score, steps, _ = _constant_head(0.0, steps=4).predict(x)   # y' = 0 is the target mean
    assert score.tolist() == pytest.approx([0.754] * 4, abs=1e-6)
    assert torch.allclose(steps, torch.full((4, 4), 0.754 / 4), atol=1e-6)
    # a head predicting normalize_targets(y) predicts y: the two maps are inverse
    for y in (0.2, 0.754, 0.93):
        yn = _constant_head(0.0).normalize_targets(torch.tensor(y)).item()
        assert _constant_head(yn).predict(x)[0].tolist() == pytest.approx([y] * 4, abs=1e-6)
    # target mapping of spec 9: y = 0.754 -> 0, y = 1 -> 0.492
    torch.manual_seed(3)
    m = AMNet(**SMALL).eval()
    assert m.normalize_targets(torch.tensor([0.754, 1.0])).tolist() == pytest.approx([0.0, 0.492])
    # any head: step scores sum to the score, the score is monotone in every step's output
    score, steps, _ = m.predict(x)
    assert torch.allclose(steps.sum(1), score, atol=1e-6)
    out = torch.tensor([[0.1, 0.2, 0.3]])
    higher = torch.tensor([[0.1, 0.25, 0.3]])
    assert m.denormalize(higher) > m.denormalize(out)


def test_eval_outputs_do_not_depend_on_the_batch():
    torch.manual_seed(6)
    m = AMNet(**SMALL).eval()
    x = torch.randn(5, 8, 4, 4)
    out, alphas = m(x)
    for i in (0, 3):
        o1, a1 = m(x[i:i + 1])
        assert torch.allclose(o1[0], out[i], atol=1e-5) and torch.allclose(a1[0], alphas[i], atol=1e-6)
    po, pa = m(x.flip(0))
    assert torch.allclose(po.flip(0), out, atol=1e-5) and torch.allclose(pa.flip(0), alphas, atol=1e-6)


def test_attention_moves_with_the_content_when_locations_have_no_bias():
    """eh1 gives each location its own bias; without it (zeroed) nothing distinguishes locations
    but their features: moving the content moves the attention with it, and the outputs stay."""
    torch.manual_seed(7)
    m = AMNet(**SMALL).eval()
    with torch.no_grad():
        m.eh1.weight.zero_()
        m.eh1.bias.zero_()
    x = torch.randn(2, 8, 4, 4)
    out, alphas = m(x)
    rolled = x.roll(shifts=(1, 2), dims=(2, 3))
    out_r, alphas_r = m(rolled)
    moved = alphas.reshape(2, 3, 4, 4).roll(shifts=(1, 2), dims=(2, 3)).reshape(2, 3, 16)
    assert torch.allclose(alphas_r, moved, atol=1e-6) and torch.allclose(out_r, out, atol=1e-5)
    assert alphas.std() > 1e-3  # not trivially uniform
    # a location made to stand out draws the attention
    spot = x.clone()
    spot[:, :, 2, 1] *= 6.0
    _, alphas_s = m(spot)
    assert not torch.allclose(alphas_s, alphas, atol=1e-3)


def test_eval_is_deterministic_and_train_uses_dropout():
    torch.manual_seed(4)
    m = AMNet(**SMALL)
    x = torch.randn(4, 8, 4, 4)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])


def test_lstm_steps_zero_single_pass():
    m = AMNet(**SMALL, lstm_steps=0).eval()
    assert m.rnn is None
    out, alphas = m(torch.randn(2, 8, 4, 4))
    assert out.shape == (2, 1) and alphas.shape == (2, 1, 16)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[B, 8, 4, 4\]"):
        AMNet(**SMALL)(torch.randn(2, 8, 5, 5))


def test_gradients_reach_the_attention_layers_only_with_attention():
    torch.manual_seed(5)
    for use in (True, False):
        m = AMNet(**SMALL, use_attention=use)
        out, alphas = m(torch.randn(6, 8, 4, 4))
        amnet_loss(out, alphas, torch.rand(6), m.config).backward()
        got = m.e1.weight.grad is not None and m.e1.weight.grad.abs().sum() > 0
        assert got == use
        assert m.regnet4.weight.grad.abs().sum() > 0
        assert math.isfinite(out.sum().item())
