#!/usr/bin/env python
"""Raise an image's memorability score by Adam steps on its pixels -- regularised, and checked
with an independent predictor -- using `amnet.MemorabilityLoss`.

    python examples/optimise_memorability.py            # offline demo: tiny random heads
    python examples/optimise_memorability.py --checkpoint runs/1/head.pt --image photo.jpg \\
        --independent other/head.pt --steps 20 --out optimised.png

Optimised images game the predictor they were optimised against (images optimised against
ResMem reach 0.9999, resmem issue #3): its score keeps rising while people would not remember
the image any better. So the loss here is `(1 - score) + pixel_weight * mean((x - x0)^2)`, run
for few steps, and the report gives the score of an independent predictor too (another
backbone, other training data or split): only a rise there says more than "the optimiser
found the predictor's blind spots".

Without --checkpoint/--model the demo makes two tiny random heads in --workdir (no network):
one on a `random:0` trunk to optimise against, one on `random:1` as the independent check.
Their scores mean nothing; they show the mechanics offline.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import amnet
from amnet.core.errors import AmnetError

DEMO_SIZE = 64  # the demo heads' input side (grid 4): quick on a CPU


def make_demo_head(path: Path, weights: str, seed: int) -> Path:
    """A random narrow AMNet head for the `weights` trunk at 64 x 64 (fp32), outputs spread
    x20 so that the scores move visibly; reused when `path` exists."""
    if path.is_file():
        return path
    from amnet.core.provenance import BackboneRecord
    from amnet.core.settings import AMNetConfig
    from amnet.extract.backbone import load_backbone
    from amnet.extract.layers import grid_for
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet

    _, spec = load_backbone(weights, "fp32")
    torch.manual_seed(seed)
    head = AMNet(AMNetConfig(grid=grid_for(DEMO_SIZE)[0], feature_dim=32, hidden_dim=32,
                             regressor_dim=16, lstm_steps=3))
    with torch.no_grad():
        head.regnet4.weight.mul_(20.0)
        head.eh3.weight.mul_(20.0)
    prov = BackboneRecord.from_spec(spec, image_size=DEMO_SIZE)
    return save_checkpoint(make_checkpoint(head.eval(), backbone=prov), path)


def load_image(path: str | None, max_side: int) -> torch.Tensor:
    """`[1, 3, H, W]` float in [0, 1]: the image (longest side capped at `max_side`), or a
    generated smooth picture for the demo."""
    if path is None:
        yy, xx = np.mgrid[0:96, 0:128]
        a = np.stack([xx / 128, yy / 96, 0.5 + 0.3 * np.sin(xx / 9) * np.cos(yy / 7)], axis=-1)
        return torch.from_numpy(a).float().permute(2, 0, 1).unsqueeze(0).clamp(0, 1)
    from amnet.extract.image_files import open_image_rgb
    img = open_image_rgb(path)
    img.thumbnail((max_side, max_side))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).unsqueeze(0).float() / 255


def optimise(loss_fn: amnet.MemorabilityLoss, x0: torch.Tensor, steps: int, lr: float,
             pixel_weight: float) -> torch.Tensor:
    """Adam on the pixels of `x0` `[1, 3, H, W]`, kept in [0, 1]; prints one row per step."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    print(f"{'step':>4}  {'loss':>8}  {'score':>7}  {'rms change':>10}")
    for step in range(steps + 1):
        opt.zero_grad()
        memo = loss_fn(x)                                  # 1 - score
        dist = (x - x0).pow(2).mean()
        print(f"{step:>4}  {memo.item() + pixel_weight * dist.item():8.4f}  "
              f"{1 - memo.item():7.4f}  {dist.sqrt().item():10.4f}")
        if step == steps:
            break
        (memo + pixel_weight * dist).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)  # stay a valid image
    return x.detach()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", action="append", metavar="FILE",
                     help="head checkpoint(s) to optimise against (averaged); default: the demo's")
    src.add_argument("--model", metavar="NAME", help="a published model (amnet.predict.hub) instead")
    ap.add_argument("--independent", action="append", metavar="FILE",
                    help="checkpoint(s) of an independent predictor to report (another backbone "
                         "or training set); default in the demo: a head on another trunk")
    ap.add_argument("--image", help="the image to start from (default: a generated picture)")
    ap.add_argument("--max-side", type=int, default=256, help="cap on the image's longest side")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps (few: see above)")
    ap.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (pixel units)")
    ap.add_argument("--pixel-weight", type=float, default=10.0,
                    help="weight of the mean squared pixel change from the start")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--precision", default="fp32", help="fp32 (default) or auto (amnet.core.device)")
    ap.add_argument("--workdir", help="where the demo heads are written (default: a temp dir)")
    ap.add_argument("--out", default="optimised.png", help="PNG of the optimised image")
    args = ap.parse_args(argv)

    try:
        independent = args.independent
        if args.checkpoint or args.model:
            source = args.model or args.checkpoint
        else:
            work = Path(args.workdir or tempfile.mkdtemp(prefix="amnet-demo-"))
            source = [make_demo_head(work / "demo-head.pt", "random:0", seed=1)]
            independent = independent or [make_demo_head(work / "demo-independent.pt",
                                                         "random:1", seed=2)]
            print(f"demo: tiny random heads in {work} (scores mean nothing offline)")
        loss_fn = amnet.MemorabilityLoss(source, device=args.device, precision=args.precision)
        print(loss_fn)
        x0 = load_image(args.image, args.max_side)
        x = optimise(loss_fn, x0, args.steps, args.lr, args.pixel_weight)
        rows = [("optimised against", loss_fn)]
        if independent:
            rows.append(("independent", amnet.MemorabilityLoss(independent, device=args.device,
                                                               precision=args.precision)))
        with torch.no_grad():
            for label, fn in rows:
                before, after = fn.score(x0).item(), fn.score(x).item()
                print(f"{label:<18} {before:.4f} -> {after:.4f} ({after - before:+.4f})")
        if not independent:
            print("no --independent predictor: the score above is the one that was optimised "
                  "against, and it can be gamed")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        pixels = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(out)
        print(f"wrote {out}")
    except AmnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
