"""`amnet predict`: score images (or cached features) with trained heads; CSV and figures."""
from __future__ import annotations

from pathlib import Path

import click

from amnet.cli._errors import amnet_errors
from amnet.cli._options import one_model_source

# the backbone's numerics when scoring images (also `amnet serve`'s)
precision_option = click.option(
    "--precision", type=click.Choice(["auto", "mixed", "bf16", "fp32"]), default="auto",
    show_default=True, help="Backbone numerics. auto: the fastest within 1e-2 of fp32 "
    "on this CPU class (mixed on AMX/CUDA, bf16 on AVX512-BF16 for random weights), fp32 without "
    "native bf16; fp32: exact fp32 from image to score.")

_PREDICT_HELP = """Score images with one or more trained heads (averaged) and write a CSV.

IMAGES are image files, folders (searched recursively) or list files (.txt, "name [score]" per
line; names are relative to --images-root, else to data/<ds>/images for a data/<ds>/splits file,
else to the list's folder; scores there are ground truth). With --cache, features are read from
the cache by name (all its names, or those of the given list files) and no image is needed.

--model NAME scores with a published model (`amnet models list`; downloaded and converted on
first use), averaging its split heads, each on its own backbone.

CSV columns: path, score, [gt], step_1..step_T, score_<checkpoint>..., error.
"""


@click.command("predict", help=_PREDICT_HELP)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--checkpoint", "checkpoints", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Head checkpoint (head.pt); repeat to average several (e.g. the 5 splits).")
@click.option("--model", "model_name", default=None,
              help="A published model instead of --checkpoint, e.g. lamem-resnet50 (amnet models "
                   "list); its split heads are averaged.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Processes decoding images (worth it with a GPU).")
@click.option("--weights", default=None,
              help="Backbone weights to use; must be the checkpoints' (by id, or by sha256 for "
                   "file:PATH, e.g. a local copy of the file it was trained with).")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="skip: a row with the reason and no score (a bad image, NaN/Inf features); "
                   "fail: stop at the first. No input scored at all exits non-zero either way.")
@click.option("--cache", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Score cached features (HDF5 from amnet-cache extract) instead of images.")
@click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the names of list files / the cache refer to (for figures with --cache).")
@click.option("--attention-maps", type=click.Path(file_okay=False, path_type=Path),
              help="Write one attention figure per image (<name>_att.png) into this folder.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a contact sheet of all images, most to least memorable (PNG).")
@precision_option
@click.option("--match-cache", is_flag=True,
              help="Run the backbone as the checkpoint's cache was made (its precision, features "
              "rounded to float16), so scores equal those of the cached features.")
@amnet_errors
def predict_cmd(images, checkpoints, model_name, out, device, batch_size, workers, weights,
                on_error, cache, images_root, attention_maps, grid, precision, match_cache) -> None:
    from amnet.extract.image_files import left_out_line
    from amnet.predict.predictor import Predictor
    from amnet.predict.report import nothing_scored, summary_line, write_predictions
    from amnet.predict.scoring import LIST_EXTS, InputItem, collect_inputs

    one_model_source(checkpoints, model_name)
    skipped: list[tuple[str, str]] = []

    if cache is not None:
        if any(Path(a).suffix.lower() not in LIST_EXTS for a in images):
            raise click.UsageError("with --cache, IMAGES may only be list files (name [score])")
        if images:
            items = collect_inputs(images, images_root)
        else:
            from amnet.cache.reader import FeatureCache
            fc = FeatureCache(cache)
            names = list(fc.names)
            fc.close()
            items = [InputItem(n, images_root / n if images_root else None) for n in names]
    else:
        if not images:
            raise click.UsageError("give IMAGES (files, folders, list files) or --cache")
        items = collect_inputs(images, images_root, skipped)
    if skipped:
        click.echo(f"warning: {left_out_line('IMAGES', skipped)}", err=True)
    if model_name:
        from amnet.predict.hub import checkpoints_for
        checkpoints = checkpoints_for(model_name)
    predictor = Predictor.from_checkpoint(list(checkpoints), device, weights=weights,
                                          backbone=cache is None, batch_size=batch_size,
                                          precision=precision, match_cache=match_cache)
    if predictor.demo_warning and cache is None:  # real photos are images, not a demo cache
        click.secho(predictor.demo_warning, err=True, fg="yellow")
    if not items:   # the checkpoints are checked first: their errors say more
        raise click.ClickException(nothing_scored({"n": 0}, out))
    counts = write_predictions(predictor, items, out, cache=cache, batch_size=batch_size,
                               workers=workers, on_error=on_error,
                               attention_maps=attention_maps, grid=grid)
    for line in counts["warnings"]:
        click.echo(line, err=True)
    if not counts["scored"]:
        raise click.ClickException(nothing_scored(counts, out))
    click.echo(summary_line(counts, out), err=True)
