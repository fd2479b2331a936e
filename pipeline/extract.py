"""DVC stage `extract` (stage one): ResNet layer3 features of every image in DATA/images.txt.

Usage: python pipeline/extract.py DATA OUT   (dvc.yaml: data/${data.dataset}
       data/features/${data.dataset}.h5); settings: params.yaml `backbone` + `extract_run`.

Writes OUT, through amnet.extract.resume.extract_to as `amnet-cache extract` does, into OUT's
<stem>.partial.h5 (not a DVC output, so DVC does not delete it before a re-run) renamed when
complete: a run that crashed or was killed resumes where it stopped on the next `dvc repro`. The
partial file's writer lock (amnet/core/lockfile.py) is held from the first write to the rename, so
a run left over by a killed `dvc` is never disturbed: the next run stops with one line naming it
(or waits, `--wait SECONDS`). A damaged (truncated) partial file keeps every row that can be
salvaged (amnet.cache.repair) before it resumes; Ctrl-C says how many rows are kept. Ends with
`amnet-cache extract`'s summary line, naming OUT.

The arguments are parsed, and the work done, by `extract_stage` in amnet/cli/stages.py, which
calls what the CLI verb calls (one path per operation); `python pipeline/extract.py --help`
lists them.
"""

from amnet.cli.stages import extract_stage, run

if __name__ == "__main__":
    run(extract_stage)
