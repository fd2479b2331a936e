"""LNSIM headline: the rule fixed in configs/lnsim.yaml before the final rows ran, applied.

The rule lives in configs/lnsim.yaml as a YAML block inside comments, between the lines
`# >>> headline-rule` and `# <<< headline-rule` (comments, because that file is also a params
file, whose sections amnet.cli.params checks strictly). It says, per trunk:

* which AMNet row the headline is about: among `amnet.rows` (`all`: every AMNet row of the
  trunk, ablations included) with at least `min_splits` splits, the best mean of
  `amnet.select` (`val_rho`: validation rho, highest);
* which probe it is held against: among the ridge rows with at least `min_splits` splits, the
  best mean of `probe.select` (`loo_mse`: the leave-one-out MSE on the training parts, lowest --
  the probes' own rule, which reads neither the validation nor the test halves);
* the test (paired two-sided Wilcoxon on per-split test rho) and the goal (margin, p).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lnsim_data import DEFAULT_CONFIG, ROOT
from lnsim_runs import AMNET, POSTHOC, RIDGES, base_of

START, END = "# >>> headline-rule", "# <<< headline-rule"
HEADS = (*AMNET, *POSTHOC)   # the AMNet rows
# {metric: True when higher is better}; detail metrics live in the rows' per-split details
SELECTABLE = {"val_rho": True, "rho": True, "loo_mse": False, "loo_rho": True, "val_mse": False}


def load_rule(path: Path | None = None) -> dict[str, Any]:
    """The rule block of `path` (default configs/lnsim.yaml), parsed and checked."""
    import yaml

    path = Path(path) if path is not None else ROOT / DEFAULT_CONFIG
    lines = Path(path).read_text().splitlines()
    try:
        i, j = lines.index(START), lines.index(END)
    except ValueError:
        raise SystemExit(f"{path}: no headline rule ({START} ... {END} comment block)") from None
    body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                     for line in lines[i + 1:j])
    rule = yaml.safe_load(body) or {}
    for part in ("amnet", "probe"):
        sel = (rule.get(part) or {}).get("select")
        if sel not in SELECTABLE:
            raise SystemExit(f"{path}: headline rule {part}.select {sel!r}: choose from "
                             f"{', '.join(SELECTABLE)}")
    rule["source"] = str(Path(path).resolve().relative_to(ROOT)) \
        if Path(path).resolve().is_relative_to(ROOT) else str(path)
    return rule


def row_metric(row: dict, metric: str) -> dict[str, float]:
    """{split: finite value} of `metric`: test rho/mse, val_rho/val_mse, or a detail (loo_mse)."""
    if metric in ("rho", "mse"):
        src = {k: v.get(metric) for k, v in row["per_split"].items()}
    elif metric in ("val_rho", "val_mse"):
        src = row.get(metric) or {}
    else:
        src = {k: (d or {}).get(metric) for k, d in (row.get("details") or {}).items()}
    return {k: float(v) for k, v in src.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def mean_of(row: dict, metric: str) -> float:
    vals = list(row_metric(row, metric).values())
    return sum(vals) / len(vals) if vals else float("nan")


def _pick(cands: list[dict], metric: str) -> dict | None:
    cands = [r for r in cands if math.isfinite(mean_of(r, metric))]
    sign = 1.0 if SELECTABLE[metric] else -1.0
    return max(cands, key=lambda r: sign * mean_of(r, metric), default=None)


def select_amnet(rows: list[dict], backbone: str, rule: dict) -> dict | None:
    """The headline's AMNet row of `backbone` under `rule` (None when no row qualifies)."""
    r = rule["amnet"]
    cands = [x for x in rows if x["backbone"] == backbone and base_of(x["model"]) in HEADS
             and len(x["per_split"]) >= int(r.get("min_splits", 1))]
    if r.get("rows", "all") != "all":
        cands = [x for x in cands if x["model"] in r["rows"]]
    return _pick(cands, r["select"])


def select_probe(rows: list[dict], backbone: str, rule: dict) -> dict | None:
    """The probe of `backbone` every AMNet row is held against, under `rule`."""
    r = rule["probe"]
    cands = [x for x in rows if x["backbone"] == backbone and x["model"] in RIDGES
             and len(x["per_split"]) >= int(r.get("min_splits", 1))]
    return _pick(cands, r["select"])


def rule_text(rule: dict) -> str:
    a, p, g = rule["amnet"], rule["probe"], rule.get("goal") or {}
    best = lambda m: "highest" if SELECTABLE[m] else "lowest"   # noqa: E731
    which = "every one, ablations included" if a.get("rows", "all") == "all" else a["rows"]
    return (f"the rule fixed in {rule.get('source')} ({rule.get('fixed', 'date not given')}): "
            f"per trunk, the AMNet row ({which}, >= {a.get('min_splits', 1)} splits) with the "
            f"{best(a['select'])} mean `{a['select']}`, "
            f"against the probe (ridge rows, >= {p.get('min_splits', 1)} splits) with the "
            f"{best(p['select'])} mean `{p['select']}`; paired two-sided Wilcoxon on test rho; "
            f"goal +{g.get('margin', 0.03):.3f} at p < {g.get('p', 0.01)}")


def headline(rows: list[dict], rule: dict, backbones, wilcoxon_paired) -> list[str]:
    """One line per backbone: the rule's AMNet row against the rule's probe, and the goal.
    Also names the probe with the best test rho when it is another one (a harder bar)."""
    out = []
    margin, p_max = (rule.get("goal") or {}).get("margin", 0.03), \
        (rule.get("goal") or {}).get("p", 0.01)
    for bb in backbones:
        best, probe = select_amnet(rows, bb, rule), select_probe(rows, bb, rule)
        if best is None or probe is None:
            continue
        t = wilcoxon_paired(best, probe)
        if t["mean_diff"] is None:
            continue
        met = t["mean_diff"] >= margin and t["p"] is not None and t["p"] < p_max
        p = f"p = {t['p']:.2g}" if t["p"] is not None else t["note"]
        line = (f"{bb}: `{best['model']}` (mean val rho {mean_of(best, 'val_rho'):.3f}; test "
                f"{mean_of(best, 'rho'):.3f}) against `{probe['model']}` (test "
                f"{mean_of(probe, 'rho'):.3f}): {t['mean_diff']:+.3f} test rho over {t['n']} "
                f"splits, Wilcoxon {p}; goal (+{margin:.3f}, p < {p_max}): "
                + ("met" if met else f"missed by {margin - t['mean_diff']:.3f}"
                   if t["mean_diff"] < margin else "missed (p)"))
        top = _pick([x for x in rows if x["backbone"] == bb and x["model"] in RIDGES], "rho")
        if top is not None and top is not probe:
            tt = wilcoxon_paired(best, top)
            line += (f" (the probe with the best test rho, `{top['model']}`, "
                     f"{mean_of(top, 'rho'):.3f}: {tt['mean_diff']:+.3f})")
        out.append(line)
    return out
