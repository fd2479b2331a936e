"""A differentiable memorability score as a loss for image generators: `MemorabilityLoss`.

    loss_fn = amnet.MemorabilityLoss(["models/1/head.pt", "models/2/head.pt"])   # or a Predictor,
    loss = loss_fn(images)            # images [B, 3, H, W] in [0, 1]      # or a published name
    (reconstruction + 0.1 * loss).backward()

The score is `Predictor.score_tensor` (amnet/predict/predictor.py): resized and normalised inside,
gradients to the pixels, trunk and heads frozen in eval mode. The loss is `1 - score` (see the
class). Optimised images game any predictor (images optimised against ResMem reach 0.9999: resmem
issue #3): regularise (a pixel or perceptual distance to the start, few steps) and report the
scores of an independent predictor, not of the one that was optimised against
(examples/optimise_memorability.py does both).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch

from amnet.core.errors import AmnetError
from amnet.predict.predictor import Predictor

ModelSource = Union[Predictor, str, Path, Sequence[Union[str, Path]]]
REDUCTIONS = ("mean", "sum", "none")


def _looks_like_path(source: str) -> bool:
    """A string names a checkpoint file (rather than a published model) when it exists, ends
    in .pt or holds a path separator."""
    return Path(source).exists() or source.endswith(".pt") or "/" in source or "\\" in source


def checkpoints_of(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """Checkpoint paths for `source`: a path, a list of paths, or a published model name
    (resolved, and downloaded where needed, by `amnet.predict.hub.checkpoints_for`)."""
    if isinstance(source, Path):
        return [source]
    if isinstance(source, str):
        if _looks_like_path(source):
            return [Path(source)]
        try:
            from amnet.predict.hub import checkpoints_for
        except ImportError:
            raise AmnetError(f"model name {source!r}: published model names need amnet.predict.hub, "
                             "which this amnet lacks; pass checkpoint paths (head.pt files) "
                             "instead") from None
        return [Path(p) for p in checkpoints_for(source)]
    paths = [Path(p) for p in source]
    if not paths:
        raise AmnetError("MemorabilityLoss: no checkpoint given")
    return paths


class MemorabilityLoss(torch.nn.Module):
    """`loss(x)`: images `x` `[B, 3, H, W]` in [0, 1], any size -> `1 - score`, reduced over the
    batch (`reduction` "mean" -> `[]`, "sum" -> `[]`, "none" -> `[B]`), on x's device.

    Why `1 - score` and not `-score`: both have the same gradient; `1 - score` is the distance
    to a perfectly memorable image on the scale people's scores use (LaMem's hit rates lie in
    [0, 1]), so it is >= 0 for the images the head was trained on and its weight against other
    losses reads directly; a negative value means the generator pushed the predictor past any
    human score -- the sign it is being gamed.

    `model_or_checkpoints`: a `Predictor` (used as it is: its device and precision, and its
    modules' `training`/`requires_grad` flags are left alone -- `score_tensor` never changes
    them and sends no gradient into them), a checkpoint path, a list of them (averaged), or a
    published model name (`amnet.predict.hub`). From paths or a name, the Predictor is built here on
    `device` with `precision` and `weights` (as `Predictor.from_checkpoint`), set to eval
    mode with every parameter's `requires_grad` False.

    `precision` defaults to "fp32", not the policy's "auto": a pixel optimiser follows the
    gradient for many small steps, and the bf16 layer3 of "mixed" rounds features to 8
    significant bits (~1e-2 of fp32), so it would partly chase rounding noise; fp32 gradients
    are also reproducible to the byte on CPU. Pass "auto" for the policy's choice (bf16 only
    where it is native: CUDA, AMX or AVX512-BF16 CPUs) when speed matters more; the heads run
    in fp32 either way, as in `Predictor.predict`.

    The Predictor is held, not registered: the loss has no parameters or buffers, so it adds
    nothing to a generator's `state_dict` or optimiser, and `loss.train()` / `loss.to()` do not
    touch it. Its device is fixed when it is built; inputs are moved there.
    """

    def __init__(self, model_or_checkpoints: ModelSource, reduction: str = "mean", *,
                 device: str = "auto", precision: str = "fp32", weights: str | None = None
                 ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
        self.reduction = reduction
        if isinstance(model_or_checkpoints, Predictor):
            predictor = model_or_checkpoints
            if predictor.trunk is None:
                raise AmnetError("MemorabilityLoss needs a Predictor with its backbone (built "
                                 "with backbone=True)")
        else:
            predictor = Predictor.from_checkpoint(checkpoints_of(model_or_checkpoints), device,
                                                  weights=weights, precision=precision)
            for m in (predictor.trunk, *predictor.heads):  # ours: frozen for good
                m.eval().requires_grad_(False)
        self.predictor = predictor

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Images `[B, 3, H, W]` in [0, 1] -> scores `[B]` (differentiable; `score_tensor`)."""
        return self.predictor.score_tensor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loss = 1.0 - self.score(x)
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss

    def extra_repr(self) -> str:
        p = self.predictor
        return (f"reduction={self.reduction!r}, checkpoints={len(p.checkpoints)}, "
                f"device={p.device}, backbone={p.provenance.weights_id}, "
                f"precision={getattr(p.trunk, 'precision', '?')}")


__all__ = ["MemorabilityLoss", "checkpoints_of"]
