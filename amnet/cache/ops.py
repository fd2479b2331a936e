"""Whole-file operations on feature caches: merge shards, rewrite for a shorter image list
(relist), describe (info), verify. (`amnet-cache repair`, salvaging a damaged file, is
amnet.cache.repair.)"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from amnet.core.atomic import atomic_path, remove_stale_temps
from amnet.core.diskspace import disk_full_guard
from amnet.core.errors import CacheError
from amnet.core.lockfile import hold
from amnet.cache import schema as C, writer as W

_BLOCK = 256  # images per copy / scan step (~100 MB of float16 at 224); / K for views
_SHARD_ATTRS = ("shard_index", "shard_count", "shard_total")
# per-file attributes a merge does not copy from its first input
_MERGE_ATTRS = ("created", "complete", "updated", "merged_from", "merged_shard_count",
                "merged_shard_total", "merged_shards")


def copy_rows(sources: Sequence[h5py.File], dst: h5py.File, order: Sequence[tuple[int, int]],
              dst_rows: Sequence[int] | None = None) -> None:
    """Copy row `order[k] = (source s, row r)` of every feature dataset of `dst` (features,
    features_flip, views, views_flip) from `sources[s]` to row `dst_rows[k]` (default k; sorted)
    of `dst`, about _BLOCK images per read. `done` is the caller's: set it after the rows."""
    dst_rows = list(range(len(order))) if dst_rows is None else list(dst_rows)
    names = [d for d in ("features", "features_flip", "views", "views_flip") if d in dst]
    block = max(1, _BLOCK // max(1, int(dst.attrs.get("views", 0) or 0)))
    for start in range(0, len(order), block):
        part, rows = order[start:start + block], dst_rows[start:start + block]
        for name in names:
            W.write_rows(dst[name], rows, np.stack([sources[s][name][r] for s, r in part]))


def relist(path: str | Path, names: Sequence[str], check: Callable[[], None] | None = None
           ) -> dict:
    """Rewrite the cache at `path` for the image list `names`, which must be its own names less
    some that hold no features (failed or not extracted yet): every extracted row is copied
    byte for byte, failures of names still listed stay recorded, the attributes are kept.
    Atomic (the old file stays until the new one is complete); `check` runs before the rename
    (a writer lock's `Lock.check`). Returns {"kept": rows copied, "dropped": names dropped}."""
    path = Path(path)
    with C.open_existing(path) as f:
        have = f["names"].asstr()[:].tolist()
        done = f["done"][:].astype(bool)
        failed = C.read_failed(f)
        attrs = dict(f.attrs.items())
    row = {n: i for i, n in enumerate(have)}
    lost = [n for n in names if n not in row]
    if lost:
        raise ValueError(f"relist: {lost[:2]} are not in {path}")
    dropped = [n for n in have if n not in set(names)]
    if any(done[row[n]] for n in dropped):
        raise ValueError(f"relist: {path} holds features of dropped names")
    copied = [(k, row[n]) for k, n in enumerate(names) if done[row[n]]]
    still_failed = [(n, failed[n]) for n in names if n in failed]
    remove_stale_temps(path, "relisting")    # a rewrite that a kill interrupted
    with disk_full_guard(path, len(copied) * C.row_bytes(attrs), f"{path} is unchanged"), \
            atomic_path(path, tag="relisting", check=check) as tmp:
        with C.open_h5(path, "r") as src, W.create(tmp, names, attrs) as g:
            if "created" in attrs:
                g.attrs["created"] = attrs["created"]  # the same cache, for a shorter list
            W.copy_top(src, g)
            copy_rows([src], g, [(0, r) for _, r in copied], [k for k, _ in copied])
            for start, stop, _ in W.row_runs([k for k, _ in copied]):
                g["done"][start:stop] = True  # after the rows themselves
            if still_failed:
                W.append_failed(g, still_failed)
            g.attrs["complete"] = len(copied) + len(still_failed) == len(names)
            g.attrs["updated"] = C.now()
    return {"kept": len(copied), "dropped": len(dropped)}


def merge(out: str | Path, shards: Sequence[str | Path], overwrite: bool = False,
          allow_partial: bool = False, wait: float = 0.0) -> dict:
    """Join complete shard caches (equal settings, disjoint names) into one file at `out`.

    Shards written by `--shard I/N` (every shard records I, N and the list's length) are
    interleaved back into the order of the single-run list, and must form the whole set: all N
    present, each once, of one run (else CacheError, unless `allow_partial`: the shards given
    are merged, in the single run's order, and the result records which it holds, so `verify`
    reports it and a later merge with the missing shards completes it). Other caches are
    concatenated in the order given. The result reads like any other cache (attribute
    `merged_from` names the inputs, `merged_shards` / `merged_shard_count` the shards held),
    views included (their crops depend on the image name only, so they equal a single run's).
    `out` is written under its writer lock (amnet.core.lockfile; waits up to `wait` seconds)."""
    out = Path(out)
    if not shards:
        raise CacheError("merge: no shard files given")
    with hold(out, wait) as lock:
        if out.exists() and not overwrite:
            raise CacheError(f"{out}: already exists; pass --overwrite to replace it")
        metas = [_read_input(Path(p)) for p in shards]
        ref_path, ref = metas[0][0], metas[0][1]
        for p, attrs, *_ in metas:
            diffs = C.settings_differences(attrs, ref)
            if diffs:
                raise CacheError(f"{p}: settings differ from {ref_path} ({'; '.join(diffs)})")
        order, held = _merged_order(out, metas, allow_partial)
        seen: dict[str, Path] = {}
        for p, _, names, _, _ in metas:
            for n in names:
                if n in seen:
                    raise CacheError(f"{p}: image {n!r} is also in {seen[n]}; shards must be "
                                     "disjoint")
                seen[n] = p
        all_names = [metas[s][2][r] for s, r in order]
        attrs = {k: v for k, v in ref.items() if k not in _SHARD_ATTRS + _MERGE_ATTRS}
        attrs = {k: (C._stats_attr(v) if k in ("mean", "std") else
                     np.asarray(v) if isinstance(v, list) else v) for k, v in attrs.items()}
        attrs["merged_from"] = np.array([str(p) for p, *_ in metas], dtype=h5py.string_dtype())
        if held is not None:
            count, total, indices = held
            attrs.update(merged_shard_count=count, merged_shard_total=total,
                         merged_shards=np.asarray(indices, dtype=np.int64))
        remove_stale_temps(out, "merging")   # the half-written output of a killed merge
        needed = sum(Path(p).stat().st_size for p, *_ in metas)
        with disk_full_guard(out, needed, "the shards are untouched and nothing was written to "
                                          f"{out}"), \
                atomic_path(out, tag="merging", check=lock.check) as tmp:
            with W.create(tmp, all_names, attrs) as g:
                handles = [C.open_h5(p, "r") for p, *_ in metas]
                try:
                    W.copy_top(handles[0], g)   # equal settings: every shard holds the same
                    copy_rows(handles, g, order)
                finally:
                    for h in handles:
                        h.close()
                g["done"][:] = [metas[s][3][r] for s, r in order]
                failed = [(n, why) for *_, fails in metas for n, why in fails.items()]
                if failed:
                    W.append_failed(g, failed)
                g.attrs["complete"] = True
                g.attrs["created"] = C.now()
    return {"out": str(out), "images": len(all_names), "shards": len(metas),
            "failed": len(failed), "shard_count": held[0] if held else None,
            "shards_held": list(held[2]) if held else None}


def _read_input(p: Path) -> tuple:
    """(path, attrs, names, done, failed) of one complete merge input."""
    with C.open_existing(p) as f:
        attrs = C.read_attrs(f)
        if not attrs.get("complete"):
            raise CacheError(f"{p}: shard is not complete; finish its extraction first")
        return (p, attrs, f["names"].asstr()[:].tolist(), f["done"][:].astype(bool),
                C.read_failed(f))


def shard_set(attrs: dict) -> tuple[int, int, tuple[int, ...]] | None:
    """(N shards, images T of the whole list, shard indices held) of a shard file or of a
    partial merge of shards; None for any other cache (a complete merge included: it reads
    like a single run's file)."""
    if attrs.get("shard_index") is not None:
        return int(attrs["shard_count"]), int(attrs["shard_total"]), (int(attrs["shard_index"]),)
    held, count = attrs.get("merged_shards"), attrs.get("merged_shard_count")
    if held is None or count is None:
        return None
    held = tuple(int(i) for i in (held if isinstance(held, list) else [held]))
    return (int(count), int(attrs["merged_shard_total"]), held) if len(held) < int(count) else None


def _merged_order(out: Path, metas, allow_partial: bool
                  ) -> tuple[list[tuple[int, int]], tuple[int, int, tuple[int, ...]] | None]:
    """The merged file's rows as (input, row), and (N, T, shards held) when merging shards."""
    sets = [shard_set(m[1]) for m in metas]
    if all(s is None for s in sets):
        return [(s, r) for s, m in enumerate(metas) for r in range(len(m[2]))], None
    p0, s0 = next((m[0], s) for m, s in zip(metas, sets) if s is not None)
    owner: dict[int, Path] = {}
    where: dict[int, tuple[int, int]] = {}  # item k of the whole list -> (input, row)
    for s, (m, st) in enumerate(zip(metas, sets)):
        p = m[0]
        if st is None:
            raise CacheError(f"{p}: not a shard, but {p0} is one (shard of {s0[0]}); merge the "
                             f"shard set first, then merge its result with {p}")
        if st[:2] != s0[:2]:
            raise CacheError(f"{p}: a shard of another --shard run ({st[0]} shards over {st[1]} "
                             f"images) than {p0} ({s0[0]} over {s0[1]}); merge one run's shards")
        for i in st[2]:
            if i in owner:
                raise CacheError(f"{p}: shard {i}/{st[0]} is also in {owner[i]}; give each "
                                 "shard once")
            owner[i] = p
        items = [k for k in range(st[1]) if k % st[0] in st[2]]
        if len(items) != len(m[2]):
            raise CacheError(f"{p}: holds {len(m[2])} images, but shard(s) {list(st[2])} of "
                             f"{st[0]} over {st[1]} images hold {len(items)}; not a shard file "
                             "of that run")
        where.update((k, (s, r)) for r, k in enumerate(items))
    count, total = s0[:2]
    missing = [i for i in range(count) if i not in owner]
    if missing and not allow_partial:
        have = ", ".join(f"{i} ({owner[i]})" for i in sorted(owner))
        raise CacheError(f"merge {out}: incomplete shard set: shard(s) {have} of {count} given, "
                         f"{', '.join(map(str, missing))} missing; add the missing shard "
                         "file(s), or pass --allow-partial to merge only these")
    return [where[k] for k in sorted(where)], (count, total, tuple(sorted(owner)))


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
    extracted rows, unique names, failed names that exist and have no features, and a partial
    merge of shards (`merge --allow-partial`)."""
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
        partial = shard_set(attrs) if "merged_shards" in attrs else None
        if partial is not None:
            count, total, held = partial
            lack = [i for i in range(count) if i not in held]
            problems.append(f"partial merge: holds shard(s) {', '.join(map(str, held))} of {count} "
                            f"({n} of the list's {total} images), shard(s) "
                            f"{', '.join(map(str, lack))} missing; merge the missing shard "
                            f"file(s) with this one (amnet-cache merge NEW.h5 {path} SHARD...)")
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
    from amnet.core.progress import progress_bar
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
