"""DVC stage `train@<k>` (stage two): train the AMNet head on split k over the cached features.

Usage: python pipeline/train.py K --data DIR --cache H5 --model PT --history CSV
       --predictions CSV --metrics JSON   (dvc.yaml passes the paths); settings: params.yaml
       `model`, `train` + `train_run`.

Reads DIR/splits/{train,val,test}_K.txt; writes the four files together at the end.

Resumable: after every epoch the training state goes to .train-state/<model>.state beside the
model (not a DVC output, so it survives DVC deleting the stage's outputs before a re-run;
.dvcignore keeps it out of the `models` dependency of `evaluate`). A `dvc repro` killed in this
stage continues on the next one from the last finished epoch, with the same results; the state is
removed once the outputs are written. The run holds the model's writer lock (<model>.lock,
amnet/core/lockfile.py; .dvcignore keeps it out of `models` too): a `dvc repro` started while a
train@k orphaned by a killed `dvc` still runs stops with one line naming it (or waits, `--wait
SECONDS`), instead of training into the same state and files.
"""
import argparse
import sys
from pathlib import Path

from amnet.cli.params import load_params
from amnet.core.errors import AmnetError
from amnet.data.listfiles import split_path
from amnet.head.train import train_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", type=int, help="the split number k")
    ap.add_argument("--data", type=Path, required=True, help="the prepared data set (its splits/)")
    ap.add_argument("--cache", type=Path, required=True, help="the feature cache (.h5)")
    ap.add_argument("--model", type=Path, required=True, help="the checkpoint to write (.pt)")
    ap.add_argument("--history", type=Path, required=True, help="per-epoch history (.csv)")
    ap.add_argument("--predictions", type=Path, required=True, help="test predictions (.csv)")
    ap.add_argument("--metrics", type=Path, required=True, help="test metrics (.json)")
    ap.add_argument("--params", default="params.yaml", help="the params file [params.yaml]")
    ap.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="wait this long for another live process training into --model "
                         "[0: stop at once, naming it]")
    args = ap.parse_args()
    k = args.split
    try:
        params = load_params(args.params)
        metrics = train_split(
            args.cache, split_path(args.data, "train", k), split_path(args.data, "val", k),
            split_path(args.data, "test", k), out_dir=args.model.parent,
            model_config=params.model, cfg=params.train, checkpoint_path=args.model,
            history_path=args.history, predictions_path=args.predictions,
            metrics_path=args.metrics, wait=args.wait)
    except AmnetError as e:
        sys.exit(f"train@{k}: {e}")
    print(f"train@{k}: test rho {metrics['rho']:.4f}, mse {metrics['mse']:.5f} "
          f"(best epoch {metrics['best_epoch']})")


if __name__ == "__main__":
    main()
