"""DVC stage `extract` (stage one): ResNet layer3 features of every image in data/<dataset>/images.txt.

Writes data/features/<dataset>.h5. It extracts into <dataset>.partial.h5 (not a DVC output, so
DVC does not delete it before a re-run) and renames it when complete: a run that crashed or was
killed resumes where it stopped on the next `dvc repro`.
"""
import os
import sys
from pathlib import Path

import yaml

from amnet.datasets import images_root
from amnet.datasets.splits import read_name_list
from amnet.errors import AmnetError, CacheError
from amnet.extract import extract


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    dataset, backbone = params["data"]["dataset"], params["backbone"]
    dataset_dir = Path("data") / dataset
    out = Path("data/features") / f"{dataset}.h5"
    partial = out.with_name(f"{dataset}.partial.h5")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        images = images_root(dataset_dir)  # the folder, or the source a link pointed to
        names = [name for name, _ in read_name_list(dataset_dir / "images.txt")]
        items = [(name, images / name) for name in names]

        def run(overwrite: bool) -> dict:
            return extract(items, partial, weights=backbone["weights"],
                           image_size=backbone["image_size"], flip=backbone["flip"],
                           views=backbone.get("views", 0),
                           device=backbone["device"], batch_size=backbone["batch_size"],
                           workers=backbone["workers"], precision=backbone["precision"],
                           on_error="fail", overwrite=overwrite,
                           progress=True, source=str(dataset_dir))
        try:
            summary = run(overwrite=False)
        except CacheError as e:
            if not partial.exists():
                raise
            # A left-over of a killed run made with other params or images: params.yaml is
            # what the user wants now, so it is replaced rather than resumed.
            print(f"extract: not resuming {partial}: {e}", file=sys.stderr)
            summary = run(overwrite=True)
    except AmnetError as e:
        sys.exit(f"extract: {e}")
    os.replace(partial, out)
    print(f"extract: {summary}")


if __name__ == "__main__":
    main()
