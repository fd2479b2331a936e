"""amnet.core.atomic: a file is replaced whole or not at all, and no temporary file stays behind."""
from __future__ import annotations

import os

import numpy as np
import pytest


def test_atomic_writes_and_cleanup(tmp_path):
    from amnet.core.atomic import atomic_open, atomic_path, atomic_write_text, temp_path

    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one\n")
    assert target.read_text() == "one\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    # a failure leaves the old file and no temporary one
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "one\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    # a library writing the file itself (here: numpy), recognisable temp name
    out = tmp_path / "x.npy"
    with atomic_path(out, tag="creating") as tmp:
        assert tmp == temp_path(out, "creating") and tmp.parent == out.parent
        assert tmp.name == f".x.creating-{os.getpid()}.npy"
        assert temp_path(tmp_path / "t.csv.gz").name == f".t.tmp-{os.getpid()}.csv.gz"
        np.save(tmp, np.arange(3))
        assert not out.exists()
    assert np.load(out).tolist() == [0, 1, 2]
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "y.npy") as tmp:
            np.save(tmp, np.arange(3))
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "x.npy"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
