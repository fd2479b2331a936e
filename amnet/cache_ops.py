"""Whole-file operations on feature caches: merge shards, describe (info), verify.

(`amnet-cache repair`, salvaging a damaged file, is amnet.cache_repair.)"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from amnet import cache as C
from amnet.atomic import atomic_path, remove_stale_temps
from amnet.diskspace import disk_full_guard
from amnet.errors import CacheError

_BLOCK = 256  # images per copy / scan step (~100 MB of float16 at 224); / K for views
_SHARD_ATTRS = ("shard_index", "shard_count", "shard_total")


def merge(out: str | Path, shards: Sequence[str | Path], overwrite: bool = False) -> dict:
    """Join complete shard caches (equal settings, disjoint names) into one file at `out`.

    Shards written by `--shard i/n` (all n present) are interleaved back into the order of the
    single-run list; other inputs are concatenated in the order given. The result is a copy
    that reads like any other cache (attribute `merged_from` names the inputs), views included
    (their crops depend on the image name only, so they equal a single run's)."""
    out = Path(out)
    if not shards:
        raise CacheError("merge: no shard files given")
    if out.exists() and not overwrite:
        raise CacheError(f"{out}: already exists; pass --overwrite to replace it")
    metas = []
    for p in shards:
        with C.open_existing(Path(p)) as f:
            attrs = C.read_attrs(f)
            if not attrs.get("complete"):
                raise CacheError(f"{p}: shard is not complete; finish its extraction first")
            names = f["names"].asstr()[:].tolist()
            metas.append((Path(p), attrs, names, f["done"][:].astype(bool), C.read_failed(f)))
    ref_path, ref = metas[0][0], metas[0][1]
    seen: dict[str, Path] = {}
    for p, attrs, names, _, _ in metas:
        diffs = C.settings_differences(attrs, ref)
        if diffs:
            raise CacheError(f"{p}: settings differ from {ref_path} ({'; '.join(diffs)})")
        for n in names:
            if n in seen:
                raise CacheError(f"{p}: image {n!r} is also in {seen[n]}; shards must be disjoint")
            seen[n] = p
    order = _merged_order(metas)  # list of (shard number, row)
    all_names = [metas[s][2][r] for s, r in order]
    attrs = {k: v for k, v in ref.items()
             if k not in _SHARD_ATTRS + ("created", "complete", "updated")}
    attrs = {k: (C._stats_attr(v) if k in ("mean", "std") else
                 np.asarray(v) if isinstance(v, list) else v) for k, v in attrs.items()}
    attrs["merged_from"] = np.array([str(p) for p, *_ in metas], dtype=h5py.string_dtype())
    remove_stale_temps(out, "merging")       # the half-written output of a killed merge
    needed = sum(Path(p).stat().st_size for p, *_ in metas)
    with disk_full_guard(out, needed, "the shards are untouched and nothing was written to "
                                      f"{out}"), atomic_path(out, tag="merging") as tmp:
        with C.create(tmp, all_names, attrs) as g:
            dsets = [d for d in ("features", "features_flip", "views", "views_flip") if d in g]
            block = max(1, _BLOCK // max(1, int(ref.get("views") or 0)))
            handles = [C.open_h5(p, "r") for p, *_ in metas]
            try:
                for start in range(0, len(order), block):
                    part = order[start:start + block]
                    for name in dsets:
                        rows = np.stack([handles[s][name][r] for s, r in part])
                        g[name][start:start + len(part)] = rows
                    g["done"][start:start + len(part)] = [metas[s][3][r] for s, r in part]
            finally:
                for h in handles:
                    h.close()
            failed = [(n, why) for *_, fails in metas for n, why in fails.items()]
            if failed:
                C.append_failed(g, failed)
            g.attrs["complete"] = True
            g.attrs["created"] = C.now()
    return {"out": str(out), "images": len(all_names), "shards": len(metas),
            "failed": len(failed)}


def _merged_order(metas) -> list[tuple[int, int]]:
    counts = {m[1].get("shard_count") for m in metas}
    indices = sorted(m[1].get("shard_index", -1) for m in metas)
    totals = {m[1].get("shard_total") for m in metas}
    if len(counts) == 1 and None not in counts and indices == list(range(len(metas))) \
            and counts == {len(metas)} and len(totals) == 1:
        n = len(metas)
        by_index = {m[1]["shard_index"]: s for s, m in enumerate(metas)}
        total = totals.pop()
        # item k of the single run is row k // n of shard k % n
        return [(by_index[k % n], k // n) for k in range(total)]
    return [(s, r) for s, m in enumerate(metas) for r in range(len(m[2]))]


def info(path: str | Path) -> dict:
    """Provenance and counts of a cache, as a flat dict (for printing)."""
    path = Path(path)
    with C.open_existing(path) as f:
        attrs = C.read_attrs(f)
        done = f["done"][:].astype(bool)
        d = {"file": str(path), "size_mb": round(path.stat().st_size / 1e6, 1),
             "images": len(done), "done": int(done.sum()), "failed": len(C.read_failed(f)),
             "features": f"{f['features'].dtype} {list(f['features'].shape)}",
             "features_flip": "features_flip" in f}
        views = f["views"] if "views" in f else None
        d.update(attrs)
        d["format_version"] = attrs.get("format_version", 1)
        d["views"] = int(views.shape[1]) if views is not None else 0  # crops besides the plain view
        if views is not None:
            d["views_shape"] = f"{views.dtype} {list(views.shape)}"
            d["views_flip"] = "views_flip" in f
    return d


def verify(path: str | Path, progress: bool = False) -> list[str]:
    """Problems found in a cache (empty list = fine): completeness, shapes, dtypes, NaN/Inf in
    extracted rows, unique names, failed names that exist and have no features."""
    path = Path(path)
    problems: list[str] = []
    with C.open_existing(path) as f:
        attrs = C.read_attrs(f)
        names = f["names"].asstr()[:].tolist()
        done = f["done"][:].astype(bool)
        failed = C.read_failed(f)
        n = len(names)
        name_set = set(names)
        if len(name_set) != n:
            from collections import Counter
            dup = sorted(x for x, c in Counter(names).items() if c > 1)[:3]
            problems.append(f"duplicate names, e.g. {dup}")
        if done.shape != (n,):
            problems.append(f"done has shape {done.shape}, expected ({n},)")
        for name in failed:
            if name not in name_set:
                problems.append(f"failed image {name!r} is not in names")
        bad_done = [x for x, d in zip(names, done) if d and x in failed]
        if bad_done:
            problems.append(f"{len(bad_done)} images are both done and failed, e.g. {bad_done[:2]}")
        todo = n - int(done.sum()) - len([x for x in failed if x in name_set])
        if todo > 0 or not attrs.get("complete"):
            problems.append(f"incomplete: {todo} of {n} images not extracted "
                            f"(complete={attrs.get('complete')}); rerun the extract command")
        grid = attrs.get("grid") or []
        k = int(attrs.get("views") or 0)
        expected = C.feature_datasets(n, int(attrs.get("channels", 1024)),
                                      tuple(int(g) for g in grid), bool(attrs.get("flip")), k)
        for name in ("views", "views_flip"):
            if name in f and name not in [e[0] for e in expected]:
                problems.append(f"{name} present but the attributes say views={k}, "
                                f"flip={attrs.get('flip')}")
        for name, want, _ in expected:
            if name not in f:
                problems.append(f"{name} is missing (views={k}, flip={attrs.get('flip')})")
                continue
            ds = f[name]
            if ds.dtype != np.float16:
                problems.append(f"{name} dtype {ds.dtype}, expected float16")
            if tuple(ds.shape) != want:
                problems.append(f"{name} shape {list(ds.shape)}, expected {list(want)}")
                continue
            block = _BLOCK if ds.ndim == 4 else max(1, _BLOCK // k)  # ~100 MB per read
            try:
                bad = _scan_nonfinite(ds, done, progress, name, block)
            except (OSError, RuntimeError) as e:
                problems.append(f"{name}: damaged: rows do not read back "
                                f"({str(e).splitlines()[0]}); salvage the complete rows with "
                                f"`amnet-cache repair {path} FIXED.h5`")
                continue
            if bad:
                problems.append(f"{name}: {len(bad)} images hold NaN/Inf, e.g. "
                                f"{[names[i] for i in bad[:3]]}")
    return problems


def _scan_nonfinite(ds, done: np.ndarray, progress: bool, label: str, block: int = _BLOCK
                    ) -> list[int]:
    """Rows marked done whose values (all views of the row, for `views`) are not all finite."""
    from amnet.progress import progress_bar
    bad: list[int] = []
    rows = np.flatnonzero(done)
    with progress_bar(total=len(rows), desc=f"verify {label}", enabled=progress) as bar:
        for start in range(0, len(done), block):
            stop = min(start + block, len(done))
            mask = done[start:stop]
            if not mask.any():
                continue
            finite = C.finite_rows(ds[start:stop])
            bad.extend(int(start + k) for k in np.flatnonzero(mask & ~finite))
            bar.update(int(mask.sum()))
    return bad
