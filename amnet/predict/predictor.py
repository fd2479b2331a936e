"""The Predictor: one or more trained AMNet heads + the backbone they were trained on.

The backbone comes from the checkpoints' provenance (weights id + sha256 of the trunk); heads
trained by amnet must all name the same one (they were trained on one feature cache), and weights
the user passes must match it. Several checkpoints (e.g. the 5 LaMem splits) are averaged: the
score, the per-step scores and the attention maps are means over checkpoints (each averaged map
still sums to 1).

Checkpoints imported from the authors' release (amnet.predict.released_weights; `train_config.imported_from`)
are whole models: each split's trunk keeps the BatchNorm statistics that drifted while that split
trained (spec 1), so each head runs on its own trunk. Heads are grouped by trunk sha256 and every
distinct trunk runs once per batch (identical trunks would share one forward).

    p = Predictor.from_checkpoint(["models/1/head.pt", "models/2/head.pt"])
    r = p.predict("photo.jpg")        # r.score: float, r.step_scores: [T], r.attention: [T, g, g]
    r = p.predict(batch)              # batch [B, 3, S, S] preprocessed -> [B], [B, T], [B, T, g, g]
    p = Predictor.from_pretrained("lamem-resnet50")   # the published model (amnet.predict.hub)
    s = p.score_tensor(x)             # x [B, 3, H, W] in [0, 1], any size -> [B], differentiable

The batch loops over many inputs are amnet.predict.scoring; `amnet predict`'s CSV and figures,
amnet.predict.report. Which backbone the checkpoints need: amnet.predict.head_provenance.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from amnet.core.caveats import precision_mismatch
from amnet.core.errors import AmnetError, WeightsError
from amnet.core.provenance import BackboneRecord, as_record
from amnet.predict.head_provenance import (checkpoint_backbone, demo_reasons_for, group_by_backbone,
                                           load_trunk)


# ---- results -------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """Scores and attention. Batched inputs: score `[B]`, step_scores `[B, T]`, attention
    `[B, T, g, g]`, per_checkpoint `[B, K]`; a single image: float, `[T]`, `[T, g, g]`, `[K]`.
    All numpy float32 (score a Python float when single). Also readable as a dict (`r["score"]`).
    """
    score: Any
    step_scores: np.ndarray
    attention: np.ndarray
    per_checkpoint: np.ndarray

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> list[str]:
        return ["score", "step_scores", "attention", "per_checkpoint"]

    def _single(self) -> "Prediction":
        return Prediction(float(self.score[0]), self.step_scores[0], self.attention[0],
                          self.per_checkpoint[0])


# ---- frozen, eval-mode calls (score_tensor) ------------------------------------------------------

@contextmanager
def _eval_mode(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Eval mode inside, each submodule's own `training` flag restored after (a caller's module
    may be training: its mode is not changed behind its back)."""
    flags = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for root in modules:
            root.eval()
        yield
    finally:
        for m, training in flags:
            m.training = training


def _frozen_call(module: torch.nn.Module, *args: Any) -> Any:
    """`module(*args)` with no gradient into its parameters, whatever their `requires_grad`:
    through detached copies (torch.func.functional_call) when any of them requires grad, so
    the caller's flags stay as they are and nothing accumulates in their `.grad`."""
    if not any(p.requires_grad for p in module.parameters()):
        return module(*args)
    detached = {k: v.detach() for k, v in module.named_parameters()}
    return torch.func.functional_call(module, detached, args)


# ---- the predictor -------------------------------------------------------------------------------

class Predictor:
    """Backbone (optional: cached features need none) + one or more AMNet heads, in eval mode."""

    def __init__(self, heads: list[torch.nn.Module], provenance: BackboneRecord, checkpoints: list[Path],
                 device: torch.device, trunk: torch.nn.Module | None = None, spec: Any = None,
                 batch_size: int = 32, round_fp16: bool = False, *,
                 branches: list[tuple[list[int], torch.nn.Module | None, Any]] | None = None,
                 metas: list[dict] | None = None) -> None:
        """`branches`: (head indices, trunk, spec) per distinct backbone; default: one trunk
        (`trunk`, `spec`) for every head. `metas`: the checkpoints' dicts (for `demo_warning`)."""
        self.heads = heads
        self.provenance = as_record(provenance)  # the backbone the heads expect (the first's)
        self.checkpoints = checkpoints
        self.device = device
        self.branches = branches or [(list(range(len(heads))), trunk, spec)]
        self.trunk = self.branches[0][1]
        self.spec = self.branches[0][2]
        self.batch_size = batch_size
        self.round_fp16 = round_fp16
        self._metas = metas or [{} for _ in heads]
        cfg = heads[0].config
        self.grid: int = int(cfg.grid)
        self.steps: int = int(cfg.steps_out)
        self.image_size: int = int(self.provenance.image_size)
        self._transform = None

    @classmethod
    def from_checkpoint(cls, path_or_paths: str | Path | Sequence[str | Path], device: str = "auto",
                        *, weights: str | None = None, backbone: bool = True,
                        batch_size: int = 32, precision: str = "auto",
                        match_cache: bool = False) -> "Predictor":
        """Load heads (all must share one backbone provenance) and, unless `backbone=False` (for
        scoring cached features), the backbone they were trained on. `weights`: optional weights
        id the user insists on; it must match the checkpoints' (for `file:` by sha256).
        `precision`: the trunk's numerics (amnet.core.device): "auto" (the fastest within 1e-2 of fp32
        for this device and weights: `resolve_trunk_precision`), "mixed", "bf16" or "fp32" -- with "fp32" the whole route from image to score
        is fp32, no rounding anywhere. `match_cache`: reproduce the cached path instead: the
        trunk precision the checkpoint's cache was made with, and features rounded through
        float16 as the cache stores them (then image and cached scores agree)."""
        from amnet.core.device import resolve_device
        from amnet.head.checkpoint import load_checkpoint

        paths = [Path(path_or_paths)] if isinstance(path_or_paths, (str, Path)) else \
            [Path(p) for p in path_or_paths]
        if not paths:
            raise AmnetError("no checkpoint given")
        heads, provs, metas = [], [], []
        for p in paths:
            if not p.is_file():
                raise WeightsError(f"{p}: checkpoint not found")
            model, meta = load_checkpoint(p, map_location="cpu")
            heads.append(model.eval())
            provs.append(checkpoint_backbone(meta, p))
            metas.append({k: meta.get(k) for k in ("backbone", "train_config", "epoch",
                                                    "metrics")})
        groups = group_by_backbone(provs, metas, paths)
        prov = provs[0]
        for h, p in zip(heads[1:], paths[1:]):
            for key in ("grid", "lstm_steps", "in_channels"):
                if getattr(h.config, key) != getattr(heads[0].config, key):
                    raise WeightsError(f"{p}: head {key} {getattr(h.config, key)} differs from "
                                       f"{paths[0]}'s {getattr(heads[0].config, key)}")
        from amnet.extract.layers import grid_for
        if (heads[0].config.grid,) * 2 != grid_for(prov.image_size, prov.layer):
            raise WeightsError(f"{paths[0]}: head grid {heads[0].config.grid} does not fit input "
                               f"size {prov.image_size} ({prov.layer} output is "
                               f"{grid_for(prov.image_size, prov.layer)[0]} a side)")
        dev = resolve_device(device)
        if len(groups) > 1 and (weights is not None or not backbone):
            what = "--weights names one backbone" if backbone else \
                "a feature cache holds one backbone's features"
            raise WeightsError(f"{len(paths)} checkpoints ({paths[0]}, ...) bring {len(groups)} "
                               f"different backbones (imported splits keep their own BatchNorm "
                               f"statistics) and {what}: score images without --weights, or "
                               "one checkpoint at a time")
        branches = []
        for idx in groups:
            trunk = spec = None
            if backbone:
                if match_cache:
                    precision = provs[idx[0]].precision or "mixed"
                trunk, spec = load_trunk(provs[idx[0]], weights, paths[idx[0]], precision, dev)
                trunk = trunk.to(dev).eval()
            elif weights is not None and weights != prov.weights_id:
                load_trunk(prov, weights, paths[0])  # only to verify a file: by its sha256
            branches.append((idx, trunk, spec))
        heads = [h.to(dev) for h in heads]
        return cls(heads, prov, paths, dev, batch_size=batch_size, round_fp16=match_cache,
                   branches=branches, metas=metas)

    @classmethod
    def from_pretrained(cls, name: str, device: str = "auto", **kwargs: Any) -> "Predictor":
        """The authors' published model `name` (`amnet models list`), downloaded and converted
        on first use (amnet.predict.hub), its split heads averaged, each on its own trunk. `kwargs` as
        for `from_checkpoint` (precision, batch_size, ...)."""
        from amnet.predict.hub import checkpoints_for
        return cls.from_checkpoint(checkpoints_for(name), device, **kwargs)

    @property
    def metas(self) -> list[dict]:
        """Each checkpoint's record, in checkpoint order: its `backbone`, `train_config`, `epoch`
        and `metrics` (amnet.head.checkpoint; {} for a Predictor built without them)."""
        return self._metas

    @property
    def demo_reasons(self) -> list[str]:
        """Why these heads' scores mean nothing for real photos, over all checkpoints, e.g.
        "on the synthetic demo data set", "with a random-weight backbone (random:0)"; empty
        when nothing in their provenance says so."""
        why: list[str] = []
        for meta in self._metas:
            prov = BackboneRecord.from_dict(meta.get("backbone") or {})
            why += [w for w in demo_reasons_for(prov, meta.get("train_config") or {}) if w not in why]
        return why

    @property
    def demo_warning(self) -> str | None:
        """One line when a checkpoint was trained on the synthetic demo (a random-weight trunk or
        the demo data set in its provenance): such scores mean nothing for real photos."""
        for path, meta in zip(self.checkpoints, self._metas):
            prov = BackboneRecord.from_dict(meta.get("backbone") or {})
            why = demo_reasons_for(prov, meta.get("train_config") or {})
            if why:
                return (f"warning: {path} was trained {' '.join(why)}: its scores mean "
                        "nothing for real photos; for those use the published model, "
                        "`amnet predict --model lamem-resnet50` (see `amnet models list`)")
        return None

    # -- preprocessing ---------------------------------------------------------------------------
    @property
    def transform(self):
        """PIL image -> `[3, S, S]` (squash-resize, ToTensor, the weights' normalisation)."""
        if self._transform is None:
            from amnet.extract.backbone import image_transform
            self._transform = image_transform(self.image_size, self.provenance.mean,
                                              self.provenance.std)
        return self._transform

    def load_image(self, path: str | Path) -> Image.Image:
        from amnet.extract.image_files import open_image_rgb
        return open_image_rgb(path)

    def _to_batch(self, x: Any) -> tuple[torch.Tensor, bool]:
        if isinstance(x, torch.Tensor):
            if x.ndim == 3:
                return x.unsqueeze(0), True
            if x.ndim == 4:
                return x, False
            raise ValueError(f"expected a tensor [B, 3, S, S] or [3, S, S], got {tuple(x.shape)}")
        if isinstance(x, np.ndarray):
            x = Image.fromarray(x)
        if isinstance(x, (str, Path)):
            x = self.load_image(x)
        if isinstance(x, Image.Image):
            return self.transform(x.convert("RGB")).unsqueeze(0), True
        if isinstance(x, (list, tuple)):
            return torch.cat([self._to_batch(v)[0] for v in x]), False
        raise TypeError(f"cannot predict on a {type(x).__name__}")

    # -- inference -------------------------------------------------------------------------------
    def _trunk_features(self, trunk: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        if trunk is None:
            raise AmnetError("this Predictor was built without a backbone (backbone=False)")
        from amnet.extract.backbone import features
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected input {self.image_size}x{self.image_size} (the checkpoint's "
                             f"image_size), got {tuple(x.shape[-2:])}")
        f = features(trunk, x, self.device)
        return f.to(torch.float16).float() if self.round_fp16 else f

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 3, S, S]` -> layer3 features `[B, 1024, g, g]` float32 (one backbone only).

        With `round_fp16` (from `match_cache`) rounded through float16 as the cache stores them,
        so that end-to-end scores match the cached path's; otherwise left as the trunk made them."""
        if len(self.branches) > 1:
            raise AmnetError(f"these {len(self.heads)} heads run on {len(self.branches)} "
                             "backbones: use predict_images(), not features()")
        return self._trunk_features(self.trunk, x)

    def _run_heads(self, f: torch.Tensor, idx: list[int]) -> list[tuple[torch.Tensor, ...]]:
        f = f.to(self.device, torch.float32)
        return [tuple(t.float() for t in self.heads[i].predict(f)) for i in idx]

    @torch.inference_mode()
    def predict_features(self, f: torch.Tensor) -> Prediction:
        """Score layer3 features `[B, C, g, g]` (e.g. from a FeatureCache); always batched.
        One backbone only (the features are one trunk's)."""
        if len(self.branches) > 1:
            raise AmnetError(f"these {len(self.heads)} heads run on {len(self.branches)} "
                             "backbones: one feature map cannot feed them all; use predict_images()")
        return self._combine(self._run_heads(f, self.branches[0][0]))

    @torch.inference_mode()
    def predict_images(self, x: torch.Tensor) -> Prediction:
        """Score normalised images `[B, 3, S, S]`: each distinct trunk runs once, its heads on its
        features; always batched."""
        outs: list[tuple[torch.Tensor, ...]] = [()] * len(self.heads)
        for idx, trunk, _ in self.branches:
            for i, out in zip(idx, self._run_heads(self._trunk_features(trunk, x), idx)):
                outs[i] = out
        return self._combine(outs)

    def _combine(self, outs: list[tuple[torch.Tensor, ...]]) -> Prediction:
        """Per-head (score [B], steps [B, T], attention [B, T, L]), in checkpoint order -> means."""
        scores, steps, atts = zip(*outs)
        per_ck = torch.stack(scores, 1)                                      # [B, K]
        att = torch.stack(atts).mean(0)                                      # [B, T, L]
        att = att.reshape(att.shape[0], att.shape[1], self.grid, self.grid)  # l = y*g + x
        return Prediction(per_ck.mean(1).cpu().numpy(), torch.stack(steps).mean(0).cpu().numpy(),
                          att.cpu().numpy(), per_ck.cpu().numpy())

    def score_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable score of float images `x` `[B, 3, H, W]` (or `[3, H, W]`) in [0, 1], of
        any size -> scores `[B]` (or `[]`) float32 on x's device, with gradients to `x`.

        The same route as `predict` on `normalize(resize(x))`: squash-resized to S x S on the
        tensor (bilinear, antialiased: `amnet.extract.backbone.resize_tensor`), the weights'
        normalisation, the trunk at this Predictor's precision (its bf16 stages only where the
        precision policy put them), the heads in fp32, scores averaged over heads. Any autocast
        the caller runs under is switched off inside: the policy, not the caller's generator,
        decides the score's numerics. Trunk and heads run in eval mode (no dropout, BN running
        stats) on detached parameters: no gradient reaches them, and their `training` and
        `requires_grad` flags are left as they were. The whole batch goes through at once
        (autograd keeps its activations): split big batches yourself.
        """
        if self.trunk is None:
            raise AmnetError("this Predictor was built without a backbone (backbone=False)")
        if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4) or x.shape[-3] != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"score_tensor expects a float tensor [B, 3, H, W] or [3, H, W] in "
                             f"[0, 1], got {got}")
        if not x.is_floating_point():
            raise ValueError(f"score_tensor expects float images in [0, 1], got {x.dtype} "
                             "(divide uint8 pixels by 255)")
        from amnet.extract.backbone import normalize, on_trunk_device, resize_tensor
        single = x.ndim == 3
        dev = self.device
        with torch.autocast(dev.type, enabled=False), _eval_mode([self.trunk, *self.heads]):
            xb = x.unsqueeze(0) if single else x
            xb = resize_tensor(xb.to(dev, torch.float32), self.image_size)
            xb = normalize(xb, self.provenance.mean, self.provenance.std)
            f = _frozen_call(self.trunk, on_trunk_device(self.trunk, xb, dev)).float()
            if self.round_fp16:  # as features(); the cast passes the gradient straight through
                f = f.to(torch.float16).float()
            scores = torch.stack([h.denormalize(_frozen_call(h, f)[0].float())
                                  for h in self.heads], 1).mean(1)             # [B]
        scores = scores.to(x.device)
        return scores[0] if single else scores

    def predict(self, x: Any) -> Prediction:
        """Score a PIL image, an image path, a HxWx3 uint8 array, a preprocessed tensor `[3, S, S]`
        (single result) or `[B, 3, S, S]`, or a list of images/paths (batched result)."""
        batch, single = self._to_batch(x)
        parts = [self.predict_images(batch[i:i + self.batch_size])
                 for i in range(0, len(batch), self.batch_size)]
        out = Prediction(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                           ("score", "step_scores", "attention", "per_checkpoint")))
        return out._single() if single else out

    def precision_caveat(self, cache_attrs: dict | None = None, cache_path: Path | None = None
                         ) -> str | None:
        """A warning line (amnet.core.caveats) when the features scored -- the cache's (its
        attributes), else this predictor's trunk's -- come from a trunk of another precision
        than the one the heads were trained on; None when they agree or it is unrecorded."""
        trained = self.provenance.precision
        head = f"checkpoint {self.checkpoints[0]}"
        if cache_attrs is not None:
            return precision_mismatch(trained, BackboneRecord.from_attrs(cache_attrs).precision,
                                      head, f"the features of cache {cache_path}",
                                      f"a cache extracted with --precision {trained} matches")
        if self.spec is None:
            return None
        return precision_mismatch(trained, getattr(self.spec, "precision", None), head,
                                  "the features of this run",
                                  "--match-cache reproduces the cached path")

    @property
    def checkpoint_labels(self) -> list[str]:
        """Per-checkpoint CSV labels: file stems if unique, else parent folder names, else 1..K."""
        for labels in ([p.stem for p in self.checkpoints], [p.parent.name for p in self.checkpoints]):
            if len(set(labels)) == len(labels) and all(labels):
                return labels
        return [str(i + 1) for i in range(len(self.checkpoints))]
