"""The AMNet head: a soft-attention LSTM over cached ResNet layer3 feature maps.

Its settings, `AMNetConfig`, live in amnet/core/settings.py (torch-free: the CLI builds its
options from them).

Follows `spec/amnet.md` section 2 (the official `AMemNetModel`) by default: `AMNet()` is the
paper's LaMem/SUN configuration with exactly 13,323,461 trainable parameters, and its attribute
names (`inconv`, `bn1`, `hs1`, `hc1`, `e1`, `eh1`, `eh3`, `rnn`, `regnet1`, `regnet4`) are the
original's, so the released checkpoints' head keys load directly (spec section 9).

With `trainable_layers` (e.g. ["layer4.2"]) the head first runs those trunk blocks over the
cached map of the cut below them (`top`, amnet.head.top_blocks), and trains them with the rest.

Shapes (B = batch, C = input channels, D = feature_dim, H = hidden_dim, L = grid*grid, T = steps):
  input x       [B, C, grid, grid]   cached features (float16 or float32)
  a             [B, L, D]            adapted features, location l = y*grid + x (row-major)
  outputs       [B, T]               per-step regressions, in normalised target space
  alphas        [B, T, L]            attention per step, each row sums to 1

Deviations from the original, all without effect on the outputs:
  * `e` is not computed in the no-attention ablation (the original computed and discarded it).
  * the unused `mem_loc_loss` (omega = 0) is not computed.
  * `--last-step-prediction` (buggy in the original, spec 8.11) is not offered.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amnet.core.settings import AMNetConfig  # the head's settings (torch-free, for the CLIs)
from amnet.head.top_blocks import TopBlocks


class AMNet(nn.Module):
    """The attention-LSTM memorability head (spec section 2).

    `forward(x)` returns (outputs [B, T], alphas [B, T, L]); `predict(x)` de-normalises.
    """

    def __init__(self, config: AMNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = replace(config or AMNetConfig(), **overrides)
        if cfg.lstm_steps < 0 or cfg.grid < 1:
            raise ValueError(f"bad AMNetConfig: {cfg}")
        if isinstance(cfg.target_mean, str):
            raise ValueError(f"target_mean {cfg.target_mean!r} is resolved when training starts "
                             "(amnet.head.run.train_split); a head needs a number")
        self.config = cfg
        C, D, H, L, R = cfg.in_channels, cfg.feature_dim, cfg.hidden_dim, cfg.locations, cfg.regressor_dim

        # 1. feature adapter: 1x1 conv + BN + ReLU + Dropout(0.8) on the whole map (spec 2.1, 8.2)
        self.inconv = nn.Conv2d(C, D, kernel_size=1, bias=True)
        self.bn1 = nn.BatchNorm2d(D)
        self.feature_drop = nn.Dropout(cfg.feature_dropout)
        # 2. initial LSTM state from the mean feature
        self.hs1 = nn.Linear(D, H)
        self.hc1 = nn.Linear(D, H)
        # 3.-4. attention: e1 has no bias; eh1 maps h to ONE scalar per location (spec 8.3)
        self.e1 = nn.Linear(D, D, bias=False)
        self.eh1 = nn.Linear(H, L)
        self.eh3 = nn.Linear(D, 1, bias=False)
        # 5. the LSTM, stepped by hand; nn.LSTM (not LSTMCell) so the keys are rnn.*_l0
        self.rnn = nn.LSTM(D, H, num_layers=1, batch_first=False) if cfg.lstm_steps > 0 else None
        # 6. regressor, applied at every step; no output activation
        self.regnet1 = nn.Linear(H if cfg.lstm_steps > 0 else D, R)
        self.regnet4 = nn.Linear(R, 1)
        self.drop = nn.Dropout(cfg.dropout)
        # PyTorch default initialisation only (spec 2.9)
        # 0. the trained top of the trunk (model.trainable_layers; amnet.head.top_blocks), built
        # last and off the global generator: the head's initial weights (and dropout draws) are
        # those of the frozen run with the same seed; its weights come from the cache
        self.top: TopBlocks | None = None
        if cfg.trainable_layers:
            with torch.random.fork_rng(devices=[]):
                self.top = TopBlocks(cfg.trainable_layers)

    # ------------------------------------------------------------------------------------------
    def _attend(self, e: Tensor | None, a: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One attention pass. e, a: [B, L, D]; h: [B, H] -> (z [B, D], alpha [B, L])."""
        B, L, _ = a.shape
        if not self.config.use_attention:
            alpha = a.new_full((B, L), 1.0 / L)
        else:
            s = self.eh1(h)                                   # [B, L]: one bias per location
            u = self.drop(F.relu(e + s.unsqueeze(-1)))        # [B, L, D]
            alpha = torch.softmax(self.eh3(u).squeeze(-1), dim=1)  # [B, L]
        z = torch.bmm(alpha.unsqueeze(1).to(a.dtype), a).squeeze(1)  # [B, D]; uses a, not e
        return z, alpha

    def _regress(self, h: Tensor) -> Tensor:
        """[B, H] -> [B]."""
        return self.regnet4(self.drop(F.relu(self.regnet1(h)))).squeeze(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, grid, grid] -> (outputs [B, T] normalised, alphas [B, T, L])."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[2] * x.shape[3] != cfg.locations:
            raise ValueError(
                f"AMNet expects features [B, {cfg.in_channels}, {cfg.grid}, {cfg.grid}], got {tuple(x.shape)}")
        x = x.float()  # caches hold float16; autocast (when on) picks the compute dtype
        if self.top is not None:  # the cut's map -> layer4's (a fused map: its last channels)
            c = self.top.channels
            x = torch.cat([x[:, :-c], self.top(x[:, -c:]).float()], 1) if x.shape[1] > c else \
                self.top(x).float()
        a = self.feature_drop(F.relu(self.bn1(self.inconv(x))))   # [B, D, g, g]
        a = a.flatten(2).transpose(1, 2)                          # [B, L, D], l = y*g + x
        af = a.mean(dim=1)                                        # [B, D]
        h = torch.tanh(self.hs1(af))                              # [B, H]; no dropout on h0
        c = torch.tanh(self.hc1(af))
        e = self.drop(F.relu(self.e1(a))) if cfg.use_attention else None   # [B, L, D], once

        outputs, alphas = [], []
        if self.rnn is None:  # lstm_steps = 0: z -> dropout -> regressor (spec 2.11)
            z, alpha = self._attend(e, a, h)
            outputs.append(self._regress(self.drop(z)))
            alphas.append(alpha)
        else:
            state = (h.unsqueeze(0), c.unsqueeze(0))              # un-dropped LSTM state
            for _ in range(cfg.lstm_steps):
                z, alpha = self._attend(e, a, h)
                out, state = self.rnn(z.unsqueeze(0), state)      # [1, B, H]
                # the dropped-out h_t feeds both the regressor and the next attention (spec 2.5)
                h = self.drop(out.squeeze(0))
                outputs.append(self._regress(h))
                alphas.append(alpha)
        return torch.stack(outputs, 1).float(), torch.stack(alphas, 1).float()

    # ------------------------------------------------------------------------------------------
    def denormalize(self, outputs: Tensor) -> Tensor:
        """Per-step outputs [B, T] -> score [B] = mean_t(out_t) / scale + mean (spec 2.8)."""
        return outputs.mean(dim=1) / self.config.target_scale + self.config.target_mean

    def step_scores(self, outputs: Tensor) -> Tensor:
        """[B, T] -> per-step display scores out_t/(T*scale) + mean/T, summing to the score."""
        T = outputs.shape[1]
        return outputs / (T * self.config.target_scale) + self.config.target_mean / T

    def normalize_targets(self, y: Tensor) -> Tensor:
        """Scores [B] -> y' = (y - mean) * scale."""
        return (y - self.config.target_mean) * self.config.target_scale

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, C, g, g] -> (score [B], step scores [B, T], alphas [B, T, L]); call in eval mode."""
        outputs, alphas = self(x)
        return self.denormalize(outputs), self.step_scores(outputs), alphas


def count_parameters(model: nn.Module, trainable: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def parameter_breakdown(model: AMNet) -> dict[str, int]:
    """Parameters per top-level layer, in the spec section 9 order."""
    out: dict[str, int] = {}
    for name, module in model.named_children():
        n = sum(p.numel() for p in module.parameters())
        if n:
            out[name] = n
    return out


def attention_loss(alphas: Tensor) -> Tensor:
    """alphas [B, T, L] -> (1/B) sum_b sum_l (0.2 - sum_t alpha_btl)^2 (spec 3; caller multiplies by gamma).

    The 0.2 is the original's hard-coded constant; it has no effect on gradients.
    """
    return ((0.2 - alphas.sum(dim=1)) ** 2).sum(dim=1).mean()


def amnet_loss(outputs: Tensor, alphas: Tensor, targets: Tensor, config: AMNetConfig,
               gamma: float = 1e-5) -> Tensor:
    """Training loss (spec 3): MSE(mean_t out_t, y') + gamma * attention_loss(alphas).

    outputs [B, T] normalised, alphas [B, T, L], targets [B] in score units (normalised here).
    """
    y = (targets.float() - config.target_mean) * config.target_scale
    reg = F.mse_loss(outputs.float().mean(dim=1), y)
    return reg + gamma * attention_loss(alphas.float())


__all__ = ["AMNet", "attention_loss", "amnet_loss", "count_parameters",
           "parameter_breakdown"]
