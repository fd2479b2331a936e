"""DVC stage `evaluate`: mean and sd over the splits' test metrics, and attention figures.

Writes metrics/summary.json (rho and MSE, mean +- sd over the splits of params `data.splits`,
beside the human consistency where the data set records it) and metrics/attention/*.png (the
first `evaluate.attention_figures` test images of the first split, drawn like the paper's Fig. 2).
"""
import json
import shutil
import sys
from pathlib import Path

import yaml

from amnet.datasets import images_root, load_prepare_info
from amnet.datasets.splits import read_split, split_path
from amnet.errors import AmnetError
from amnet.metrics import summarize


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    dataset, splits = params["data"]["dataset"], [int(k) for k in params["data"]["splits"]]
    dataset_dir = Path("data") / dataset
    per_split = [json.loads((Path("metrics/splits") / f"{k}.json").read_text()) for k in splits]
    summary = summarize(per_split, keys=["rho", "mse", "val_rho", "best_epoch"])
    summary["splits"] = splits
    summary["dataset"] = dataset
    summary["backbone"] = per_split[0].get("backbone")
    human = load_prepare_info(dataset_dir).get("human_consistency")
    if human:  # Isola's protocol: rho(hrs1, hrs2) on the same test halves, the ceiling to compare
        summary["human_rho"] = summarize(
            [{"rho": human["per_split"][str(k)]["rho_test_half"]} for k in splits])["rho"]
    Path("metrics/summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"evaluate: {dataset}, {len(splits)} split(s): test rho "
          f"{summary['rho']['mean']:.4f} +- {summary['rho']['sd']:.4f}, mse "
          f"{summary['mse']['mean']:.5f} +- {summary['mse']['sd']:.5f}")

    figures = Path("metrics/attention")
    shutil.rmtree(figures, ignore_errors=True)
    figures.mkdir(parents=True)
    draw_attention_figures(dataset, splits[0], params["evaluate"]["attention_figures"], figures)


def draw_attention_figures(dataset: str, k: int, count: int, out_dir: Path) -> None:
    """Attention figures of the first `count` test images of split k, scored by model k."""
    from amnet import viz
    from amnet.cache import FeatureCache
    from amnet.predict import InputItem, Predictor, figure_path, predict_cached

    dataset_dir = Path("data") / dataset
    test = read_split(split_path(dataset_dir, "test", k), score_range=None)[:count]
    images = images_root(dataset_dir)
    items = [InputItem(name, images / name, gt) for name, gt in test]
    predictor = Predictor.from_checkpoint(Path("models") / f"{k}.pt", backbone=False)
    used: set[str] = set()
    with FeatureCache(Path("data/features") / f"{dataset}.h5") as cache:
        for r in predict_cached(predictor, cache, items, keep_images=True, progress=False):
            if r.image is not None:
                viz.save_attention_figure(figure_path(out_dir, r.item.name, used), r.image,
                                          r.attention, r.step_scores, r.score, gt=r.item.gt,
                                          title=f"{r.item.name} (split {k})")


if __name__ == "__main__":
    try:
        main()
    except AmnetError as e:
        sys.exit(f"evaluate: {e}")
