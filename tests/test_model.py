"""The AMNet head against spec/amnet.md sections 2, 3, 7 and 9."""
import math

import pytest
import torch

from amnet.model import AMNet, AMNetConfig, amnet_loss, attention_loss, count_parameters, parameter_breakdown

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


def test_uniform_attention_loss_matches_spec():
    alphas = torch.full((4, 3, 196), 1 / 196)
    value = 1e-5 * attention_loss(alphas)
    assert value.item() == pytest.approx(1e-5 * 196 * (0.2 - 3 / 196) ** 2, rel=1e-5)
    assert value.item() == pytest.approx(6.686e-5, abs=5e-9)
    # all three steps on one location: about 1.56e-4 (spec 3)
    peaked = torch.zeros(4, 3, 196)
    peaked[:, :, 0] = 1
    assert (1e-5 * attention_loss(peaked)).item() == pytest.approx(1.56e-4, abs=1e-6)


def test_loss_is_mse_on_normalised_mean_plus_gamma_att():
    cfg = AMNetConfig()
    out = torch.tensor([[0.1, 0.2, 0.3], [0.0, -0.3, 0.0]])
    y = torch.tensor([0.9, 0.6])
    alphas = torch.full((2, 3, 196), 1 / 196)
    yn = (y - 0.754) * 2
    want = ((out.mean(1) - yn) ** 2).mean() + 1e-5 * 196 * (0.2 - 3 / 196) ** 2
    assert amnet_loss(out, alphas, y, cfg).item() == pytest.approx(want.item(), rel=1e-6)


def test_predict_denormalises_and_step_scores_sum_to_score():
    torch.manual_seed(3)
    m = AMNet(**SMALL).eval()
    x = torch.randn(4, 8, 4, 4)
    out, _ = m(x)
    score, steps, alphas = m.predict(x)
    assert torch.allclose(score, out.mean(1) / 2 + 0.754)
    assert torch.allclose(steps.sum(1), score, atol=1e-6)
    assert torch.allclose(steps, out / 6 + 0.754 / 3)
    # target mapping of spec 9: y = 0.754 -> 0, y = 1 -> 0.492
    assert m.normalize_targets(torch.tensor([0.754, 1.0])).tolist() == pytest.approx([0.0, 0.492])


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
