"""The `evaluate` stage's report: gather the run records of the configured splits, and only those.

Each `train@k` stage writes its split's record into a folder of its own, `train/<k>/`
(`metrics.json`, `history.csv`, `predictions.csv`; DVC-cached, not in git). `gather_runs` copies
the records of the splits in `data.splits` into the git-tracked report:

- `<splits_dir>/<k>.json`: the split's test metrics, byte for byte (`dvc metrics show` lists
  these and the summary);
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

from amnet.core.atomic import atomic_write_bytes, atomic_write_text
from amnet.core.errors import AmnetError

RECORD_FILES = ("metrics.json", "history.csv", "predictions.csv")


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

    Writes splits_dir/<k>.json for each k in `splits` (after emptying splits_dir), `history`
    and `predictions` (the splits' CSVs merged, see `merge_csvs`). Checks every record first, so
    a missing split leaves the report as it was.
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
    for k, files in records.items():
        atomic_write_bytes(splits_dir / f"{k}.json", files["metrics.json"].read_bytes())
    for path, text in ((Path(history), history_text), (Path(predictions), predictions_text)):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return per_split
