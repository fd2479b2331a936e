"""DVC stage `extract` (stage one): ResNet layer3 features of every image in DATA/images.txt.

Usage: python pipeline/extract.py DATA OUT   (dvc.yaml: data/${data.dataset}
       data/features/${data.dataset}.h5); settings: params.yaml `backbone` + `extract_run`.

Writes OUT. It extracts into OUT's <stem>.partial.h5 (not a DVC output, so DVC does not delete it
before a re-run) and renames it when complete: a run that crashed or was killed resumes where it
stopped on the next `dvc repro`. The partial file's writer lock (amnet/core/lockfile.py) is held from
the first write to the rename, so a run left over by a killed `dvc` is never disturbed: the next
run stops with one line naming it (or waits, `--wait SECONDS`). A partial file that is damaged
(truncated) keeps every row that can be salvaged (amnet.extract.cache_repair) before it resumes.
"""
import argparse
import os
import sys
from pathlib import Path

from amnet.cli.params import extract_options, load_params
from amnet.core.errors import AmnetError, CacheError, DamagedCacheError
from amnet.core.lockfile import hold
from amnet.data import images_root
from amnet.data.listfiles import read_name_list
from amnet.extract.cache_repair import repair
from amnet.extract.run import extract


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the prepared data set (its images.txt and images)")
    ap.add_argument("out", type=Path, help="the feature cache to write (.h5)")
    ap.add_argument("--params", default="params.yaml", help="the params file [params.yaml]")
    ap.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="wait this long for another live process writing the partial file "
                         "[0: stop at once, naming it]")
    args = ap.parse_args()
    out = args.out
    partial = out.with_name(f"{out.stem}.partial{out.suffix}")
    try:
        options = extract_options(load_params(args.params).extract)
        out.parent.mkdir(parents=True, exist_ok=True)
        images = images_root(args.data)  # the folder, or the source a link pointed to
        items = [(name, images / name) for name, _ in read_name_list(args.data / "images.txt")]

        def run(overwrite: bool) -> dict:
            return extract(items, partial, **options, on_error="fail", overwrite=overwrite,
                           progress=True, source=str(args.data))
        # The partial file's writer lock, held to the final rename: a run whose `dvc` was killed
        # goes on as an orphan; the next `dvc repro` must neither resume, replace nor rename
        # the file it writes (it waits for it or stops with one line naming it).
        with hold(partial, args.wait) as lock:
            try:
                try:
                    summary = run(overwrite=False)
                except DamagedCacheError as e:
                    # truncated or corrupt (a full disk, a crash of the machine): keep every
                    # complete row (amnet-cache repair), then resume; the rest is redone
                    print(f"extract: {e}; salvaging its complete rows", file=sys.stderr)
                    s = repair(partial, partial, lost="resume", overwrite=True)
                    print(f"extract: kept {s['saved']} of {s['images']} rows of {partial}",
                          file=sys.stderr)
                    summary = run(overwrite=False)
            except CacheError as e:
                if not partial.exists():
                    raise
                # A left-over of a killed run made with other params or images (no process
                # holds it: we hold its lock): params.yaml is what the user wants now, so it is
                # replaced rather than resumed.
                print(f"extract: not resuming {partial}: {e}", file=sys.stderr)
                summary = run(overwrite=True)
            lock.check()  # still ours: never rename a file another process now writes
            os.replace(partial, out)
    except AmnetError as e:
        sys.exit(f"extract: {e}")
    print(f"extract: {summary}")


if __name__ == "__main__":
    main()
