"""The canonical layout's split files: `<dataset>/splits/{train,val,test}_<k>.txt`.

The file format and its readers/writer live in `amnet.data.listfiles` (a bottom-layer module that
stage one and stage two use too); they are re-exported here under their historical names.
"""
from __future__ import annotations

from pathlib import Path

from amnet.data.listfiles import (RootChecker, check_name, normalize_name,  # noqa: F401
                             read_name_list, read_split, write_split)

PARTS = ("train", "val", "test")

__all__ = ["PARTS", "split_path", "RootChecker", "check_name", "normalize_name", "read_name_list",
           "read_split", "write_split"]


def split_path(dataset_dir: str | Path, part: str, k: int) -> Path:
    """`<dataset_dir>/splits/<part>_<k>.txt` (part in train/val/test, k counted from 1)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    return Path(dataset_dir) / "splits" / f"{part}_{int(k)}.txt"
