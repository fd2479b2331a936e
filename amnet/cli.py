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


# ---- amnet: train / evaluate / import-weights -------------------------------------------------


# ---- amnet: predict ---------------------------------------------------------------------------
