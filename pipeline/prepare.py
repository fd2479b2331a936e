"""DVC stage `prepare`: convert the data set named in params.yaml `data` to the canonical layout.

Writes data/<dataset>/ (splits/{train,val,test}_<k>.txt, prepare.json, images or a link to them)
and data/<dataset>/images.txt, the sorted names of every image the splits use: `extract` depends
on that file alone, so re-drawing splits over the same images never re-runs the backbone.
"""
import sys
from pathlib import Path

import yaml

from amnet.datasets import image_names, prepare_dataset
from amnet.errors import AmnetError


def options_for(data: dict) -> dict:
    """Map the `data` params section onto the options of the chosen data set kind."""
    kind, protocol, splits = data["dataset"], data["protocol"], data["splits"]
    if kind == "demo":
        demo = data["demo"]
        val, test = protocol["val_fraction"], protocol["test_fraction"]
        return dict(n_images=demo["n_images"], image_size=demo["image_size"], splits=splits,
                    fractions=(1 - val - test, val, test), seed=protocol["seed"])
    if not data.get("root"):
        raise AmnetError(f"params.yaml data.root is empty: data set {kind!r} needs its source "
                         f"folder (or CSV file); see README, 'Other data sets'")
    if kind == "csv":
        val, test = protocol["val_fraction"], protocol["test_fraction"]
        return dict(path=data["root"], splits=splits, fractions=(1 - val - test, val, test),
                    seed=protocol["seed"])
    options = dict(root=data["root"], splits=splits, val_fraction=protocol["val_fraction"],
                   seed=protocol["seed"])
    if kind == "lamem":
        options["download"] = bool(data.get("download", False))
    return options


def main() -> None:
    data = yaml.safe_load(Path("params.yaml").read_text())["data"]
    out = Path("data") / data["dataset"]
    try:
        record = prepare_dataset(data["dataset"], out, **options_for(data))
        (out / "images.txt").write_text("".join(f"{n}\n" for n in image_names(out)))
    except AmnetError as e:
        sys.exit(f"prepare: {e}")
    counts = record["counts"]
    print(f"prepare: {data['dataset']} -> {out}, splits "
          + ", ".join(f"{k}: {c['train']}/{c['val']}/{c['test']}" for k, c in counts.items())
          + " (train/val/test)")


if __name__ == "__main__":
    main()
