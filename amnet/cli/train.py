"""`amnet train` and `amnet evaluate`: stage two over a feature cache.

Their settings' options come from the dataclasses (amnet/cli/_options.py): every default, help,
choice and range is the one of `TrainConfig` / `AMNetConfig` (amnet.core.settings)."""
from __future__ import annotations

from pathlib import Path

import click

from amnet.cli._errors import amnet_errors
from amnet.cli._options import WAIT, options_from, settings_of
from amnet.core.settings import AMNetConfig, TrainConfig


def _stage2_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", force=True)


def run_train(cache, train_file, val_file, test_file, out, model_config: AMNetConfig,
              cfg: TrainConfig, *, quiet: bool = False, wait: float = 0.0, **paths):
    """Train one split as `amnet train` does, and as the DVC stage train@k does
    (amnet/cli/stages.py): stage two's log on stderr (a line per epoch with its loss, val rho
    and the run's ETA; the bar within an epoch on a terminal; only warnings with `quiet`), then
    `amnet.train.train_split` (`paths`: its checkpoint_path, history_path, ... keywords)."""
    _stage2_logging(quiet)
    from amnet.head.run import train_split

    return train_split(cache, train_file, val_file, test_file, out, model_config, cfg, wait=wait,
                       **paths)


# the feature cache stage two reads (`amnet train`, the DVC stage train@k)
CACHE = click.option("--cache", required=True,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Feature cache (HDF5 from amnet-cache extract).")


@click.command("train")
@CACHE
@click.option("--train", "train_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Train split file.")
@click.option("--val", "val_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Validation split (selects the epoch). Without it (SUN), --holdout of train is used.")
@click.option("--test", "test_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Test split, evaluated once with the chosen epoch.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for head.pt, history.csv, predictions.csv, metrics.json.")
@options_from(TrainConfig, exclude=("progress",))   # progress: -q
@options_from(AMNetConfig, exclude=("trainable_layers",), rename={"use_attention": "--attention"})
@click.option("--trainable-layers", default="", metavar="BLOCKS",
              help="Comma list of trunk blocks trained with the head: layer4.2 (over a cache "
                   "extracted with --layers layer4.1) or layer4.1,layer4.2; empty: frozen trunk.  "
                   "[default: []]")
@click.option("-q", "--quiet", is_flag=True, help="No per-epoch log lines or progress bars.")
@WAIT
@amnet_errors
def train_cmd(cache, train_file, val_file, test_file, out, trainable_layers, quiet, wait,
              **settings) -> None:
    """Train the AMNet head on one split of cached features; evaluate the best epoch on --test."""
    import json

    blocks = [x.strip() for x in trainable_layers.split(",") if x.strip()]
    mc = AMNetConfig(**settings_of(AMNetConfig, settings), trainable_layers=blocks)
    tc = TrainConfig(**settings_of(TrainConfig, settings), progress=False if quiet else None)
    assert not settings, settings
    m = run_train(cache, train_file, val_file, test_file, out, mc, tc, quiet=quiet, wait=wait)
    keys = ("rho", "mse", "n", "best_epoch", "val_rho", "val_mse", "selection", "precision", "views",
            "tta", "skipped_nonfinite", "trainable_layers")
    click.echo(json.dumps({k: m[k] for k in keys if k in m}))


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cache", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Feature cache made with the checkpoint's backbone.")
@click.option("--split", "split_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Split file to score.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json and predictions.csv.")
@options_from(TrainConfig, include=("device", "eval_batch_size", "preload", "precision", "tta",
                                   "on_nonfinite"),
              rename={"eval_batch_size": "--batch-size"}, flags=("tta",))
@amnet_errors
def evaluate_cmd(checkpoint, cache, split_file, out, **settings) -> None:
    """Score a split with a trained head (no training); prints rho, mse and n as JSON."""
    import json

    _stage2_logging(True)
    from amnet.head.evaluation import evaluate

    tc = TrainConfig(**settings_of(TrainConfig, settings))
    m, _ = evaluate(checkpoint, cache, split_file, device=tc.device, batch_size=tc.eval_batch_size,
                    preload=tc.preload, precision=tc.precision, out_dir=out, tta=tc.tta,
                    on_nonfinite=tc.on_nonfinite)
    keys = ("rho", "mse", "n", "best_epoch", "precision", "tta", "tta_views", "skipped_nonfinite")
    click.echo(json.dumps({k: m[k] for k in keys if k in m}))
