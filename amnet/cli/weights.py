"""`amnet import-weights`: the authors' released weights -> an amnet head + backbone."""
from __future__ import annotations

from pathlib import Path

import click

from amnet.cli._errors import amnet_errors


@click.command("import-weights")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--lstm-steps", type=click.IntRange(min=0), default=None,
              help="LSTM steps of the model [default: from the path's _lstm<T>, else 3].")
@click.option("--attention/--no-attention", default=None,
              help="Whether it is the no-attention ablation [default: --no-attention if the path has _noatt].")
@click.option("--target-mean", type=float, default=None,
              help="[default: 0.754; 0.538389 for the AVA model]")
@click.option("--target-scale", type=float, default=2.0, show_default=True)
@click.option("--trust-pickle", is_flag=True,
              help="Load with full pickle (only for files you trust) if the safe loader refuses it.")
@amnet_errors
def import_weights_cmd(src, outdir, lstm_steps, attention, target_mean, target_scale, trust_pickle) -> None:
    """Convert the authors' released weights_<e>.pkl into OUTDIR/head.pt + OUTDIR/backbone.pt.

    Extract features with `amnet-cache extract --weights file:OUTDIR/backbone.pt`, then use
    head.pt with `amnet evaluate` / `amnet predict`.
    """
    from amnet.predict.released_weights import import_weights

    rec = import_weights(src, outdir, lstm_steps=lstm_steps, use_attention=attention,
                         target_mean=target_mean, target_scale=target_scale,
                         trust_pickle=trust_pickle)
    cfg = rec["model_config"]
    click.echo(f"{rec['head_file']}: {rec['arch']} head, {cfg['lstm_steps']} steps, "
               f"attention {'on' if cfg['use_attention'] else 'off'}; backbone {rec['backbone_file']} "
               f"(sha256 {rec['backbone']['weights_sha256'][:12]})")
