"""`amnet train` and `amnet evaluate`: stage two over a feature cache."""
from __future__ import annotations

from pathlib import Path

import click

from amnet.cli._errors import amnet_errors


def _stage2_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", force=True)


@click.command("train")
@click.option("--cache", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Feature cache (HDF5 from amnet-cache extract).")
@click.option("--train", "train_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Train split file.")
@click.option("--val", "val_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Validation split (selects the epoch). Without it (SUN), --holdout of train is used.")
@click.option("--test", "test_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Test split, evaluated once with the chosen epoch.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for head.pt, history.csv, predictions.csv, metrics.json.")
@click.option("--epochs", default=54, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=222, show_default=True, type=click.IntRange(min=1))
@click.option("--eval-batch-size", default=370, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-4, show_default=True, type=float)
@click.option("--weight-decay", default=1e-6, show_default=True, type=float, help="LaMem 1e-6, SUN 1e-4.")
@click.option("--gamma", default=1e-5, show_default=True, type=float, help="Attention-loss weight.")
@click.option("--seed", default=12345, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
              show_default=True, help="Head numerics. auto: bf16 autocast where bf16 is native "
              "(AMX/AVX512-BF16 CPU, CUDA), else fp32.")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Use the cache's flipped features (when it has them) as augmentation.")
@click.option("--views/--no-views", default=True, show_default=True,
              help="Draw one of the cache's crop views (when it has them, --views K at extract) "
              "per image and epoch.")
@click.option("--tta/--no-tta", default=False, show_default=True,
              help="Test: average the predictions over every stored view (and flip).")
@click.option("--preload", type=click.Choice(["auto", "device", "ram", "lazy"]), default="auto",
              show_default=True, help="Hold the features in GPU/CPU memory, or read them lazily.")
@click.option("--workers", default=-1, show_default=True, type=int,
              help="DataLoader workers for lazy reading (-1: min(8, cores)).")
@click.option("--holdout", default=0.1, show_default=True, type=click.FloatRange(0, 0.9),
              help="Without --val: fraction of train held out to select the epoch (0: last epoch).")
@click.option("--lstm-steps", default=3, show_default=True, type=click.IntRange(min=0))
@click.option("--attention/--no-attention", default=True, show_default=True,
              help="--no-attention: the paper's ablation (uniform attention).")
@click.option("--hidden-dim", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option("--feature-dim", default=1024, show_default=True, type=click.IntRange(min=1))
@click.option("--regressor-dim", default=512, show_default=True, type=click.IntRange(min=1))
@click.option("--feature-dropout", default=0.8, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--dropout", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--target-mean", default=0.754, show_default=True, type=float)
@click.option("--target-scale", default=2.0, show_default=True, type=float)
@click.option("-q", "--quiet", is_flag=True, help="No per-epoch log lines or progress bars.")
@amnet_errors
def train_cmd(cache, train_file, val_file, test_file, out, epochs, batch_size, eval_batch_size, lr,
              weight_decay, gamma, seed, device, precision, flip, views, tta, preload, workers,
              holdout, lstm_steps,
              attention, hidden_dim, feature_dim, regressor_dim, feature_dropout, dropout,
              target_mean, target_scale, quiet) -> None:
    """Train the AMNet head on one split of cached features; evaluate the best epoch on --test."""
    import json

    _stage2_logging(quiet)
    from amnet.model import AMNetConfig
    from amnet.train import TrainConfig, train_split

    mc = AMNetConfig(feature_dim=feature_dim, hidden_dim=hidden_dim, regressor_dim=regressor_dim,
                     lstm_steps=lstm_steps, use_attention=attention, feature_dropout=feature_dropout,
                     dropout=dropout, target_mean=target_mean, target_scale=target_scale)
    tc = TrainConfig(epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size, lr=lr,
                     weight_decay=weight_decay, gamma=gamma, seed=seed, device=device, precision=precision,
                     flip=flip, views=views, tta=tta, preload=preload, workers=workers, holdout=holdout,
                     progress=False if quiet else None)
    m = train_split(cache, train_file, val_file, test_file, out, mc, tc)
    keys = ("rho", "mse", "n", "best_epoch", "val_rho", "val_mse", "selection", "precision", "views",
            "tta")
    click.echo(json.dumps({k: m[k] for k in keys if k in m}))


@click.command("evaluate")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cache", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Feature cache made with the checkpoint's backbone.")
@click.option("--split", "split_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Split file to score.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for metrics.json and predictions.csv.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--batch-size", default=370, show_default=True, type=click.IntRange(min=1))
@click.option("--preload", type=click.Choice(["auto", "device", "ram", "lazy"]), default="auto",
              show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
              show_default=True, help="auto: bf16 autocast where bf16 is native, else fp32.")
@click.option("--tta", is_flag=True,
              help="Average the predictions over every view the cache stores (plain, crops, flips).")
@amnet_errors
def evaluate_cmd(checkpoint, cache, split_file, out, device, batch_size, preload, precision,
                 tta) -> None:
    """Score a split with a trained head (no training); prints rho, mse and n as JSON."""
    import json

    _stage2_logging(True)
    from amnet.train import evaluate

    m, _ = evaluate(checkpoint, cache, split_file, device=device, batch_size=batch_size,
                    preload=preload, precision=precision, out_dir=out, tta=tta)
    keys = ("rho", "mse", "n", "best_epoch", "precision", "tta", "tta_views")
    click.echo(json.dumps({k: m[k] for k in keys if k in m}))
