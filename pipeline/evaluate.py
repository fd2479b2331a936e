"""DVC stage `evaluate`: the report of the configured splits: their metrics, mean and sd, curves,
predictions and attention figures.

Usage: python pipeline/evaluate.py --data DIR --cache H5 --models DIR --runs DIR --splits-dir DIR
       --history CSV --predictions CSV --summary JSON --attention DIR   (dvc.yaml passes the
       paths); settings: params.yaml `data.splits`, `evaluate`.

Gathers the run record RUNS/<k>/ of each split k of `data.splits` (amnet/head/gather.py): its metrics
to SPLITS_DIR/<k>.json, its history and test predictions into HISTORY and PREDICTIONS (one CSV
each, a `split` column first). Writes SUMMARY (rho and MSE, mean +- sd over those splits, beside
the human consistency where the data set records it) and ATTENTION/*.png (the first
`evaluate.attention_figures` test images of the first split, scored by MODELS/<k>.pt and drawn
like the paper's Fig. 2). Every output is rebuilt whole, so a split no longer configured leaves
nothing behind.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from amnet.cli.params import load_params
from amnet.core.caveats import small_test
from amnet.core.errors import AmnetError
from amnet.core.metrics import summarize
from amnet.data import images_root, load_prepare_info
from amnet.data.listfiles import read_split, split_path
from amnet.head.gather import gather_runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the prepared data set")
    ap.add_argument("--cache", type=Path, required=True, help="the feature cache (.h5)")
    ap.add_argument("--models", type=Path, required=True, help="folder of <k>.pt checkpoints")
    ap.add_argument("--runs", type=Path, required=True, help="folder of the train stages' <k>/")
    ap.add_argument("--splits-dir", type=Path, required=True, help="folder for <k>.json metrics")
    ap.add_argument("--history", type=Path, required=True, help="the splits' histories (.csv)")
    ap.add_argument("--predictions", type=Path, required=True, help="their predictions (.csv)")
    ap.add_argument("--summary", type=Path, required=True, help="the summary to write (.json)")
    ap.add_argument("--attention", type=Path, required=True, help="folder for the figures")
    ap.add_argument("--params", default="params.yaml", help="the params file [params.yaml]")
    args = ap.parse_args()
    try:
        evaluate(args, load_params(args.params))
    except AmnetError as e:
        sys.exit(f"evaluate: {e}")


def evaluate(args: argparse.Namespace, params) -> None:
    dataset, splits = params.data.dataset, list(params.data.splits)
    per_split = gather_runs(args.runs, splits, splits_dir=args.splits_dir, history=args.history,
                            predictions=args.predictions)
    summary = summarize(per_split, keys=["rho", "mse", "val_rho", "best_epoch"])
    summary["splits"] = splits
    summary["dataset"] = dataset
    summary["backbone"] = per_split[0].get("backbone")
    human = load_prepare_info(args.data).get("human_consistency")
    if human:  # Isola's protocol: rho(hrs1, hrs2) on the same test halves, the ceiling to compare
        summary["human_rho"] = summarize(
            [{"rho": human["per_split"][str(k)]["rho_test_half"]} for k in splits])["rho"]
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"evaluate: {dataset}, {len(splits)} split(s): test rho "
          f"{summary['rho']['mean']:.4f} +- {summary['rho']['sd']:.4f}, mse "
          f"{summary['mse']['mean']:.5f} +- {summary['mse']['sd']:.5f}")
    # the +- above is the spread over splits; each split's own rho is this uncertain too
    sizes = [(r["n"], f"split {k}") for r, k in zip(per_split, splits) if isinstance(r.get("n"), int)]
    small = small_test(*min(sizes)) if sizes else None
    if small:
        print(f"evaluate: {small}", file=sys.stderr)

    shutil.rmtree(args.attention, ignore_errors=True)
    args.attention.mkdir(parents=True)
    k = splits[0]
    draw_attention_figures(args.data, args.cache, args.models / f"{k}.pt", k,
                           params.evaluate.attention_figures, args.attention)


def draw_attention_figures(dataset_dir: Path, cache_path: Path, checkpoint: Path, k: int,
                           count: int, out_dir: Path) -> None:
    """Attention figures of the first `count` test images of split k, scored by `checkpoint`."""
    from amnet.extract.feature_cache import FeatureCache
    from amnet.predict import viz
    from amnet.predict.predictor import Predictor
    from amnet.predict.report import figure_path
    from amnet.predict.scoring import InputItem, predict_cached

    test = read_split(split_path(dataset_dir, "test", k), score_range=None)[:count]
    images = images_root(dataset_dir)
    items = [InputItem(name, images / name, gt) for name, gt in test]
    predictor = Predictor.from_checkpoint(checkpoint, backbone=False)
    used: set[str] = set()
    with FeatureCache(cache_path) as cache:
        for r in predict_cached(predictor, cache, items, keep_images=True, progress=False):
            if r.image is not None:
                viz.save_attention_figure(figure_path(out_dir, r.item.name, used), r.image,
                                          r.attention, r.step_scores, r.score, gt=r.item.gt,
                                          title=f"{r.item.name} (split {k})")


if __name__ == "__main__":
    main()
