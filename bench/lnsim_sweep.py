#!/usr/bin/env python
"""Choose an AMNet recipe for LNSIM on validation only: a list of configs over a few splits.

    python bench/lnsim_sweep.py --splits 1-5 --backbone resmem --configs configs/lnsim-sweep.yaml

The configs file is a YAML list of override dicts (or {base: paper|tuned, configs: [...]}):

    base: paper        # paper (bench/lnsim_runs.PAPER, AMNetConfig defaults) or tuned (--config)
    configs:
      - {name: paper}
      - {name: w256_b32, feature_dim: 256, hidden_dim: 256, regressor_dim: 128,
         batch_size: 32, epochs: 30, lr: 3e-4}

Each (config, split) trains on the split's train part and selects its epoch on the val part;
the test half is never read (train_split gets no test file), so no test number exists to
leak. One result.json per config per split under --work/sweep/<backbone>/<name>/ (resumable:
skipped when present with the same settings); the table, sorted by val rho, goes to --out
(default docs/lnsim-sweep.md) with its numbers in the .json next to it. Put the winner in
configs/lnsim.yaml (model:, train:) and run the `amnet-tuned*` rows with bench/lnsim.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import lnsim_data as D  # noqa: E402
import lnsim_runs as M  # noqa: E402

VAL_KEYS = ("val_rho", "val_mse", "best_epoch", "epochs", "seconds", "n_val", "device",
            "target_mean", "fingerprint")



def by_val_rho(row: dict) -> float:
    """Sort key, best mean val rho first; a config with none (no rank in its val part) last. A
    mean of exactly 0 is a rho like any other (not "none", as `or` would read it)."""
    mean = row.get("val_rho", {}).get("mean")
    return float("inf") if mean is None else -mean

def load_sweep(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(base recipe, [{"name": ..., **overrides}, ...]) from the sweep YAML."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    base, configs = ("paper", doc) if isinstance(doc, list) else \
        (str((doc or {}).get("base", "paper")), (doc or {}).get("configs"))
    if base not in ("paper", "tuned") or not isinstance(configs, list) or not configs:
        raise SystemExit(f"{path}: expected a list of configs (or base: paper|tuned, configs:)")
    seen = set()
    for c in configs:
        if not isinstance(c, dict) or not str(c.get("name", "")).strip():
            raise SystemExit(f"{path}: every config needs a name ({c!r})")
        if c["name"] in seen or "/" in str(c["name"]):
            raise SystemExit(f"{path}: config name {c['name']!r} repeated or holds '/'")
        seen.add(c["name"])
    return base, configs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="1-5", help="'1-5', '1,2,3' (default 1-5)")
    ap.add_argument("--backbone", default="resmem", help="one or a comma list")
    ap.add_argument("--configs", type=Path, required=True, help="the sweep YAML")
    ap.add_argument("--config", type=Path, default=D.DEFAULT_CONFIG,
                    help="the tuned recipe (base: tuned) and backbone.views of the cache")
    ap.add_argument("--work", type=Path, default=D.DEFAULT_WORK)
    ap.add_argument("--data", type=Path, default=D.DEFAULT_DATA, help="the LNSIM folder")
    ap.add_argument("--out", type=Path, default=Path("docs/lnsim-sweep.md"))
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--extract-batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-train", action="store_true",
                    help="train nothing: write the table from the runs already done")
    ap.add_argument("--force", action="store_true", help="retrain runs that are done")
    return ap.parse_args(argv)


def summary_rows(per: dict[str, dict[int, dict]], overrides: dict[str, dict]) -> list[dict]:
    """One row per config: its val numbers over splits, best val rho first."""
    from amnet.core.metrics import summarize

    rows = []
    for name, res in per.items():
        rs = [res[k] for k in sorted(res)]
        s = summarize([{f: r[f] for f in ("val_rho", "val_mse", "seconds", "best_epoch")}
                       for r in rs if r.get("val_rho") is not None])
        rows.append({"name": name, "overrides": overrides[name], "splits": sorted(res),
                     "per_split": {str(k): {f: res[k].get(f) for f in VAL_KEYS
                                            if f != "fingerprint"} for k in sorted(res)},
                     **{f: {"mean": v["mean"], "sd": v["sd"], "n": len(v["values"])}
                        for f, v in s.items() if f != "n_splits"}})
    return sorted(rows, key=by_val_rho)


def markdown(rows: list[dict], settings: dict) -> str:
    def ms(s: dict | None, d: int) -> str:
        if not s:
            return "–"
        return f"{s['mean']:.{d}f}" if s["n"] == 1 else f"{s['mean']:.{d}f} ± {s['sd']:.{d}f}"

    lines = ["# LNSIM recipe sweep (validation only)", "",
             f"Written by `{settings['command']}` (do not edit by hand). Each config trains on the "
             "train part of each split and picks its epoch on the val part (132 images on LNSIM); the "
             "test halves are never read. Choose on `val rho`; then put the winner in "
             "configs/lnsim.yaml and run the `amnet-tuned*` rows of bench/lnsim.py.", "",
             f"- backbones: {', '.join(settings['backbones'])}; splits: {settings['splits']}; "
             f"base recipe: {settings['base']}"
             f"{' (' + settings['config'] + ')' if settings['base'] == 'tuned' else ''}; device: {settings['device_name']}; "
             f"precision {settings['precision']}; date {settings['date']}", "",
             "| config | backbone | overrides | val rho | val MSE | best epoch | s / split "
             "| splits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ov = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(base)"
        sec = r.get("seconds", {}).get("mean")
        lines.append(f"| {r['name']} | {r['backbone']} | {ov} | {ms(r.get('val_rho'), 3)} | "
                     f"{ms(r.get('val_mse'), 4)} | {ms(r.get('best_epoch'), 1)} | "
                     f"{'–' if sec is None else f'{sec:.0f}'} | {len(r['splits'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(D.ROOT)
    base, configs = load_sweep(args.configs)
    if not D.have_lnsim(args.data):
        print(f"lnsim_sweep: skipped: LNSIM not found at {args.data.resolve()}", file=sys.stderr)
        return 0
    import logging
    logging.basicConfig(format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("amnet.train").setLevel(logging.INFO)
    from amnet.data.isola_mat import list_images

    D.resolve_device_args(args)
    splits = M.parse_splits(args.splits)
    backbones = [b.strip() for b in args.backbone.split(",") if b.strip()]
    tuned = M.load_tuned(args.config) if args.config.is_file() else None
    if base == "tuned" and tuned is None:
        raise SystemExit(f"{args.configs}: base tuned needs --config ({args.config} not found)")
    recipe_base = "amnet-paper" if base == "paper" else "amnet-tuned"
    work = args.work
    D.prepare(work, args.data, splits)
    names = list_images(work / "data" / "images")
    cpu = D.cpu_info()
    overrides = {str(c["name"]): {k: v for k, v in c.items() if k != "name"} for c in configs}
    settings = {"command": "python bench/lnsim_sweep.py " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv),
                "splits": splits, "backbones": backbones, "base": base, "cpu": cpu,
                "config": str(args.config),
                "device": args.device, "device_name": D.device_label(args.device, cpu),
                "precision": args.precision, "date": time.strftime("%Y-%m-%d")}
    rows: list[dict] = []
    # `cache_views: K` in a config picks the cache with K crop views (default: the recipe's)
    default_views = tuned["views"] if tuned else 0
    cache_views = {name: int(ov.get("cache_views", default_views)) for name, ov in overrides.items()}
    # YAML-typed values, checked by amnet.core.settings in M.recipe (before anything runs)
    recipes = {name: M.recipe(recipe_base, {key: v for key, v in ov.items()
                                            if key != "cache_views"}, tuned)
               for name, ov in overrides.items()}
    # the caches the configs read: (crop views, layer set), e.g. layer3,layer4.1 for a config
    # that trains layer4.2 (`layers: [layer3, layer4.1]`)
    caches = sorted({(cache_views[n], st.get("layers", "layer3")) for n, st in recipes.items()})
    for bb in backbones:
        for views, layers in caches:
            D.ensure_cache(work, bb, names, args, views, layers)
        per: dict[str, dict[int, dict]] = {}
        for k in splits:          # split-major: a stopped sweep has every config on split 1
            for name, ov in overrides.items():
                st = dict(recipes[name])
                if cache_views[name] and "views" not in ov:
                    # a config asking for a cache with crop views trains on them (the paper
                    # base recipe turns `views` off); `views: false` in the config says otherwise
                    st["views"] = True
                if args.no_train and not (work / "sweep" / bb / name / f"split_{k}" /
                                          "result.json").is_file():
                    continue  # --no-train: table what is done
                r = M.run_amnet(work, bb, name, st, k, args, force=args.force, test=False,
                                out_root=work / "sweep" / bb, keep_checkpoint=False,
                                views=cache_views[name])
                per.setdefault(name, {})[k] = {f: r.get(f) for f in VAL_KEYS}
            rows = [r for r in rows if r["backbone"] != bb] + \
                [{**r, "backbone": bb} for r in summary_rows(per, overrides)]
            rows.sort(key=by_val_rho)
            D.write_json(args.out.with_suffix(".json"), {"settings": settings, "configs": rows})
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(markdown(rows, settings))
    D.log(f"done: {args.out}")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
