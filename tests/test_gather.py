"""amnet.head.gather: the evaluate stage's report holds the configured splits' run records, only them."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from amnet.core.errors import AmnetError
from amnet.head.gather import gather_runs, merge_csvs


def record(runs: Path, k: int, rho: float, epochs: int = 2, header: str = "epoch,val_rho") -> None:
    """train/<k>/ as train@k writes it: metrics.json, history.csv, predictions.csv."""
    d = runs / str(k)
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"rho": rho, "mse": 0.01 * k}, indent=2) + "\n")
    (d / "history.csv").write_text(header + "\n" + "".join(
        f"{e},{rho * e / epochs}\n" for e in range(1, epochs + 1)))
    (d / "predictions.csv").write_text(f"name,gt,pred\n{k}a.jpg,0.5,0.6\n{k}b.jpg,0.7,0.65\n")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def gather(tmp_path: Path, splits: list[int]) -> list[dict]:
    m = tmp_path / "metrics"
    return gather_runs(tmp_path / "train", splits, splits_dir=m / "splits",
                       history=m / "history.csv", predictions=m / "predictions.csv")


def test_report_holds_the_configured_splits_in_their_order(tmp_path):
    for k, rho in ((1, 0.5), (2, 0.25), (3, 0.75)):
        record(tmp_path / "train", k, rho)
    per_split = gather(tmp_path, [3, 1])
    assert [m["rho"] for m in per_split] == [0.75, 0.5]
    m = tmp_path / "metrics"
    assert sorted(p.name for p in (m / "splits").iterdir()) == ["1.json", "3.json"]
    assert (m / "splits" / "3.json").read_bytes() == (tmp_path / "train/3/metrics.json").read_bytes()
    assert (m / "history.csv").read_text() == (
        "split,epoch,val_rho\n3,1,0.375\n3,2,0.75\n1,1,0.25\n1,2,0.5\n")
    assert [(r["split"], r["name"]) for r in rows(m / "predictions.csv")] == [
        ("3", "3a.jpg"), ("3", "3b.jpg"), ("1", "1a.jpg"), ("1", "1b.jpg")]


def test_a_split_no_longer_configured_leaves_nothing(tmp_path):
    for k in (1, 2, 3):
        record(tmp_path / "train", k, 0.1 * k)
    gather(tmp_path, [1, 2, 3])
    (tmp_path / "metrics" / "splits" / "stray.json").write_text("{}")   # not ours either
    gather(tmp_path, [1, 2])
    m = tmp_path / "metrics"
    assert sorted(p.name for p in (m / "splits").iterdir()) == ["1.json", "2.json"]
    assert {r["split"] for r in rows(m / "history.csv")} == {"1", "2"}
    assert {r["split"] for r in rows(m / "predictions.csv")} == {"1", "2"}


def test_a_missing_record_is_one_line_and_the_report_is_kept(tmp_path):
    record(tmp_path / "train", 1, 0.5)
    gather(tmp_path, [1])
    before = {p: p.read_bytes() for p in (tmp_path / "metrics").rglob("*") if p.is_file()}
    with pytest.raises(AmnetError) as e:
        gather(tmp_path, [1, 4])
    assert str(e.value) == (f"{tmp_path / 'train' / '4' / 'metrics.json'} not found: split 4 has "
                            "not been trained (run `dvc repro train@4`)")
    assert {p: p.read_bytes() for p in (tmp_path / "metrics").rglob("*") if p.is_file()} == before


def test_records_of_two_code_versions_are_refused(tmp_path):
    record(tmp_path / "train", 1, 0.5)
    record(tmp_path / "train", 2, 0.5, header="epoch,val_rho_new")
    with pytest.raises(AmnetError, match=r"history.csv: columns \['epoch', 'val_rho_new'\] "
                                         r"differ from .*history.csv's \['epoch', 'val_rho'\]"):
        gather(tmp_path, [1, 2])
    assert not (tmp_path / "metrics").exists()


def test_no_splits_is_an_error(tmp_path):
    with pytest.raises(AmnetError, match="data.splits is empty: nothing to evaluate"):
        gather(tmp_path, [])


def test_merge_of_an_empty_file_names_it(tmp_path):
    (tmp_path / "h.csv").write_text("")
    with pytest.raises(AmnetError, match="h.csv: empty file, expected a header row"):
        merge_csvs({1: tmp_path / "h.csv"})
