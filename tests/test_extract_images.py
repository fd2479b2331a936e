"""Every bad-image case: odd modes are converted to RGB; undecodable files fail or are skipped."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from amnet.cli import cache_cli
from amnet.core.errors import ImageError
from amnet.cache.reader import FeatureCache
from amnet.extract.image_files import open_image_rgb
from conftest import BAD_KINDS, GOOD_KINDS, rgb_array, write_image

SUFFIX = {"palette": "png", "rgba": "png", "png16": "png", "png16rgb": "png", "bmp": "bmp",
          "webp": "webp", "bomb": "png"}
REASON = {"truncated": "truncated", "empty": "empty file (0 bytes)",
          "text": "not an image", "bomb": "decompression bomb"}


def _path(root, kind):
    return root / f"{kind}.{SUFFIX.get(kind, 'jpg')}"


@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_good_kinds_decode_to_rgb(tmp_path, kind):
    img = open_image_rgb(write_image(_path(tmp_path, kind), kind))
    assert img.mode == "RGB"
    a = np.asarray(img).astype(float)
    ref = rgb_array().astype(float)
    if kind == "exif":  # stored 48x40 with orientation 6: shown rotated 90 degrees clockwise
        assert img.size == (40, 48)
        ref = np.rot90(ref, k=-1)
    else:
        assert img.size == (48, 40)
    if kind == "gray":
        ref = np.repeat(np.asarray(Image.fromarray(rgb_array()).convert("L"), float)[..., None], 3, 2)
    if kind == "png16":  # written as the channel mean x 257: scaled back, not clipped at 255
        ref = np.repeat(np.floor(rgb_array().mean(axis=2))[..., None], 3, 2)
    # lossy JPEG (noisy picture) / 16-colour palette round trips: close, not equal; never white
    tol = 1.5 if kind in ("rgba", "png16", "png16rgb", "bmp", "webp") else 30
    err = np.abs(a - ref).mean()
    assert err < tol, (kind, err)
    if kind == "exif":  # the other rotation is far worse
        assert np.abs(a - np.rot90(rgb_array().astype(float), k=1)).mean() > 2 * err


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_kinds_raise_image_error_naming_file(tmp_path, kind):
    path = write_image(_path(tmp_path, kind), kind)
    with pytest.raises(ImageError) as e:
        open_image_rgb(path)
    assert str(path) in str(e.value) and REASON[kind] in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_extract_converts_good_and_skips_or_fails_on_bad(tmp_path):
    root = tmp_path / "imgs"
    for kind in GOOD_KINDS + BAD_KINDS:
        write_image(_path(root, kind), kind)
    out = tmp_path / "f.h5"
    base = ["extract", str(root), "--out", str(out), "--weights", "random:0", "--image-size", "32",
            "--batch-size", "4", "--device", "cpu"]
    res = CliRunner().invoke(cache_cli, base)
    assert res.exit_code == 1 and "bmp.bmp" not in res.output
    first_bad = sorted(p.name for p in root.iterdir() if p.stem in BAD_KINDS)[0]
    assert first_bad in res.output and "kept" in res.output
    res = CliRunner().invoke(cache_cli, base + ["--on-error", "skip"])
    assert res.exit_code == 0, res.output
    assert "4 failed in total" in res.output and "complete" in res.output
    with FeatureCache(out) as c:
        assert sorted(c.failed) == sorted(_path(root, k).name for k in BAD_KINDS)
        for k in BAD_KINDS:
            assert REASON[k] in c.failed[_path(root, k).name]
        good = [_path(root, k).name for k in GOOD_KINDS]
        assert c.missing(good) == []
        x = c.load(good).float()
        assert x.isfinite().all() and x.shape == (len(GOOD_KINDS), 1024, 2, 2)
    res = CliRunner().invoke(cache_cli, base)  # complete (with recorded failures): nothing to do
    assert res.exit_code == 0 and "already complete" in res.output
