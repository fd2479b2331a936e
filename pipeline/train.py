"""DVC stage `train@<k>` (stage two): train the AMNet head on split k over the cached features.

Usage: python pipeline/train.py K --data DIR --cache H5 --model PT --history CSV
       --predictions CSV --metrics JSON   (dvc.yaml passes the paths); settings: params.yaml
       `model`, `train` + `train_run`.

Reads DIR/splits/{train,val,test}_K.txt; writes the four files together at the end.

Resumable: after every epoch the training state goes to .train-state/<model>.state beside the
model (not a DVC output, so it survives DVC deleting the stage's outputs before a re-run;
.dvcignore keeps it out of the `models` dependency of `evaluate`). A `dvc repro` killed in this
stage continues on the next one from the last finished epoch, with the same results; the state is
removed once the outputs are written. The run holds the model's writer lock (<model>.lock,
amnet/core/lockfile.py; .dvcignore keeps it out of `models` too): a `dvc repro` started while a
train@k orphaned by a killed `dvc` still runs stops with one line naming it (or waits, `--wait
SECONDS`), instead of training into the same state and files.

The arguments are parsed, and the work done, by `train_stage` in amnet/cli/stages.py, which
calls what the CLI verb calls (one path per operation); `python pipeline/train.py --help`
lists them.
"""

from amnet.cli.stages import run, train_stage

if __name__ == "__main__":
    run(train_stage)
