"""DVC stage `prepare`: convert the data set named in params.yaml `data` to the canonical layout.

Usage: python pipeline/prepare.py OUT_DIR   (dvc.yaml: data/${data.dataset})

Writes OUT_DIR (splits/{train,val,test}_<k>.txt, prepare.json, images or a link to them) and
OUT_DIR/images.txt, the sorted names of every image the splits use: `extract` depends on that
file alone, so re-drawing splits over the same images never re-runs the backbone.

The arguments are parsed, and the work done, by `prepare_stage` in amnet/cli/stages.py (one
place per operation; prepare has no CLI verb of its own); `python pipeline/prepare.py --help`
lists them.
"""

from amnet.cli.stages import prepare_stage, run

if __name__ == "__main__":
    run(prepare_stage)
