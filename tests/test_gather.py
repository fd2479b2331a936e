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


def test_split_files_keep_what_a_reader_compares_and_the_record_keeps_the_rest(tmp_path):
    """issue 19: `dvc metrics show` printed ~50 columns (each split's whole record: backbone,
    split files and hashes, versions, ...). metrics/splits/<k>.json keeps SPLIT_KEYS; the whole
    record stays in train/<k>/metrics.json and is what gather_runs returns."""
    from amnet.head.gather import SPLIT_KEYS
    record(tmp_path / "train", 1, 0.5)
    full = {"rho": 0.5, "mse": 0.01, "n": 400, "best_epoch": 10, "val_rho": 0.4,
            "val_mse": 0.02, "n_train": 1400, "selection": "val", "precision": "bf16",
            "backbone": {"arch": "resnet50", "weights_sha256": "ab" * 32},
            "splits": {"test": {"path": "t.txt", "sha256": "cd" * 32}}, "versions": {"torch": "x"}}
    (tmp_path / "train" / "1" / "metrics.json").write_text(json.dumps(full, indent=2) + "\n")
    (per_split,) = gather(tmp_path, [1])
    assert per_split == full
    shown = json.loads((tmp_path / "metrics" / "splits" / "1.json").read_text())
    assert list(shown) == list(SPLIT_KEYS)
    assert shown == {k: full[k] for k in SPLIT_KEYS}


def test_summary_holds_rho_and_mse_over_the_splits_only():
    from amnet.head.gather import summary_of
    per = [{"rho": 0.5, "mse": 0.01, "val_rho": 0.4, "best_epoch": 3, "backbone": {"a": 1}},
           {"rho": 0.7, "mse": 0.03, "val_rho": 0.6, "best_epoch": 5, "backbone": {"a": 1}}]
    s = summary_of(per, [1, 2])
    assert list(s) == ["n_splits", "rho", "mse", "splits"]
    assert s["n_splits"] == 2 and s["splits"] == [1, 2]
    assert s["rho"]["mean"] == pytest.approx(0.6) and s["rho"]["values"] == [0.5, 0.7]
    assert s["mse"]["sd"] == pytest.approx(0.02 / 2 ** 0.5)
    human = {"per_split": {"1": {"rho_test_half": 0.68}, "2": {"rho_test_half": 0.70}}}
    assert summary_of(per, [1, 2], human)["human_rho"]["mean"] == pytest.approx(0.69)
