"""The DVC stages' commands: `pipeline/<stage>.py` runs the click command of its stage here.

One path per operation: each stage parses its arguments once, here, with the options the CLI
verbs share (`--cache` of `amnet train`, `--wait`), reads its settings from the params file
(amnet/cli/params.py), and calls what the CLI verb calls:

  prepare   amnet.data.prepare_dataset
  extract   amnet.extract.resume.extract_to, as `amnet-cache extract` (via a partial file)
  train@k   `run_train` of `amnet train` (amnet/cli/train.py): the same log and progress
  evaluate  amnet.head.gather / amnet.core.metrics (the report), the figures as `amnet predict` draws them

An error the user can fix is one line led by the stage's name (`train@1: ...`), exit 1; the
paths come from dvc.yaml only (tests/test_config.py checks that no script builds one).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import click

from amnet.cli._errors import amnet_errors
from amnet.cli._options import WAIT
from amnet.cli.train import CACHE

CONTEXT = {"help_option_names": ["-h", "--help"]}

PARAMS = click.option("--params", default="params.yaml", show_default=True,
                      type=click.Path(dir_okay=False, path_type=Path),
                      help="The params file the settings are read from.")


def _path(help_: str, *, folder: bool = False, name: str | None = None) -> Callable:
    decls = [f"--{name}"] if name else []
    return click.option(*decls, required=True, help=help_,
                        type=click.Path(file_okay=not folder, dir_okay=folder, path_type=Path))


class StageError(click.ClickException):
    """A stage's one error line: `<stage>: <message>` (no `Error: `), exit 1."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage

    def show(self, file=None) -> None:
        click.echo(f"{self.stage}: {self.format_message()}", err=True, file=file)


def stage_errors(stage: str) -> Callable:
    """`amnet_errors` with the stage's name leading the line; `stage` is a template of the
    command's parameters (`"train@{split}"`)."""
    def decorate(f: Callable) -> Callable:
        inner = amnet_errors(f)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            try:
                return inner(*args, **kwargs)
            except click.UsageError:
                raise
            except click.ClickException as e:
                err = StageError(stage.format(**kwargs), e.format_message())
                err.exit_code = e.exit_code
                raise err from e
        return wrapper
    return decorate


@click.command("prepare", context_settings=CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@PARAMS
@stage_errors("prepare")
def prepare_stage(out: Path, params: Path) -> None:
    """DVC stage `prepare`: convert the data set named in the params' `data` to OUT."""
    from amnet.cli.params import load_params, prepare_options
    from amnet.data import image_names, prepare_dataset

    p = load_params(params)
    data = p.data
    record = prepare_dataset(data.dataset, out, **prepare_options(data, p.source))
    (out / "images.txt").write_text("".join(f"{n}\n" for n in image_names(out)))
    counts = record["counts"]
    click.echo(f"prepare: {data.dataset} -> {out}, splits "
               + ", ".join(f"{k}: {c['train']}/{c['val']}/{c['test']}" for k, c in counts.items())
               + " (train/val/test)")


@click.command("extract", context_settings=CONTEXT)
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@PARAMS
@WAIT
@stage_errors("extract")
def extract_stage(data: Path, out: Path, params: Path, wait: float) -> None:
    """DVC stage `extract`: features of every image in DATA/images.txt into OUT."""
    from amnet.cli.cache import extract_report
    from amnet.cli.params import extract_options, load_params
    from amnet.data import images_root
    from amnet.data.listfiles import read_name_list
    from amnet.extract.resume import extract_to

    options = extract_options(load_params(params).extract)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = images_root(data)  # the folder, or the source a link pointed to
    items = [(name, images / name) for name, _ in read_name_list(data / "images.txt")]
    # into OUT's partial file, renamed when complete: DVC deletes OUT before it runs the stage
    s = extract_to(items, out, via_partial=True, **options, on_error="fail", progress=True,
                   source=str(data), wait=wait, resume_hint="the next `dvc repro` resumes",
                   note=lambda line: click.echo(f"extract: {line}", err=True))
    for line in extract_report(s):
        click.echo(f"extract: {line}")


@click.command("train", context_settings=CONTEXT)
@click.argument("split", type=int)
@_path("The prepared data set (its splits/).", folder=True, name="data")
@CACHE
@_path("The checkpoint to write (.pt).", name="model")
@_path("Per-epoch history (.csv).", name="history")
@_path("Test predictions (.csv).", name="predictions")
@_path("Test metrics (.json).", name="metrics")
@PARAMS
@WAIT
@stage_errors("train@{split}")
def train_stage(split: int, data: Path, cache: Path, model: Path, history: Path,
                predictions: Path, metrics: Path, params: Path, wait: float) -> None:
    """DVC stage `train@<k>`: train the head on split SPLIT, as `amnet train` does."""
    from amnet.cli.train import run_train
    from amnet.cli.params import load_params
    from amnet.data.listfiles import split_path

    p = load_params(params)
    m = run_train(cache, split_path(data, "train", split), split_path(data, "val", split),
                  split_path(data, "test", split), model.parent, p.model, p.train, wait=wait,
                  checkpoint_path=model, history_path=history, predictions_path=predictions,
                  metrics_path=metrics)
    click.echo(f"train@{split}: test rho {m['rho']:.4f}, mse {m['mse']:.5f} "
               f"(best epoch {m['best_epoch']})")


@click.command("evaluate", context_settings=CONTEXT)
@_path("The prepared data set.", folder=True, name="data")
@CACHE
@_path("Folder of the <k>.pt checkpoints.", folder=True, name="models")
@_path("Folder of the train stages' <k>/ run records.", folder=True, name="runs")
@_path("Folder for each split's <k>.json metrics.", folder=True, name="splits-dir")
@_path("The splits' histories, merged (.csv).", name="history")
@_path("Their test predictions, merged (.csv).", name="predictions")
@_path("The summary to write (.json).", name="summary")
@_path("Folder for the attention figures.", folder=True, name="attention")
@PARAMS
@stage_errors("evaluate")
def evaluate_stage(data: Path, cache: Path, models: Path, runs: Path, splits_dir: Path,
                   history: Path, predictions: Path, summary: Path, attention: Path,
                   params: Path) -> None:
    """DVC stage `evaluate`: the report of the configured splits."""
    import json
    import shutil

    from amnet.core.caveats import small_test
    from amnet.cli.params import load_params
    from amnet.data import load_prepare_info
    from amnet.head.gather import gather_runs, summary_of

    p = load_params(params)
    dataset, splits = p.data.dataset, list(p.data.splits)
    per_split = gather_runs(runs, splits, splits_dir=splits_dir, history=history,
                            predictions=predictions)
    s = summary_of(per_split, splits, load_prepare_info(data).get("human_consistency"))
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(s, indent=2) + "\n")
    click.echo(f"evaluate: {dataset}, {len(splits)} split(s): test rho "
               f"{s['rho']['mean']:.4f} +- {s['rho']['sd']:.4f}, mse "
               f"{s['mse']['mean']:.5f} +- {s['mse']['sd']:.5f}")
    # the +- above is the spread over splits; each split's own rho is this uncertain too
    sizes = [(r["n"], f"split {k}") for r, k in zip(per_split, splits)
             if isinstance(r.get("n"), int)]
    small = small_test(*min(sizes)) if sizes else None
    if small:
        click.echo(f"evaluate: {small}", err=True)

    shutil.rmtree(attention, ignore_errors=True)
    attention.mkdir(parents=True)
    k = splits[0]
    counts = attention_figures(data, cache, models / f"{k}.pt", k, p.evaluate.attention_figures,
                               attention)
    for line in counts["warnings"]:
        click.echo(f"evaluate: {line}", err=True)
    click.echo(f"evaluate: {counts['figures']} attention figures of split {k} -> {attention}")


def attention_figures(dataset_dir: Path, cache_path: Path, checkpoint: Path, k: int,
                      count: int, out_dir: Path) -> dict:
    """The attention figures of the first `count` test images of split k, scored by
    `checkpoint` from the cache, drawn as `amnet predict --cache ... --attention-maps` draws them
    (amnet.predict.report.write_predictions, which first checks that the cache is the kind the
    checkpoint was trained on). Returns its counts."""
    from amnet.data import images_root
    from amnet.data.listfiles import read_split, split_path
    from amnet.predict.predictor import Predictor
    from amnet.predict.report import write_predictions
    from amnet.predict.scoring import InputItem

    test = read_split(split_path(dataset_dir, "test", k), score_range=None)[:count]
    images = images_root(dataset_dir)
    items = [InputItem(name, images / name, gt) for name, gt in test]
    predictor = Predictor.from_checkpoint(checkpoint, backbone=False)
    return write_predictions(predictor, items, None, cache=cache_path, attention_maps=out_dir,
                             progress=False, title_suffix=f" (split {k})")


def run(command: click.Command) -> None:
    """Run a stage's command as `python pipeline/<stage>.py ARGS` (its name in usage lines)."""
    command.main(prog_name=f"pipeline/{Path(sys.argv[0]).name}")
