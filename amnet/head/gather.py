"""The `evaluate` stage's report: gather the run records of the configured splits, and only those.

Each `train@k` stage writes its split's record into a folder of its own, `train/<k>/`
(`metrics.json`, `history.csv`, `predictions.csv`; DVC-cached, not in git). `gather_runs` copies
the records of the splits in `data.splits` into the git-tracked report:

- `<splits_dir>/<k>.json`: the split's numbers a reader compares (`SPLIT_KEYS`: test rho, MSE
  and n, the chosen epoch and its val rho and MSE, the head's precision): `dvc metrics show`
  lists these and the summary (`summary_of`), a dozen columns. The rest of the record
  (provenance: backbone, split files and their hashes, versions, ...) stays in
  `train/<k>/metrics.json`, the train stage's DVC output;
- one history CSV and one predictions CSV for all the splits, each row led by its `split`, so
  `dvc plots show` draws one chart with one line (or point colour) per split.

The report is rebuilt whole on every run (the splits folder is emptied first, as DVC does before
the stage runs): a split dropped from `data.splits` leaves nothing behind, where per-split files
written by the train stages themselves would stay in git and in `dvc metrics show`.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from amnet.core.atomic import atomic_write_text
from amnet.core.errors import AmnetError
from amnet.core.metrics import summarize

RECORD_FILES = ("metrics.json", "history.csv", "predictions.csv")

# what metrics/splits/<k>.json keeps of a split's metrics.json, in this order (those it has)
SPLIT_KEYS = ("rho", "mse", "n", "best_epoch", "val_rho", "val_mse", "precision")


def run_record(runs_dir: Path, k: int) -> dict[str, Path]:
    """The files of split k's run record: {"metrics.json": path, ...} under runs_dir/<k>/.

    Raises AmnetError naming the first missing file and the stage that writes it.
    """
    folder = Path(runs_dir) / str(k)
    files = {name: folder / name for name in RECORD_FILES}
    for path in files.values():
        if not path.is_file():
            raise AmnetError(f"{path} not found: split {k} has not been trained "
                             f"(run `dvc repro train@{k}`)")
    return files


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise AmnetError(f"{path}: empty file, expected a header row (re-run its train stage)")
    return rows[0], rows[1:]


def merge_csvs(paths: dict[int, Path]) -> str:
    """One CSV text of the split CSVs {k: path}, a `split` column first, in the order given.

    The files must share one header (they come from one version of the train stage).
    """
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    header: list[str] | None = None
    first: Path | None = None
    for k, path in paths.items():
        head, rows = _rows(path)
        if header is None:
            header, first = head, path
            w.writerow(["split", *head])
        elif head != header:
            raise AmnetError(f"{path}: columns {head} differ from {first}'s {header}: "
                             f"re-run the train stages with one version of the code")
        w.writerows([k, *r] for r in rows)
    return out.getvalue()


def gather_runs(runs_dir: Path, splits: Sequence[int], *, splits_dir: Path, history: Path,
                predictions: Path) -> list[dict[str, Any]]:
    """Copy the configured splits' run records into the report; return their metrics in order.

    Writes splits_dir/<k>.json (the `SPLIT_KEYS` of each record) for each k in `splits` (after
    emptying splits_dir), `history` and `predictions` (the splits' CSVs merged, see
    `merge_csvs`). Checks every record first, so a missing split leaves the report as it was.
    Returns the whole records.
    """
    if not splits:
        raise AmnetError("data.splits is empty: nothing to evaluate")
    records = {k: run_record(runs_dir, k) for k in splits}
    per_split = []
    for k, files in records.items():
        try:
            per_split.append(json.loads(files["metrics.json"].read_text()))
        except json.JSONDecodeError as e:
            raise AmnetError(f"{files['metrics.json']}: not JSON ({e}); re-run train@{k}") from e
    history_text = merge_csvs({k: f["history.csv"] for k, f in records.items()})
    predictions_text = merge_csvs({k: f["predictions.csv"] for k, f in records.items()})

    splits_dir = Path(splits_dir)
    shutil.rmtree(splits_dir, ignore_errors=True)
    splits_dir.mkdir(parents=True)
    for k, record in zip(records, per_split):
        compared = {key: record[key] for key in SPLIT_KEYS if key in record}
        atomic_write_text(splits_dir / f"{k}.json", json.dumps(compared, indent=2) + "\n")
    for path, text in ((Path(history), history_text), (Path(predictions), predictions_text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return per_split


def summary_of(per_split: Sequence[dict[str, Any]], splits: Sequence[int],
               human: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics/summary.json: what a reader compares between runs, and nothing else --
    `n_splits`, test `rho` and `mse` as mean and sd (and their per-split `values`, lists, which
    `dvc metrics show` leaves out), the `splits`, and `human_rho`, the ceiling, where the data
    set records the human consistency (Isola's protocol: rho(hrs1, hrs2) on the same test
    halves)."""
    summary = summarize(per_split, keys=["rho", "mse"])
    summary["splits"] = list(splits)
    if human:
        summary["human_rho"] = summarize(
            [{"rho": human["per_split"][str(k)]["rho_test_half"]} for k in splits])["rho"]
    return summary
