"""Stage one over many processes: which shard of the list a process extracts, and its file.

Each process takes every n-th image (`--shard I/N`, or `auto`: torchrun's RANK / WORLD_SIZE) into
a file of its own; `amnet-cache merge` (amnet.cache.ops) joins the files back (amnet/extract/run.py
says why no process group is needed).
"""
from __future__ import annotations

import os
from pathlib import Path

from amnet.core.errors import CacheError


def auto_shard() -> tuple[int, int]:
    """`--shard auto`: (RANK, WORLD_SIZE) as torchrun sets them for each process (RANK counts
    over all nodes), (0, 1) outside torchrun. CacheError for values that are not a shard."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    try:
        i, n = int(rank), int(world)
    except ValueError:
        i = n = -1
    if not (n >= 1 and 0 <= i < n):
        raise CacheError(f"--shard auto: RANK={rank!r} and WORLD_SIZE={world!r} in the "
                         "environment are not a shard (0 <= RANK < WORLD_SIZE); launch with "
                         "torchrun, or pass --shard I/N")
    return i, n


def shard_from_env() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun (WORLD_SIZE > 1), else None."""
    return auto_shard() if os.environ.get("WORLD_SIZE", "1") != "1" else None


def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    """The file of shard (i, n): `{i}`/`{n}` placeholders in `out` filled (`part{i}.h5` ->
    `part0.h5`), or else `.shard<i>of<n>` put before the extension (`feats.h5` ->
    `feats.shard0of4.h5`; also when `out` has `{n}` only), so that shards never share a file."""
    i, n = shard
    text = str(out)
    filled = Path(text.replace("{i}", str(i)).replace("{n}", str(n)))
    if "{i}" in text:
        return filled
    return filled.with_name(f"{filled.stem}.shard{i}of{n}{filled.suffix}")


def resolve_shard(out: Path, shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """The shard a run extracts: "auto" is (RANK, WORLD_SIZE), or None (the whole list, into OUT
    itself) outside torchrun when OUT has no `{i}`/`{n}`; None is the environment's shard under
    torchrun (every rank got the same --out), else None; a tuple is itself."""
    if shard == "auto":
        shard = auto_shard()
        if shard == (0, 1) and "{i}" not in str(out) and "{n}" not in str(out):
            return None  # not under torchrun: the whole list, into OUT itself
        return shard
    if shard is None:
        return shard_from_env()
    return shard
