"""`amnet models list` and `amnet models download NAME`: the authors' published models (amnet.predict.hub)."""
from __future__ import annotations

import click

from amnet.cli._errors import amnet_errors


@click.group("models")
def models_group() -> None:
    """The authors' published AMNet models (github.com/ok1zjf/AMNet, MIT): list, download.

    Files go under AMNET_HOME (default: the user's cache folder); `amnet predict --model NAME`
    downloads on first use too.
    """


@models_group.command("list")
@amnet_errors
def models_list() -> None:
    """The catalogue: name, data set, backbone, splits, size, downloaded?"""
    from amnet.predict import hub

    rows = [("name", "data set", "backbone", "splits", "size", "downloaded")]
    for e in hub.catalogue():
        backbone = e.backbone + ("" if e.attention else ", no attention")
        dataset = e.dataset + ("" if e.target == "memorability" else f" ({e.target})")
        rows.append((e.name, dataset, backbone, str(e.splits or "?"), e.size or "?",
                     hub.state(e.name)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    click.echo(f"\nsource: {hub.SOURCE_REPO} (data/*_weights_urls.txt, Google Drive), licence "
               f"{hub.LICENCE}; files in {hub.home() / 'models'}")


@models_group.command("download")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Download and convert again (the sha256 recorded at the first download must "
                   "still match).")
@click.option("--trust-pickle", is_flag=True,
              help="Load the .pkl files with full pickle if the safe loader refuses them (only for "
                   "files you trust).")
@amnet_errors
def models_download(name, force, trust_pickle) -> None:
    """Download published model NAME (resumable), check its sha256, convert every split.

    Run again to resume an interrupted download or to re-check the zip's sha256.
    """
    from amnet.predict import hub

    heads = hub.download(name, force=force, trust_pickle=trust_pickle,
                         log=lambda line: click.echo(line, err=True))
    click.echo(f"{name}: {len(heads)} split checkpoints in {heads[0].parent.parent}; "
               f"use `amnet predict --model {name} IMAGES --out scores.csv`")
