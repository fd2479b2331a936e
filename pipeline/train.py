"""DVC stage `train@<k>` (stage two): train the AMNet head on split k over the cached features.

Usage: python pipeline/train.py K. Writes models/<k>.pt, metrics/history/<k>.csv,
metrics/predictions/<k>.csv and metrics/splits/<k>.json, together at the end.

Resumable: after every epoch the training state goes to models/.train-state/<k>.pt.state (not a
DVC output, so it survives DVC deleting the stage's outputs before a re-run; .dvcignore keeps it
out of the `models` dependency of `evaluate`). A `dvc repro` killed in this stage continues on
the next one from the last finished epoch, with the same results; the state is removed once the
outputs are written.
"""
import sys
from pathlib import Path

import yaml

from amnet.datasets.splits import split_path
from amnet.errors import AmnetError
from amnet.model import AMNetConfig
from amnet.train import TrainConfig, train_split


def main(k: int) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    dataset = params["data"]["dataset"]
    dataset_dir = Path("data") / dataset
    try:
        metrics = train_split(
            Path("data/features") / f"{dataset}.h5",
            split_path(dataset_dir, "train", k), split_path(dataset_dir, "val", k),
            split_path(dataset_dir, "test", k), out_dir=Path("models"),
            model_config=AMNetConfig(**params["model"]), cfg=TrainConfig(**params["train"]),
            checkpoint_path=Path("models") / f"{k}.pt",
            history_path=Path("metrics/history") / f"{k}.csv",
            predictions_path=Path("metrics/predictions") / f"{k}.csv",
            metrics_path=Path("metrics/splits") / f"{k}.json")
    except AmnetError as e:
        sys.exit(f"train@{k}: {e}")
    print(f"train@{k}: test rho {metrics['rho']:.4f}, mse {metrics['mse']:.5f} "
          f"(best epoch {metrics['best_epoch']})")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python pipeline/train.py SPLIT_NUMBER")
    main(int(sys.argv[1]))
