"""`amnet export`: checkpoints (or a published model) -> one ONNX or TorchScript graph."""
from __future__ import annotations

from pathlib import Path

import click

from amnet.cli._errors import amnet_errors
from amnet.cli._options import one_model_source
from amnet.core.errors import AmnetError

_EXPORT_HELP = """Write the whole model -- frozen backbone plus the head(s), averaged when several
-- to OUT as one ONNX or TorchScript graph that needs neither amnet nor the checkpoints.

Input `images` [B, 3, H, W]: float32 RGB in [0, 1], any size (resized to the backbone's input
size inside, then normalised as the backbone's weights expect). Outputs `score` [B],
`step_scores` [B, T], `attention` [B, T, grid, grid]. The batch size is dynamic. The backbone
record, library versions and the checkpoints' sha256 are stored in the file's metadata.
"""


@click.command("export", help=_EXPORT_HELP)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--checkpoint", "checkpoints", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Head checkpoint (head.pt); repeat to average several (e.g. the 5 splits).")
@click.option("--model", "model_name", default=None,
              help="A published model by name instead of --checkpoint (downloaded and converted "
                   "when needed).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default=None,
              help="[default: from OUT's suffix: .onnx, or .pt/.pth/.ts for torchscript]")
@click.option("--weights", default=None,
              help="Backbone weights to use; must be the checkpoints' (by id, or by sha256 for "
                   "file:PATH, e.g. a local copy of the file it was trained with).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the written file on 2 generated images and compare with torch.")
@amnet_errors
def export_cmd(out, checkpoints, model_name, fmt, weights, check) -> None:
    from amnet.predict.export import export_model

    one_model_source(checkpoints, model_name)
    if model_name:
        checkpoints = _published(model_name)
    result = export_model(list(checkpoints), out, fmt, weights=weights, check=check)
    click.echo(result.summary(), err=True)


def _published(name: str) -> list[Path]:
    """The checkpoints of a published model (amnet.predict.hub, imported only when asked for)."""
    try:
        from amnet.predict.hub import checkpoints_for
    except ModuleNotFoundError as e:
        if e.name not in ("amnet.predict.hub", "amnet.predict", "amnet"):
            raise
        raise AmnetError(f"--model {name}: this amnet has no published-model registry "
                         "(amnet.predict.hub); pass --checkpoint FILE instead") from None
    return list(checkpoints_for(name))
