"""Click entry points: `amnet-cache` (stage one) and `amnet` (stage two, predict, serve).

Thin: parse arguments, call the library; one module per command group (`cache`: extract, merge,
info, verify, repair; `train`: train, evaluate; `predict`; `serve`: the local web demo; `weights`:
import-weights; `models`: the published models: list, download; `export`). Heavy imports stay
inside the commands so `--help` is instant. Options that are settings are generated from the
settings dataclasses (amnet/cli/_options.py), so their defaults are written there only. Errors
the user can fix (`AmnetError`) become one line and exit 1 through one decorator,
`amnet_errors` (amnet/cli/_errors.py).
"""
from __future__ import annotations

import click

from amnet.cli import cache, export, models, predict, serve, train, weights


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="amnet")
def cache_cli() -> None:
    """Stage one: extract a frozen ResNet's feature maps into an HDF5 cache (layer3, the
    paper's, by default; `extract --layers` for layer4 or layer3,layer4)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="amnet")
def main() -> None:
    """Stage two and use: train/evaluate the AMNet head, import published weights, predict,
    the published models, export, the local web demo (serve)."""


for _command in (cache.cache_extract, cache.cache_merge, cache.cache_info, cache.cache_verify,
                 cache.cache_repair):
    cache_cli.add_command(_command)
for _command in (train.train_cmd, train.evaluate_cmd, weights.import_weights_cmd,
                 predict.predict_cmd, models.models_group, export.export_cmd, serve.serve_cmd):
    main.add_command(_command)
