"""`amnet-cache extract | merge | info | verify | repair`: stage one's feature cache.

extract's settings options come from `ExtractConfig` (amnet.core.settings; amnet/cli/_options.py):
their defaults, help, choices and ranges are written there only."""
from __future__ import annotations

import click

from amnet.cli._errors import amnet_errors
from amnet.cli._options import WAIT, options_from, settings_of
from amnet.core.errors import ImageError
from amnet.core.settings import ExtractConfig


def _parse_shard(value: str | None) -> tuple[int, int] | str | None:
    if value is None or value == "auto":
        return value
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
@options_from(ExtractConfig, flags=("flip",), auto={"workers": -1})
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A bad image: stop (keeping what was extracted) or record it and go on.")
@click.option("--retry-failed", is_flag=True,
              help="Extract again the images an earlier --on-error skip run recorded as failed.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file made with other settings.")
@click.option("--shard", help="I/N: extract items I, I+N, ... into OUT with {i} (and {n}) filled, "
                              "or, without {i}, into OUT.shard<I>of<N>.h5; auto: RANK/WORLD_SIZE "
                              "of torchrun (0/1 outside it; the default under torchrun).")
@WAIT
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@amnet_errors(messages={ImageError: "{error} (features extracted so far are kept in {out}; "
                                     "rerun to resume, or pass --on-error skip)"})
def cache_extract(images, out, images_root, on_error, retry_failed, overwrite, shard, wait, quiet,
                  **settings) -> None:
    """Extract feature maps (layer3, or the --layers set) of IMAGES (a folder, or a list file
    of `name [score]` lines)."""
    shard_t = _parse_shard(shard)
    from amnet.cli.params import extract_options
    from amnet.extract.image_files import collect_images, left_out_line
    from amnet.extract.resume import extract_to

    skipped: list[tuple[str, str]] = []
    items = collect_images(images, images_root, skipped)
    if skipped:  # a warning, so even with -q
        click.echo(f"warning: {left_out_line(images, skipped)}", err=True)
    options = extract_options(ExtractConfig(**settings_of(ExtractConfig, settings)))  # auto workers
    s = extract_to(items, out, **options, on_error=on_error, overwrite=overwrite, shard=shard_t,
                   progress=not quiet, source=images, retry_failed=retry_failed, wait=wait,
                   note=lambda line: click.echo(f"warning: {line}", err=True))
    if quiet:
        return
    notes = ""
    if shard_t is not None and "{i}" not in out:
        notes += f" (--shard {shard}: --out has no {{i}}, so this shard's file is {s['out']})"
    for line in extract_report(s, notes):
        click.echo(line, err=True)


def extract_report(s: dict, notes: str = "") -> list[str]:
    """The lines `amnet-cache extract` ends with, and so does the DVC stage `extract`, from the
    summary of `amnet.extract.resume.extract_to`: a `note:` on multi-frame files if any, then
    one line naming the file the rows are in (`notes` appended to it)."""
    lines = []
    if s["dropped"]:
        notes += (f" ({s['dropped']} images no longer listed, none extracted, dropped from the "
                  "file; every extracted row kept)")
    if s["retried"]:
        notes += f" (retried {s['retried']} images that had failed)"
    if s["first_frame"]:
        more = ", ..." if s["first_frame"] > len(s["first_frame_notes"]) else ""
        lines.append(f"note: first frame used of {s['first_frame']} multi-frame file(s): "
                     f"{', '.join(s['first_frame_notes'])}{more}")
    if s["complete"] and s["extracted"] == 0 and s["skipped"] == 0:
        return lines + [f"{s['out']}: already complete ({s['already']} images); nothing to "
                        f"do{notes}"]
    return lines + [
        f"{s['out']}: extracted {s['extracted']} images in {s['seconds']:.1f} s "
        f"({s['images_per_s']:.1f} img/s on {s['device']}, precision {s['precision']}, "
        f"{s['threads']} threads, {s['workers']} workers), {s['already']} already there, "
        f"{s['skipped']} skipped now, {s['failed_total']} failed in total; "
        f"{'complete' if s['complete'] else 'INCOMPLETE'}{notes}"]


@click.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--allow-partial", is_flag=True,
              help="Merge shards of a --shard I/N run even if some of the N are missing (OUT "
                   "records which it holds; verify reports it).")
@WAIT
@amnet_errors
def cache_merge(out, shards, overwrite, allow_partial, wait) -> None:
    """Join complete shard files (same settings, disjoint names) into OUT: all N shards of a
    --shard I/N run (in the single run's order), or other caches (concatenated)."""
    from amnet.cache.ops import merge

    s = merge(out, shards, overwrite=overwrite, allow_partial=allow_partial, wait=wait)
    held = ""
    if s["shard_count"] is not None:
        lack = sorted(set(range(s["shard_count"])) - set(s["shards_held"]))
        held = (f" (shards {', '.join(map(str, s['shards_held']))} of {s['shard_count']}"
                + (f"; PARTIAL: shard(s) {', '.join(map(str, lack))} missing)" if lack else ")"))
    click.echo(f"{s['out']}: {s['images']} images from {s['shards']} files{held} "
               f"({s['failed']} failed)", err=True)


@click.command("info")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@amnet_errors
def cache_info(file, as_json) -> None:
    """Print a cache's provenance (backbone, weights, preprocessing, versions) and counts."""
    from amnet.cache.ops import info

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
    from amnet.cache.ops import verify

    problems = verify(file, progress=True)
    if problems:
        for p in problems:
            click.echo(f"{file}: {p}", err=True)
        raise SystemExit(1)
    click.echo(f"{file}: OK")


@click.command("repair")
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--lost", type=click.Choice(["fail", "resume"]), default="fail", show_default=True,
              help="Rows that did not survive: record them as failed (OUT is complete), or leave "
                   "them to extract (`amnet-cache extract IMAGES --out OUT` then does just those).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@WAIT
@amnet_errors
def cache_repair(src, out, lost, overwrite, wait) -> None:
    """Salvage every complete row of a damaged cache IN (truncated, or rows holding NaN/Inf) into
    a new cache OUT with the same names and settings; IN is left as it is."""
    from pathlib import Path

    from amnet.cache.repair import repair

    if Path(out).resolve() == Path(src).resolve():
        raise click.UsageError("OUT must differ from IN: the damaged file stays until you "
                               "delete it")
    s = repair(src, out, lost=lost, overwrite=overwrite, wait=wait)
    how = (f" (truncated: {s['truncated'][0]:,} of {s['truncated'][1]:,} bytes)"
           if s["truncated"] else "")
    line = (f"{s['out']}: saved {s['saved']} of {s['images']} rows of {s['in']}{how}; "
            f"{s['lost']} lost")
    if s["lost"]:
        line += f" ({', '.join(s['lost_names'][:3])}{', ...' if s['lost'] > 3 else ''})"
        line += ", recorded as failed" if lost == "fail" else ""
    if s["pending"]:
        line += (f"; {s['pending']} images left to extract: `amnet-cache extract IMAGES --out "
                 f"{s['out']}` does just those")
    click.echo(line, err=True)
