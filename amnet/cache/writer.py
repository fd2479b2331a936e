"""The cache's writer side: create an empty file with every chunk allocated, write rows in
place, record failed images. The schema and its attributes are amnet/cache/schema.py; the crash-
safety argument (metadata final at creation, `done[i]` set last) is in its docstring."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from amnet.core.provenance import arrays_sha256
from amnet.cache.schema import TOP_GROUP, feature_datasets, now


def _early() -> h5py.h5p.PropDCID:
    """Dataset creation properties allocating all storage when the dataset is created."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def create(path: Path, names: Sequence[str], attrs: dict[str, Any],
           top: dict[str, np.ndarray] | None = None) -> h5py.File:
    """Create an empty cache for `names` (open for writing; the caller closes it). `top`: the
    unfolded weights of the trunk blocks above a cut inside a stage (`{"layer4.2.conv1.weight":
    array, ...}`), stored in the `trunk_top` group (amnet/cache/schema.py) with their sha256;
    `attrs` must name them (`trunk_top`)."""
    n, c, (h, w) = len(names), int(attrs["channels"]), [int(x) for x in attrs["grid"]]
    f = h5py.File(path, "w", rdcc_nbytes=0)  # no chunk cache: a write goes straight to the file
    try:
        for key, value in attrs.items():
            f.attrs[key] = str(value) if isinstance(value, str) else value  # TorchVersion -> str
        f.attrs["created"] = now()
        f.attrs["complete"] = False
        # attributes the writer sets later exist from the start: rewriting one reuses its space
        # in the root's header, where a new one would add a block at the end of the file (lost
        # with the rest of the root when a copy is truncated)
        for key, placeholder in (("updated", f.attrs["created"]), ("device", "")):
            if key not in attrs:
                f.attrs[key] = placeholder
        # names, done and failed first: at the front of the file, a truncated copy keeps them
        f.create_dataset("names", data=np.array(list(names), dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("done", shape=(n,), dtype=bool, fillvalue=False, dcpl=_early())
        g = f.create_group("failed")
        for name in ("names", "reasons"):
            g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(256,),
                             dtype=h5py.string_dtype("utf-8"))
        if top:
            write_top(f, top)
        k = int(attrs.get("views", 0) or 0)
        for name, shape, chunks in feature_datasets(n, c, (h, w), bool(attrs["flip"]), k):
            # metadata final from here on (all chunks allocated), and no fill: sparse until written
            f.create_dataset(name, shape=shape, dtype=np.float16, chunks=chunks,
                             dcpl=_early(), fill_time="never")
        f.flush()
    except BaseException:
        f.close()
        raise
    return f


def write_top(f: h5py.File, top: dict[str, np.ndarray]) -> None:
    """The `trunk_top` group: one dataset per state-dict entry (float32; BN's
    num_batches_tracked int64), named by its full key, and the group's `sha256`
    (`amnet.core.provenance.arrays_sha256`), also a root attribute (`trunk_top_sha256`)."""
    arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in top.items()}
    g = f.create_group(TOP_GROUP)
    for key in sorted(arrays):
        g.create_dataset(key, data=arrays[key])
    g.attrs["sha256"] = f.attrs["trunk_top_sha256"] = arrays_sha256(arrays)


def copy_top(src: h5py.File, dst: h5py.File) -> None:
    """Carry the `trunk_top` group (if any) over into a rewritten or merged cache."""
    if TOP_GROUP in src and TOP_GROUP not in dst:
        src.copy(src[TOP_GROUP], dst, name=TOP_GROUP)


def row_runs(idx: Sequence[int]):
    """Consecutive runs of sorted row indices -> (start, stop, offset into idx)."""
    k = 0
    while k < len(idx):
        j = k
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        yield idx[k], idx[j] + 1, k
        k = j + 1


def write_rows(ds: h5py.Dataset, idx: Sequence[int], arr: np.ndarray) -> None:
    """`ds[idx[k]] = arr[k]` for sorted row indices `idx`, one slice write per consecutive run."""
    for start, stop, k in row_runs(idx):
        ds[start:stop] = arr[k:k + stop - start]


def append_failed(f: h5py.File, items: Sequence[tuple[str, str]]) -> None:
    g = f["failed"]
    n = g["names"].shape[0]
    for key, col in (("names", 0), ("reasons", 1)):
        g[key].resize((n + len(items),))
        g[key][n:] = np.array([it[col] for it in items], dtype=object)


def clear_failed(f: h5py.File) -> int:
    """Forget every recorded failure (`--retry-failed`: those images are extracted again);
    returns how many there were. Both datasets shrink to 0, so a kill in between leaves no
    name paired with another's reason."""
    if "failed" not in f:
        return 0
    g = f["failed"]
    n = int(g["names"].shape[0])
    for key in ("names", "reasons"):
        g[key].resize((0,))
    f.flush()
    return n
