"""DVC stage `prepare`: convert the data set named in params.yaml `data` to the canonical layout.

Usage: python pipeline/prepare.py OUT_DIR   (dvc.yaml: data/${data.dataset})

Writes OUT_DIR (splits/{train,val,test}_<k>.txt, prepare.json, images or a link to them) and
OUT_DIR/images.txt, the sorted names of every image the splits use: `extract` depends on that
file alone, so re-drawing splits over the same images never re-runs the backbone.
"""
import argparse
import sys
from pathlib import Path

from amnet.cli.params import load_params, prepare_options
from amnet.core.errors import AmnetError
from amnet.data import image_names, prepare_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the prepared data set's folder")
    ap.add_argument("--params", default="params.yaml", help="the params file [params.yaml]")
    args = ap.parse_args()
    try:
        params = load_params(args.params)
        data = params.data
        record = prepare_dataset(data.dataset, args.out, **prepare_options(data, params.source))
        (args.out / "images.txt").write_text("".join(f"{n}\n" for n in image_names(args.out)))
    except AmnetError as e:
        sys.exit(f"prepare: {e}")
    counts = record["counts"]
    print(f"prepare: {data.dataset} -> {args.out}, splits "
          + ", ".join(f"{k}: {c['train']}/{c['val']}/{c['test']}" for k, c in counts.items())
          + " (train/val/test)")


if __name__ == "__main__":
    main()
