"""The cost model of a full LaMem run, from docs/bench/scale.json (bench/scale.py measures it).

LaMem (spec): 60,000 images; 5 splits of 45,000 train / 3,741 val / 10,000 test; 54 epochs.
One cache serves all five splits, so stage one runs once:

    extract(60,000) = 60,000 x s_extract        s_extract: seconds per image at the largest extract N
    disk            = 60,000 x bytes_per_image   from the largest train row's cache file
    epoch(45,000)   = 45,000 x s_train           s_train: seconds per sample of the largest train
                                                 row's timed steps
    split           = setup + 54 x epoch(45,000) setup: that row's preload or NaN scan, once a run
    5 splits        = 5 x split

against the original code, which re-ran the ResNet every epoch: 54 x 45,000 x (s_extract + s_train)
per split. Validation and test passes (forward only) are not counted.
"""
from __future__ import annotations

LAMEM_IMAGES, LAMEM_TRAIN, LAMEM_SPLITS, LAMEM_EPOCHS = 60_000, 45_000, 5, 54


def _largest(rows: list[dict], **match) -> dict:
    pick = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(pick, key=lambda r: r["n"])


def _smallest(rows: list[dict], **match) -> dict:
    pick = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return min(pick, key=lambda r: r["n"])


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def model(res: dict) -> dict:
    """The cost model's figures (seconds, bytes) and the flatness checks, from the rows."""
    rows = res["rows"]
    ext_big, ext_small = _largest(rows, stage="extract"), _smallest(rows, stage="extract")
    tr_big, tr_small = _largest(rows, stage="train"), _smallest(rows, stage="train")
    lazy = [r for r in rows if r.get("feeding") == "lazy"] or [tr_small]
    lazy_big, lazy_small = max(lazy, key=lambda r: r["n"]), min(lazy, key=lambda r: r["n"])
    s_extract = ext_big["s_per_item"]
    per_image = tr_big["cache_gb"] * 1e9 / tr_big["n"]
    epoch = LAMEM_TRAIN * tr_big["s_per_item"]
    split = tr_big["setup_s"] + LAMEM_EPOCHS * epoch
    original = LAMEM_EPOCHS * LAMEM_TRAIN * (s_extract + tr_big["s_per_item"])
    return {"s_extract": s_extract, "extract_s": LAMEM_IMAGES * s_extract,
            "bytes_per_image": per_image, "disk_b": LAMEM_IMAGES * per_image,
            "train_disk_b": LAMEM_TRAIN * per_image, "s_train": tr_big["s_per_item"],
            "epoch_s": epoch, "setup_s": tr_big["setup_s"], "split_s": split, "all_s": LAMEM_SPLITS * split,
            "original_split_s": original, "measured_train_n": tr_big["n"],
            "measured_extract_n": ext_big["n"],
            "extract_flat": s_extract / ext_small["s_per_item"],
            "train_flat": tr_big["s_per_item"] / tr_small["s_per_item"],
            "lazy_rss_growth_mb": lazy_big["peak_rss_mb"] - lazy_small["peak_rss_mb"],
            "lazy_span": (lazy_small["n"], lazy_big["n"]),
            "extract_span": (ext_small["n"], ext_big["n"]), "train_span": (tr_small["n"], tr_big["n"])}


def render(res: dict) -> str:
    """The README block: the rows, then the cost model with its formula."""
    from bench import record
    p = res["params"]
    lines = [record.source_line("scale", res, f"RAM budget {p['ram_budget_gb']:g} GB, {p['steps']} "
                                "train steps of batch " f"{p['batch']} per row"), "",
             "| stage | N | feeding | seconds | s per item | peak RSS (MB) | cache (GB) | "
             "lazy reads, rows/s: one get per row -> sorted | load (1 min) |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in sorted(res["rows"], key=lambda r: (r["stage"], r["n"], r.get("feeding", ""))):
        feed = (f"{r['feed_rows_per_s_get']:.0f} -> {r['feed_rows_per_s_sorted']:.0f}"
                if "feed_rows_per_s_get" in r else "–")
        lines.append(f"| {r['stage']} | {r['n']:,} | {r.get('feeding', '–')} | {r['seconds']:.1f} | "
                     f"{r['s_per_item']:.3f} | {r['peak_rss_mb']:.0f} | {r['cache_gb']:.2f} | {feed} | "
                     + (f"{r['load_avg_1min']:.0f} |" if "load_avg_1min" in r else "– |"))
    if not any(r["stage"] == "train" for r in res["rows"]) or not any(
            r["stage"] == "extract" for r in res["rows"]):
        return "\n".join(lines) + "\n"
    m = model(res)

    def val(text: str, target_n: int, measured_n: int) -> str:
        return f"*{text}*" if measured_n < target_n else text  # italic: beyond the measured N
    disk, train_disk = f"{m['disk_b'] / 1e9:.1f} GB", f"{m['train_disk_b'] / 1e9:.1f} GB"
    (e0, e1), (t0, t1), (l0, l1) = m["extract_span"], m["train_span"], m["lazy_span"]
    lines += ["", f"Per item, largest N against smallest: extract {m['extract_flat']:.2f}x "
              f"({e0:,} -> {e1:,} images), train {m['train_flat']:.2f}x ({t0:,} -> {t1:,} rows; "
              f"target <= 1.5x); lazy feeding's peak RSS grows {m['lazy_rss_growth_mb']:+.0f} MB "
              f"from {l0:,} to {l1:,} rows (target < 1 GB).", "",
              f"**Cost model, LaMem on this CPU** ({LAMEM_IMAGES:,} images, {LAMEM_SPLITS} splits of "
              f"{LAMEM_TRAIN:,} train images, {LAMEM_EPOCHS} epochs; *italic* = extrapolated "
              "beyond the measured N):", "",
              "| what | formula | value |", "|---|---|---:|",
              f"| extract all images once | {LAMEM_IMAGES:,} x {m['s_extract']:.3f} s "
              f"(s per image at N = {m['measured_extract_n']:,}) | "
              f"{val(_hours(m['extract_s']), LAMEM_IMAGES, m['measured_extract_n'])} |",
              f"| cache on disk, all images | {LAMEM_IMAGES:,} x {m['bytes_per_image'] / 1e3:.0f} KB "
              f"| {val(disk, LAMEM_IMAGES, m['measured_train_n'])} |",
              f"| cache on disk, one split's train part | {LAMEM_TRAIN:,} x "
              f"{m['bytes_per_image'] / 1e3:.0f} KB | "
              f"{val(train_disk, LAMEM_TRAIN, m['measured_train_n'])} |",
              f"| one epoch of {LAMEM_TRAIN:,} | {LAMEM_TRAIN:,} x {m['s_train']:.3f} s "
              f"(s per sample at N = {m['measured_train_n']:,}, steps-scaled) | *{_hours(m['epoch_s'])}* |",
              f"| one split | setup ({m['setup_s']:.0f} s: preload or NaN scan, once) + {LAMEM_EPOCHS} "
              f"x epoch | *{_hours(m['split_s'])}* |",
              f"| all {LAMEM_SPLITS} splits | {LAMEM_SPLITS} x split | *{_hours(m['all_s'])}* |",
              f"| one split, the original's way (ResNet every epoch) | {LAMEM_EPOCHS} x "
              f"{LAMEM_TRAIN:,} x (s_extract + s_train) | *{_hours(m['original_split_s'])}* "
              f"({m['original_split_s'] / m['split_s']:.1f}x the cached split) |",
              "", "Validation and test passes (forward only) are not counted."]
    return "\n".join(lines) + "\n"
