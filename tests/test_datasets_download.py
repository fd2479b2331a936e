"""LaMem download: offline message, resume over HTTP Range, size/checksum checks, unpacking.

A local http.server on 127.0.0.1 (port chosen by the OS) serves a tiny LaMem-format tar.gz; it
stops in the fixture's teardown, and a timer stops it after 60 s whatever happens.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import RangeServer as Server

from amnet.core.errors import AmnetError
from amnet.data import prepare_dataset
from amnet.data.lamem import fetch
from amnet.data.listfiles import read_split, split_path

UNREACHABLE = "http://127.0.0.1:9/lamem.tar.gz"  # discard port: connection refused at once


def lamem_archive(n: int = 12) -> bytes:
    """A tar.gz with lamem/images/*.jpg and lamem/splits/{train,val,test}_1.txt."""
    buf = io.BytesIO()
    names = [f"{i:08d}.jpg" for i in range(n)]
    files = {f"lamem/images/{name}": b"\xff\xd8" + bytes(range(256)) * 40 for name in names}
    files["lamem/splits/train_1.txt"] = "".join(f"{x} 0.{i + 10}0000\n" for i, x in
                                                enumerate(names[:6])).encode()
    files["lamem/splits/val_1.txt"] = "".join(f"{x} 0.700000\n" for x in names[6:9]).encode()
    files["lamem/splits/test_1.txt"] = "".join(f"{x} 0.800000\n" for x in names[9:]).encode()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def server():
    with Server(lamem_archive(), "lamem.tar.gz", lifetime=60) as s:
        yield s


def test_offline_gives_one_clear_line(tmp_path: Path) -> None:
    root = tmp_path / "lamem-src"
    with pytest.raises(AmnetError) as e:
        prepare_dataset("lamem", tmp_path / "out", root=root, download=True, url=UNREACHABLE,
                        timeout=5)
    msg = str(e.value)
    assert msg.startswith(f"cannot download {UNREACHABLE}") and "\n" not in msg
    assert "by hand from http://memorability.csail.mit.edu/download.html" in msg
    assert str(root / "lamem.tar.gz") in msg and f"{root}/splits/train_1.txt" in msg
    assert not (tmp_path / "out").exists()
    assert not list(root.glob("*.part"))


def test_resume_after_interruption(tmp_path: Path, server: Server) -> None:
    dest = tmp_path / "lamem.tar.gz"
    server.cut_after = 1000
    with pytest.raises(AmnetError, match="run again to resume"):
        fetch(server.url, dest, retries=0)
    part = tmp_path / "lamem.tar.gz.part"
    assert part.stat().st_size == 1000 and not dest.exists()
    info = fetch(server.url, dest)
    assert server.ranges == [None, "bytes=1000-"]
    assert dest.read_bytes() == server.payload and not part.exists()
    assert info == {"url": server.url, "size": len(server.payload),
                    "sha256": hashlib.sha256(server.payload).hexdigest()}


def test_retries_resume_within_one_call(tmp_path: Path, server: Server) -> None:
    server.cut_after = 500
    fetch(server.url, tmp_path / "a.tgz", retries=2)
    assert server.ranges == [None, "bytes=500-"]
    assert (tmp_path / "a.tgz").read_bytes() == server.payload


def test_server_ignoring_range_restarts(tmp_path: Path, server: Server) -> None:
    server.honour_range = False
    (tmp_path / "a.tgz.part").write_bytes(b"garbage" * 10)
    fetch(server.url, tmp_path / "a.tgz")
    assert server.ranges == ["bytes=70-"]
    assert (tmp_path / "a.tgz").read_bytes() == server.payload


def test_complete_part_gets_416_and_is_accepted(tmp_path: Path, server: Server) -> None:
    (tmp_path / "a.tgz.part").write_bytes(server.payload)
    fetch(server.url, tmp_path / "a.tgz")
    assert (tmp_path / "a.tgz").read_bytes() == server.payload


def test_size_and_checksum_checks(tmp_path: Path, server: Server) -> None:
    with pytest.raises(AmnetError, match="expected 5"):
        fetch(server.url, tmp_path / "a.tgz", expected_size=5)
    assert not (tmp_path / "a.tgz").exists()
    with pytest.raises(AmnetError, match="has sha256 .* expected 00"):
        fetch(server.url, tmp_path / "a.tgz", sha256="00" * 32)
    assert not (tmp_path / "a.tgz").exists()
    good = hashlib.sha256(server.payload).hexdigest()
    fetch(server.url, tmp_path / "a.tgz", sha256=good, expected_size=len(server.payload))
    with pytest.raises(AmnetError, match="HTTP 404"):
        fetch(server.url.replace("lamem", "other"), tmp_path / "b.tgz")


def test_prepare_downloads_and_unpacks(tmp_path: Path, server: Server) -> None:
    root, out = tmp_path / "src", tmp_path / "data" / "lamem"
    info = prepare_dataset("lamem", out, root=root, download=True, url=server.url)
    assert info["download"]["sha256"] == hashlib.sha256(server.payload).hexdigest()
    assert info["source"] == str((root / "lamem").resolve()) and info["splits"] == [1]
    assert info["counts"]["1"]["train"] == 6
    assert not (root / "lamem.tar.gz").exists()  # unpacked, so no longer needed
    assert json.loads((root / "lamem.download.json").read_text()) == info["download"]
    assert read_split(split_path(out, "test", 1), images_root=out / "images")
    # A second prepare finds the unpacked files: no request, same record.
    n_requests = len(server.ranges)
    again = prepare_dataset("lamem", tmp_path / "again", root=root, download=True, url=server.url)
    assert len(server.ranges) == n_requests and again["download"] == info["download"]


def test_archive_put_by_hand_is_unpacked(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "lamem.tar.gz").write_bytes(lamem_archive())
    info = prepare_dataset("lamem", tmp_path / "out", root=root, keep_archive=True)
    assert info["splits"] == [1] and (root / "lamem.tar.gz").exists()


def test_corrupt_archive(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "lamem.tar.gz").write_bytes(lamem_archive()[:300])
    with pytest.raises(AmnetError, match="cannot unpack .* delete it and run again"):
        prepare_dataset("lamem", tmp_path / "out", root=root)
    assert not (root / ".unpack.tmp").exists() and not (tmp_path / "out").exists()
