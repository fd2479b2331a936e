"""DVC stage `evaluate`: the report of the configured splits: their metrics, mean and sd, curves,
predictions and attention figures.

Usage: python pipeline/evaluate.py --data DIR --cache H5 --models DIR --runs DIR --splits-dir DIR
       --history CSV --predictions CSV --summary JSON --attention DIR   (dvc.yaml passes the
       paths); settings: params.yaml `data.splits`, `evaluate`.

Gathers the run record RUNS/<k>/ of each split k of `data.splits` (amnet/head/gather.py): its metrics
to SPLITS_DIR/<k>.json, its history and test predictions into HISTORY and PREDICTIONS (one CSV
each, a `split` column first). Writes SUMMARY (rho and MSE, mean +- sd over those splits, beside
the human consistency where the data set records it) and ATTENTION/*.png (the first
`evaluate.attention_figures` test images of the first split, scored by MODELS/<k>.pt and drawn
like the paper's Fig. 2). Every output is rebuilt whole, so a split no longer configured leaves
nothing behind.

The arguments are parsed, and the work done, by `evaluate_stage` in amnet/cli/stages.py, which
calls what the CLI verb calls (one path per operation); `python pipeline/evaluate.py --help`
lists them.
"""

from amnet.cli.stages import evaluate_stage, run

if __name__ == "__main__":
    run(evaluate_stage)
