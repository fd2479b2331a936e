"""`amnet serve`: the local web demo (amnet/predict/serve.py) on a Predictor from checkpoints or a
published model's name."""
from __future__ import annotations

from pathlib import Path

import click

from amnet.cli._errors import amnet_errors
from amnet.cli._options import one_model_source
from amnet.cli.predict import precision_option

_SERVE_HELP = """Serve a local web page that scores the images dropped on it.

For each image: the score, the per-step scores and the attention figure (paper Fig. 2); a table
sorted by score and a CSV download with `amnet predict`'s columns. The page names the model, its
backbone and training data, and warns when that is the synthetic demo. Bound to 127.0.0.1 (this
machine only) unless --host says otherwise; works offline. Stop it with Ctrl-C.
"""


@click.command("serve", help=_SERVE_HELP)
@click.option("--model", "model_name", metavar="NAME",
              help="A published model (`amnet models list`), e.g. lamem-resnet50.")
@click.option("--checkpoint", "checkpoints", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Head checkpoint (head.pt); repeat to average several (e.g. models/1.pt "
                   "models/2.pt from the demo).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the page to the network.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@precision_option
@amnet_errors
def serve_cmd(model_name, checkpoints, port, host, device, batch_size, precision) -> None:
    one_model_source(checkpoints, model_name)
    from amnet.predict.predictor import Predictor
    from amnet.predict.serve import describe_model, serve

    if model_name:  # downloaded and converted on first use (amnet.predict.hub)
        predictor = Predictor.from_pretrained(model_name, device, batch_size=batch_size,
                                              precision=precision)
    else:
        predictor = Predictor.from_checkpoint(list(checkpoints), device, batch_size=batch_size,
                                              precision=precision)
    card = describe_model(predictor, model_name)
    if card.synthetic:
        click.secho("warning: " + card.warning(), fg="yellow", err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"note: listening on {host}: other machines can reach this page", err=True)
    serve(predictor, card, host=host, port=port, batch_size=batch_size)
