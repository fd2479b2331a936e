"""`amnet-cache extract`: listing, provenance, resume after SIGKILL, refusals, shards + merge.

CPU only, `random:0` weights, tiny images at --image-size 32/64 (grid 2/4). Library calls get the
session's loaded trunk (`backbone=`); CLI runs load it themselves (random:0: ~0.3 s)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

from amnet.core.device import resolve_trunk_precision
from click.testing import CliRunner

from amnet.cli import cache_cli
from amnet.core.errors import CacheError, ImageError, SplitError
from amnet.extract import backbone as B
from amnet.cache.ops import merge
from amnet.cache.reader import FeatureCache
from amnet.extract.image_files import collect_images, list_image_folder, load_resized_uint8
from amnet.extract.run import extract
from conftest import extract_killed_after, subprocess_env, write_image

NAMES = ["UPPER.JPEG"] + [f"img{i:02d}.jpg" for i in range(9)] + ["sub/deep.jpg"]


def run_cli(*args: str):
    return CliRunner().invoke(cache_cli, list(args), catch_exceptions=False)


def test_folder_listing(image_dir):
    write_image(image_dir / ".hidden" / "x.jpg")
    write_image(image_dir / ".dot.jpg")
    items = list_image_folder(image_dir)
    assert [n for n, _ in items] == NAMES  # sorted, posix, recursive, any-case suffix
    assert all(p.is_file() for _, p in items)


def test_list_file_resolution(image_dir, tmp_path):
    lst = image_dir / "list.txt"
    lst.write_text("img03.jpg 0.5\nsub/deep.jpg\n\nimg01.jpg 0.25\n")
    assert [n for n, _ in collect_images(lst)] == ["img03.jpg", "sub/deep.jpg", "img01.jpg"]
    other = tmp_path / "elsewhere.txt"
    other.write_text("img03.jpg\n")
    assert collect_images(other, images_root=image_dir)[0][1] == image_dir / "img03.jpg"
    for line, msg in (("missing.jpg", "missing.jpg' not found"), ("../images/img01.jpg", "'..'"),
                      ("/etc/passwd", "absolute")):
        other.write_text(f"img03.jpg\n{line}\n")
        with pytest.raises(SplitError, match=msg):
            collect_images(other, images_root=image_dir)
    os.symlink(tmp_path / "elsewhere.txt", image_dir / "link.jpg")
    other.write_text("link.jpg\n")
    with pytest.raises(SplitError, match="outside the images root"):
        collect_images(other, images_root=image_dir)
    res = run_cli("extract", str(other), "--out", str(tmp_path / "x.h5"), "--images-root",
                  str(image_dir), "--weights", "random:0")
    assert res.exit_code == 1 and "link.jpg" in res.output and "\n" == res.output[-1:]


def _direct(names, root, size, trunk, spec, flip=False):
    x = torch.stack([load_resized_uint8(root / n, size) for n in names])
    x = B.normalize_uint8(x, spec.mean, spec.std)
    if flip:
        x = x.flip(-1)
    return B.features(trunk, x, "cpu").half()


def test_shapes_dtypes_provenance(image_dir, tmp_path, backbones):
    out = tmp_path / "f.h5"
    trunk, spec = backbones("random:0")
    s = extract(list_image_folder(image_dir), out, weights="random:0", image_size=64, flip=True,
                device="cpu", batch_size=4, progress=False, source=str(image_dir),
                backbone=(trunk, spec))
    assert s["complete"] and s["extracted"] == 11 and s["skipped"] == 0
    with FeatureCache(out) as c:
        assert c.names == NAMES and len(c) == 11 and c.complete and c.has_flip
        assert c.grid == (4, 4) and c.channels == 1024
        a = c.attrs
        assert a["backbone"] == "resnet50" and a["layer"] == "layer3"
        assert a["weights_id"] == "random:0" and a["weights_sha256"] == spec.weights_sha256
        assert a["image_size"] == 64 and a["flip"] is True and a["dtype"] == "float16"
        assert a["mean"] == list(B.IMAGENET_MEAN) and a["std"] == list(B.IMAGENET_STD)
        assert a["precision"] == spec.precision == resolve_trunk_precision("auto", "cpu", "random:0")
        assert a["torch_version"] == torch.__version__
        for key in ("torchvision_version", "amnet_version", "created", "source"):
            assert a[key]
        got = c.load(NAMES[:4])
        assert got.dtype == torch.float16 and got.shape == (4, 1024, 4, 4)
        assert torch.equal(c["img00.jpg"], c[1]) and torch.equal(got[1], c.get(1))
        # the same batch composition as the run's first batch: bit-identical
        assert torch.equal(got, _direct(NAMES[:4], image_dir, 64, trunk, spec))
        flipped = torch.stack([c.get(n, flip=True) for n in NAMES[:4]])
        assert torch.equal(flipped, _direct(NAMES[:4], image_dir, 64, trunk, spec, flip=True))
        assert not torch.equal(flipped, got)
    with h5py.File(out) as f:
        assert f["features"].chunks == (1, 1024, 4, 4) and f["features"].compression is None


@pytest.mark.slow
def test_complete_refusals_and_overwrite(image_dir, tmp_path):
    from amnet.core.device import resolve_trunk_precision
    auto = resolve_trunk_precision("auto", "cpu", "random:0")  # what this host's default resolves to
    other = "bf16" if auto != "bf16" else "fp32"
    out = str(tmp_path / "f.h5")
    base = ["extract", str(image_dir), "--out", out, "--image-size", "32", "--device", "cpu"]
    res = run_cli(*base, "--weights", "random:0")
    assert res.exit_code == 0, res.output
    res = run_cli(*base, "--weights", "random:0")
    assert res.exit_code == 0 and "already complete" in res.output and "nothing to do" in res.output
    for extra, words in ((["--weights", "random:1"], ["weights random:0", "random:1"]),
                         (["--weights", "random:0", "--flip"], ["flip False vs True"]),
                         (["--weights", "random:0", "--precision", other], [f"precision {auto} vs {other}"])):
        res = run_cli(*base, *extra)
        assert res.exit_code == 1 and "other settings" in res.output and "--overwrite" in res.output
        assert all(w in res.output for w in words), res.output
    res = run_cli("extract", str(image_dir), "--out", out, "--weights", "random:0",
                  "--image-size", "64")
    assert res.exit_code == 1 and "image_size 32 vs 64" in res.output
    write_image(image_dir / "zz_new.jpg")
    res = run_cli(*base, "--weights", "random:0")
    assert res.exit_code == 1 and "another image list" in res.output and "zz_new.jpg" in res.output
    res = run_cli(*base, "--weights", "random:1", "--overwrite")
    assert res.exit_code == 0, res.output
    with FeatureCache(out) as c:
        assert c.attrs["weights_id"] == "random:1" and len(c) == 12 and c.complete
    Path(out).write_bytes(b"garbage")
    res = run_cli(*base, "--weights", "random:1")
    assert res.exit_code == 1 and "--overwrite" in res.output


def _cli_subprocess(args, env_extra=None):
    code = "from amnet.cli import cache_cli; cache_cli()"
    return subprocess.run([sys.executable, "-c", code, *args], env=subprocess_env(**(env_extra or {})),
                          capture_output=True, text=True, timeout=300)


def _arrays(path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("features", "features_flip", "views", "views_flip", "done")
                if k in f}


def test_on_batch_is_called_after_each_batch_is_written(image_dir, tmp_path, backbones):
    """on_batch(batches, extracted) comes once per batch, after the batch's rows and done flags
    were written; an exception from it stops the run with those rows kept."""
    calls = []
    out = tmp_path / "f.h5"

    def cb(batches, extracted):
        calls.append((batches, extracted))
        if batches == 2:
            raise KeyboardInterrupt  # as a user's Ctrl-C at that point would

    kw = dict(weights="random:0", image_size=32, device="cpu", batch_size=4, progress=False,
              backbone=backbones("random:0"))
    with pytest.raises(KeyboardInterrupt):
        extract(list_image_folder(image_dir), out, on_batch=cb, **kw)
    assert calls == [(1, 4), (2, 8)]
    with FeatureCache(out) as c:  # both batches' rows are on disk and marked done
        assert [n for n in c.names if n in c] == NAMES[:8] and not c.complete
    s = extract(list_image_folder(image_dir), out, on_batch=lambda b, e: calls.append((b, e)), **kw)
    assert s["already"] == 8 and s["extracted"] == 3 and s["complete"]
    assert calls[2:] == [(1, 3)]  # counted per run


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(image_dir, tmp_path, backbones):
    """fp32, one image per batch: the resumed file holds the same bytes as an uninterrupted run."""
    out = tmp_path / "killed.h5"
    kw = dict(weights="random:0", image_size=32, device="cpu", batch_size=1, workers=0,
              precision="fp32")
    # SIGKILL after 6 batches were written: 4 flushed, 2 maybe not
    p = extract_killed_after(tmp_path, image_dir, out, 6, **kw)
    assert p.returncode == -signal.SIGKILL, p.stderr
    with FeatureCache(out) as c:  # still a readable cache, partly done
        have = [n for n in c.names if n in c]
        assert 4 <= len(have) <= 6 and not c.complete
        assert have == NAMES[:len(have)]
        assert c.missing(NAMES) == [n for n in NAMES if n not in have]
    args = ["extract", str(image_dir), "--out", str(out), "--weights", "random:0",
            "--image-size", "32", "--batch-size", "1", "--device", "cpu", "--workers", "0",
            "--precision", "fp32"]
    p = _cli_subprocess(args)  # resumed by the command line
    assert p.returncode == 0, p.stderr
    assert f"{11 - len(have)} images" in p.stderr and f"{len(have)} already there" in p.stderr
    ref = tmp_path / "ref.h5"
    extract(list_image_folder(image_dir), ref, progress=False,
            backbone=backbones("random:0", "fp32"), **kw)
    with FeatureCache(out) as a, FeatureCache(ref) as b:
        assert a.complete and a.names == b.names and a.attrs["precision"] == "fp32"
    a, b = _arrays(out), _arrays(ref)
    assert set(a) == set(b) == {"features", "done"}
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)  # byte-identical
    assert run_cli("verify", str(out)).exit_code == 0


@pytest.mark.slow
def test_on_error_fail_keeps_progress_then_skip(image_dir, tmp_path, backbones):
    write_image(image_dir / "img04b.jpg", "truncated")  # 6th in sorted order
    out = tmp_path / "f.h5"
    items = list_image_folder(image_dir)
    with pytest.raises(ImageError, match=r"img04b\.jpg: cannot decode"):
        extract(items, out, weights="random:0", image_size=32, device="cpu", batch_size=2,
                progress=False, backbone=backbones("random:0"))
    with FeatureCache(out) as c:
        have = [n for n in c.names if n in c]
        assert have == ["UPPER.JPEG", "img00.jpg", "img01.jpg", "img02.jpg", "img03.jpg",
                        "img04.jpg", "img05.jpg"]  # all before the bad file, and its batch-mate
    res = run_cli("extract", str(image_dir), "--out", str(out), "--weights", "random:0",
                  "--image-size", "32", "--batch-size", "2")
    assert res.exit_code == 1 and "img04b.jpg" in res.output and "kept" in res.output
    s = extract(items, out, weights="random:0", image_size=32, device="cpu", batch_size=2,
                on_error="skip", progress=False, backbone=backbones("random:0"))
    assert s["complete"] and s["skipped"] == 1 and s["extracted"] == 3 and s["already"] == 8  # the CLI run did img06
    with FeatureCache(out) as c:
        assert c.missing(c.names) == ["img04b.jpg"] and "truncated" in c.failed["img04b.jpg"]
        with pytest.raises(CacheError, match="img04b.jpg' has no features: .*truncated"):
            c["img04b.jpg"]
    assert run_cli("verify", str(out)).exit_code == 0  # a recorded skip is not a problem


@pytest.mark.slow
def test_shards_and_merge_equal_single_run(image_dir, tmp_path, backbones, monkeypatch):
    items = list_image_folder(image_dir)
    kw = dict(weights="random:0", image_size=32, device="cpu", batch_size=1, progress=False,
              flip=True, backbone=backbones("random:0"))
    extract(items, tmp_path / "single.h5", **kw)
    shards = []
    for i in range(3):
        if i == 1:  # torchrun: rank and world size from the environment, file name from them
            monkeypatch.setenv("RANK", "1")
            monkeypatch.setenv("WORLD_SIZE", "3")
            s = extract(items, tmp_path / "s.h5", **kw)
            monkeypatch.delenv("RANK")
            monkeypatch.delenv("WORLD_SIZE")
        else:
            s = extract(items, tmp_path / "s.shard{i}of{n}.h5", shard=(i, 3), **kw)
        shards.append(Path(s["out"]))
    assert shards[1] == tmp_path / "s.shard1of3.h5"
    assert [len(FeatureCache(p)) for p in shards] == [4, 4, 3]
    res = run_cli("merge", str(tmp_path / "m.h5"), *map(str, reversed(shards)))
    assert res.exit_code == 0, res.output
    with FeatureCache(tmp_path / "m.h5") as m, FeatureCache(tmp_path / "single.h5") as one:
        assert m.names == one.names and m.complete and m.has_flip
        assert torch.equal(m.load(m.names), one.load(one.names))
        assert torch.equal(m.load(m.names, flip=True), one.load(one.names, flip=True))
        assert "shard_index" not in m.attrs and m.attrs["weights_sha256"] == one.attrs["weights_sha256"]
    assert run_cli("verify", str(tmp_path / "m.h5")).exit_code == 0
    # refusals: overlapping names, a shard with a cache that is none, other settings, existing
    # output (incomplete and overlapping shard sets: tests/test_cache_lifecycle.py)
    with pytest.raises(CacheError, match="disjoint"):
        merge(tmp_path / "m2.h5", [tmp_path / "m.h5", tmp_path / "single.h5"])
    with pytest.raises(CacheError, match="single.h5: not a shard, but .*s.shard0of3.h5 is one"):
        merge(tmp_path / "m2.h5", [shards[0], tmp_path / "single.h5"])
    extract(items[:2], tmp_path / "other.h5", **{**kw, "image_size": 48})
    with pytest.raises(CacheError, match="settings differ"):
        merge(tmp_path / "m2.h5", [shards[2], tmp_path / "other.h5"])
    with pytest.raises(CacheError, match="already exists"):
        merge(tmp_path / "m.h5", shards)
