"""LNSIM benchmark, per-split runs: one function per row kind (ids and recipes: lnsim_recipes).

Model ids (the issue's rows):

  mean                 the training-mean predictor (MSE floor; rho undefined)
  ridge                ridge on mean-pooled layer3 features (1024); every ridge row chooses alpha
                       by exact leave-one-out on the training part, then refits on train + val
                       (features: bench/lnsim_pool.py, one forward pass per trunk)
  ridge-layer4         the same on mean-pooled layer4 features (2048)
  ridge-layer34        the same on mean-pooled layer3 + layer4 (1024 + 2048)
  ridge-layer34-meanmax  layer3 + layer4, mean- and max-pooled (2 x 3072)
  ridge-layer234       mean-pooled layer2 + layer3 + layer4 (512 + 1024 + 2048)
  amnet-paper          AMNet, paper settings (SUN: batch 222, lr 1e-4, wd 1e-4; --epochs, 49),
                       flip views, no crop views
  amnet-tuned          AMNet with the recipe of configs/lnsim.yaml (model:, train:), chosen on val
  amnet-tuned-noatt    the same, use_attention = false
  amnet-multi          the tuned recipe on the layer3,layer4 map ([3072, 7, 7]: layer3 pooled to
                       7 x 7, then layer4), with MULTI's changes (chosen on val, lnsim_sweep.py)
  amnet-multi-noatt    the same, use_attention = false
  amnet-multi-tta      amnet-multi's heads (no training: its checkpoints), val and test predictions
                       averaged over the plain and the flipped image (flip TTA)
  amnet-top            amnet-multi with layer4.2 trained with the head (issue 22): the cache stops
                       at layer4.1 (+ pooled layer3), trainable_layers = [layer4.2], trunk_lr 1e-5
  amnet-top-noatt      the same, use_attention = false
  resmem               the published ResMem model, zero-shot, its own preprocessing
  human                rho(hrs1, hrs2) on the test half: the ceiling

AMNet ids take `[key=value,...]` overrides on top: AMNetConfig or TrainConfig fields, checked
by amnet.core.settings.validate (values are YAML scalars or lists, as `dvc exp run -S` writes
them: `trainable_layers=[layer4.2]`), and `layers` (the cache's layer set, e.g. layer3,layer4);
`target_mean=train` means the split's training-score mean. Every setting lands in the row's
config and in the run's reuse key (`run_amnet`).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from lnsim_data import cache_identity, cache_path, log, read_part, write_json
# the ids and recipes, re-exported: bench/lnsim.py, the sweep and the tests use M.* for both
from lnsim_recipes import (AMNET, BACKBONE_FREE, CLI_OWNED, LABELS, MODELS, PAPER,  # noqa: F401
                           POSTHOC, RIDGES, amnet_configs, base_of, checked, label_of,
                           load_tuned, parse_model, parse_splits, recipe, split_models,
                           split_top, train_config)


# ---------------------------------------------------------------------------------------------
# one split of one row

def run_mean(work: Path, k: int) -> dict:
    from amnet.core.metrics import mse
    from baselines import TrainingMean

    t0 = time.perf_counter()
    _, ytr = read_part(work, "train", k)
    _, yva = read_part(work, "val", k)
    _, yte = read_part(work, "test", k)
    m = TrainingMean().fit(ytr)
    return {"rho": float("nan"), "mse": mse(yte, m.predict(len(yte))), "value": m.value,
            "val_rho": float("nan"), "val_mse": mse(yva, m.predict(len(yva))),
            "seconds": time.perf_counter() - t0, "n": len(yte)}


def run_ridge(work: Path, k: int, feats, groups: tuple[tuple[str, str], ...]) -> dict:
    """One probe on split k: alpha by exact leave-one-out on the training part (1,184 images),
    the validation numbers of that training fit, then the refit on train + val (1,316) at that
    alpha scores the test half. feats: (name -> row, `[N, 7168]` pooled features) of
    bench/lnsim_pool.py; `groups` picks its columns."""
    import numpy as np

    from amnet.core.metrics import mse, spearman
    from baselines import RidgeProbe
    from lnsim_pool import columns

    index, x = feats
    x = x[:, columns(*groups)]
    t0 = time.perf_counter()
    parts = {p: read_part(work, p, k) for p in ("train", "val", "test")}
    rows = {p: np.asarray([index[n] for n in names]) for p, (names, _) in parts.items()}
    (_, ytr), (_, yva), (_, yte) = parts["train"], parts["val"], parts["test"]
    probe = RidgeProbe().select(x[rows["train"]], ytr)
    val_pred = probe.predict(x[rows["val"]])
    final = RidgeProbe().fit(x[np.r_[rows["train"], rows["val"]]], np.r_[ytr, yva], probe.alpha)
    pred = final.predict(x[rows["test"]])
    return {"rho": spearman(yte, pred), "mse": mse(yte, pred), "alpha": probe.alpha,
            "alpha_at_grid_edge": probe.at_edge, **probe.loo,
            "val_rho": spearman(yva, val_pred), "val_mse": mse(yva, val_pred),
            "n_fit": int(len(ytr) + len(yva)), "channels": int(x.shape[1]),
            "seconds": time.perf_counter() - t0, "n": len(yte)}


def run_resmem(work: Path, k: int, scores: dict[str, float]) -> dict:
    import numpy as np

    from amnet.core.metrics import mse, spearman
    out = {}
    for part in ("val", "test"):
        names, gt = read_part(work, part, k)
        pred = np.asarray([scores[n] for n in names])
        out[part] = (spearman(gt, pred), mse(gt, pred), len(gt))
    return {"rho": out["test"][0], "mse": out["test"][1], "n": out["test"][2],
            "val_rho": out["val"][0], "val_mse": out["val"][1], "seconds": 0.0}


def run_human(work: Path, k: int, info: dict, hrs: tuple) -> dict:
    """rho and MSE between the two observer halves on the test half (prepare.json has the rho)."""
    import numpy as np

    from amnet.core.metrics import mse, spearman
    names, gt2 = read_part(work, "test", k)
    col = {n: j for j, n in enumerate(hrs[2])}
    idx = np.asarray([col[n] for n in names])
    h1, h2 = hrs[0][k - 1, idx], hrs[1][k - 1, idx]
    rho = spearman(h1, h2)
    recorded = info["human_consistency"]["per_split"][str(k)]["rho_test_half"]
    if abs(rho - recorded) > 1e-5 or not np.allclose(h2, gt2, atol=1e-6):
        raise SystemExit(f"human consistency of split {k} disagrees with prepare.json; "
                         f"delete {work / 'data'} and run again")
    return {"rho": rho, "mse": mse(h2, h1), "n": len(names), "val_rho": float("nan"),
            "val_mse": float("nan"), "seconds": 0.0}


def run_key(work: Path, backbone: str, cache: Path, mc, tc, k: int, test: bool) -> dict:
    """What decides a run's result, compared in full before a result.json is reused: the
    feature cache's identity (its recorded settings, trunk sha256, names and done rows:
    lnsim_data.cache_identity, not its file name), the split files' sha256, the head and
    training settings (the row's config: every AMNetConfig / TrainConfig field, so new keys
    such as trainable_layers are covered without a change here) and torch's version -- what
    amnet.head.train_state.fingerprint hashes, with the cache by content instead of mtime."""
    import torch

    from amnet.core.provenance import file_sha256
    from amnet.data.listfiles import split_path

    parts = ("train", "val", "test") if test else ("train", "val")
    key = {"backbone": backbone, "cache": cache_identity(cache),
           "splits": {p: file_sha256(split_path(work / "data", p, k)) for p in parts},
           "model": asdict(mc),
           "train": {k_: v for k_, v in asdict(tc).items() if k_ != "progress"},
           "split": k, "torch": str(torch.__version__)}
    if not test:
        key["val_only"] = True
    return json.loads(json.dumps(key, default=str))    # as result.json will hold it


def run_amnet(work: Path, backbone: str, slug: str, settings: dict, k: int, args, *,
              force: bool = False, test: bool = True, out_root: Path | None = None,
              keep_checkpoint: bool = True, views: int = 0) -> dict:
    """Train one AMNet row on split k; skipped when its result.json has the same reuse key.

    Why a run cache of its own, and not DVC experiments: a row is 25 splits x (backbone, recipe),
    hundreds of short runs over one shared cache per backbone, resumed one split at a time after a
    kill; as DVC stages that is one `foreach` stage per row and a `dvc exp run` per recipe, each
    re-hashing the 1-2 GB caches. The reuse key (`run_key`) holds what decides the result, the
    cache by its recorded provenance and rows rather than its name, so a re-extracted cache, an
    edited split file or any changed setting trains again; result.json keeps the key, so it
    says what trained it, like the pipeline's metrics.json.

    test=False (the sweep) never reads the test half: the result holds validation numbers only.
    """
    from amnet.data.listfiles import split_path
    from amnet.head.run import train_split

    out_root = out_root or work / "runs" / backbone
    out = out_root / slug / f"split_{k}"
    _, ytr = read_part(work, "train", k)
    settings = dict(settings)
    layers = settings.pop("layers", "layer3")   # which cache, not a head or training setting
    mc, tc = amnet_configs(settings, args, float(ytr.mean()), where=slug)
    cache = cache_path(work, backbone, views, layers)
    fingerprint = run_key(work, backbone, cache, mc, tc, k, test)
    result_path = out / "result.json"
    if result_path.exists() and not force:
        prev = json.loads(result_path.read_text())
        if prev.get("fingerprint") == fingerprint:
            log(f"{backbone}/{slug}/split {k}: done before ({result_path}), skipped")
            return prev
        log(f"{backbone}/{slug}/split {k}: {result_path} was trained by another cache, split "
            "or setting; training again")
    log(f"{backbone}/{slug}/split {k}: training {tc.epochs} epochs ({args.device}, precision {tc.precision})"
        + (" [validation only]" if not test else ""))
    data = work / "data"
    t0 = time.perf_counter()
    m = train_split(cache, split_path(data, "train", k), split_path(data, "val", k),
                    split_path(data, "test", k) if test else None, out, mc, tc)
    res = {"val_rho": m["val_rho"], "val_mse": m["val_mse"], "best_epoch": m["best_epoch"],
           "epochs": tc.epochs, "n_val": m["n_val"], "flip": m["flip"],
           "seconds": time.perf_counter() - t0, "device": m["device"],
           "target_mean": mc.target_mean, "fingerprint": fingerprint}
    if test:
        res.update(rho=m["rho"], mse=m["mse"], n=m["n"])
    else:
        assert "rho" not in m and "mse" not in m, "a validation-only run computed test metrics"
    if not keep_checkpoint:
        Path(m["checkpoint"]).unlink(missing_ok=True)
    write_json(out / "result.json", res)
    shown = f"test rho {res['rho']:.4f}, mse {res['mse']:.5f}, " if test else ""
    log(f"{backbone}/{slug}/split {k}: {shown}val rho {res['val_rho']:.4f} "
        f"(best epoch {res['best_epoch']}, {res['seconds']:.0f} s)")
    return res


def run_tta(work: Path, backbone: str, k: int, trained: str, layers: str, args) -> dict:
    """Flip TTA of the head row `trained` trained on split k (its run folder's head.pt): val and
    test predictions averaged over the plain and the mirrored image (`amnet evaluate --tta`).
    Validation is scored the same way, so choosing TTA looks at validation only."""
    from amnet.data.listfiles import split_path
    from amnet.head.evaluation import evaluate

    run = work / "runs" / backbone / trained / f"split_{k}"
    ckpt = run / "head.pt"
    if not (run / "result.json").exists() or not ckpt.exists():
        raise SystemExit(f"{backbone}/{trained}-tta/split {k}: needs {ckpt} (run {trained} first)")
    t0 = time.perf_counter()
    out = {}
    for part in ("val", "test"):
        m, _ = evaluate(ckpt, cache_path(work, backbone, 0, layers),
                        split_path(work / "data", part, k), device=args.device,
                        precision=args.precision, workers=0, tta=True)
        out[part] = m
    return {"rho": out["test"]["rho"], "mse": out["test"]["mse"], "n": out["test"]["n"],
            "val_rho": out["val"]["rho"], "val_mse": out["val"]["mse"],
            "tta_views": out["test"]["tta_views"], "seconds": time.perf_counter() - t0}
