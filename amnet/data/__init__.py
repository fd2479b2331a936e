"""Data sets: converters from each source layout to the canonical one, and the split-file format.

Canonical layout (what `prepare` writes and every later stage reads):

    data/<dataset>/images/                     the images, or a symlink to an external folder
    data/<dataset>/splits/{train,val,test}_<k>.txt   "<name> <score>" per line (LaMem format)
    data/<dataset>/prepare.json                kind, source, seed, options, counts, versions

Kinds (`prepare_dataset(kind, out_dir, **options)`): `lamem`, `sun`, `isola-mat`, `csv`, `demo`;
see each module's `convert` for its options. Every kind also takes `score_range` ([low, high],
default [0, 1]; null disables the check).

External images (lamem, sun, isola-mat, csv) are linked, not copied, by default: `images` is
one absolute symlink to the source folder (`link="symlink"`), which the name checks resolve
before checking for escapes; `link="hardlink"` or `"copy"` makes real files instead.

Nothing already built is deleted on failure: converters write into a staging folder that
replaces `out_dir` only after every split has been written and checked.
"""
from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

from amnet.core.errors import AmnetError, SplitError
from amnet.data.listfiles import PARTS, RootChecker, read_split, split_path

__all__ = ["prepare_dataset", "kind_options", "load_prepare_info", "images_root", "read_dataset_split",
           "available_splits", "KINDS"]

# kind -> module holding `convert(stage: Path, **options) -> dict`
KINDS = {"lamem": "amnet.data.lamem", "sun": "amnet.data.sun",
         "isola-mat": "amnet.data.isola_mat", "csv": "amnet.data.csv_source",
         "demo": "amnet.data.demo"}
INFO_FILE = "prepare.json"


def _converter(kind: str):
    key = kind.strip().lower().replace("_", "-")
    if key not in KINDS:
        raise AmnetError(f"unknown data set kind {kind!r}; choose one of {', '.join(KINDS)}")
    return key, importlib.import_module(KINDS[key]).convert


def kind_options(kind: str) -> dict[str, Any]:
    """The options `prepare_dataset(kind, ...)` accepts and their defaults (required: `...`)."""
    _, convert = _converter(kind)
    return {name: (... if p.default is inspect.Parameter.empty else p.default)
            for name, p in inspect.signature(convert).parameters.items() if name != "stage"}


def _check_staged(stage: Path, ks: list[int], score_range) -> dict[str, dict[str, Any]]:
    """Re-read every written split: format, range, images present, parts disjoint, none empty."""
    checker = RootChecker(stage / "images")
    counts: dict[str, dict[str, Any]] = {}
    for k in ks:
        seen: dict[str, str] = {}
        entry: dict[str, Any] = {}
        for part in PARTS:
            path = split_path(stage, part, k)
            if not path.is_file():
                raise SplitError(f"split {k}: {part}_{k}.txt was not written")
            items = read_split(path, score_range=score_range, images_root=checker)
            for name, _ in items:
                if name in seen:
                    raise SplitError(f"split {k}: image {name!r} is in both {seen[name]} and "
                                     f"{part}; train, val and test must be disjoint")
                seen[name] = part
            entry[part] = len(items)
            if part == "train":
                entry["train_mean"] = round(sum(s for _, s in items) / len(items), 6)
        counts[str(k)] = entry
    return counts


def prepare_dataset(kind: str, out_dir: str | Path, **options: Any) -> dict:
    """Convert a source to the canonical layout in `out_dir` and return what prepare.json holds.

    Raises AmnetError (one line) on bad input or options; `out_dir` is then left as it was.
    """
    from amnet.data import build

    key, convert = _converter(kind)
    params = inspect.signature(convert).parameters
    accepted = [p for p in params if p != "stage"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise AmnetError(f"unknown option(s) {', '.join(unknown)} for data set kind {key!r}; "
                         f"accepted: {', '.join(accepted)}")
    required = [p for p in accepted if params[p].default is inspect.Parameter.empty
                and options.get(p) is None]
    if required:
        raise AmnetError(f"data set kind {key!r} needs option(s) {', '.join(required)}")
    score_range = build.parse_score_range(options.get("score_range",
                                                      params["score_range"].default))
    options["score_range"] = score_range
    out_dir = Path(out_dir)
    stage = build.new_stage(out_dir)
    try:
        info = convert(stage, **options)
        extra_versions = info.pop("_versions", ())  # modules the converter used (e.g. scipy)
        try:
            counts = _check_staged(stage, info["splits"], score_range)
        except SplitError as e:  # name the final place, not the staging folder we delete
            raise SplitError(str(e).replace(str(stage), str(out_dir))) from None
        record = {"kind": key, **info, "score_range": list(score_range) if score_range else None,
                  "counts": counts, "versions": build.versions(*extra_versions)}
        # Deterministic bytes (sorted keys, no timestamps) so a re-run with the same inputs
        # leaves DVC's hash of the output unchanged.
        (stage / INFO_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        build.commit(stage, out_dir)
    except BaseException:
        build.discard_stage(stage)
        raise
    return record


def load_prepare_info(dataset_dir: str | Path) -> dict:
    """The prepare.json of a prepared data set (AmnetError when missing or damaged)."""
    path = Path(dataset_dir) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AmnetError(f"{path} not found: run the prepare stage for this data set first") \
            from None
    except (OSError, ValueError) as e:
        raise AmnetError(f"{path}: cannot read ({e}); run prepare again") from None


def available_splits(dataset_dir: str | Path) -> list[int]:
    """Split numbers k for which train_k.txt exists in `dataset_dir/splits`."""
    ks = []
    for p in (Path(dataset_dir) / "splits").glob("train_*.txt"):
        tail = p.stem.split("_", 1)[1]
        if tail.isdigit():
            ks.append(int(tail))
    return sorted(ks)


def images_root(dataset_dir: str | Path) -> Path:
    """Where a prepared data set's images are: `<dataset_dir>/images`, or, when that link is
    missing, the `images_source` recorded in prepare.json.

    Why the fallback: DVC does not store a symlink inside an output folder (measured with dvc
    3.67: `images -> /ext` is left out of the .dir hash), so after `dvc checkout` of a fresh
    clone the link is gone while the stage counts as up to date.
    """
    dataset_dir = Path(dataset_dir)
    local = dataset_dir / "images"
    if local.is_dir():
        return local
    source = load_prepare_info(dataset_dir).get("images_source")
    if source and Path(source).is_dir():
        return Path(source)
    raise AmnetError(f"{local} not found{f' (nor {source})' if source else ''}: "
                     "run the prepare stage again (dvc repro -f prepare)")


def image_names(dataset_dir: str | Path) -> list[str]:
    """Every image named by a prepared data set's split files, sorted: what stage one extracts
    (it needs the names only, never the scores)."""
    names: set[str] = set()
    for k in load_prepare_info(dataset_dir)["splits"]:
        for part in PARTS:
            path = split_path(dataset_dir, part, int(k))
            if path.is_file():
                names.update(name for name, _ in read_split(path, score_range=None))
    return sorted(names)


def read_dataset_split(dataset_dir: str | Path, part: str, k: int, *,
                       check_images: bool = True) -> list[tuple[str, float]]:
    """Read `part` of split `k` of a prepared data set with the score range it declared."""
    info = load_prepare_info(dataset_dir)
    score_range = info.get("score_range")
    return read_split(split_path(dataset_dir, part, k),
                      score_range=tuple(score_range) if score_range else None,
                      images_root=images_root(dataset_dir) if check_images else None)
