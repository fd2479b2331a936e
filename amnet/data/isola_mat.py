"""Isola/SUN MATLAB layout (LNSIM is one): `Image_data/*.jpg` + `Random_splits/subject_hrs{1,2}.mat`.

Each .mat holds one float array `(S, N)`: for random split k (row k-1) and image j (column j, the
j-th image in numeric order, `{j+1:04d}.jpg` in LNSIM), the hit rate from one half of the
observers (hrs1) or the other, disjoint half (hrs2). The files hold no image halves, so for each
split k we draw them (Isola et al. 2011's protocol):

    rng = numpy.random.default_rng([seed, k]);  perm = rng.permutation(N)
    train half = perm[:N // 2] with hrs1[k-1] scores; a random `val_fraction` of it becomes val
    test half  = perm[N // 2:] with hrs2[k-1] scores

Human consistency, Spearman rho(hrs1[k-1], hrs2[k-1]) over the test half, is the ceiling a model
can be compared with; it goes to prepare.json (`human_consistency`) and `splits/human_<k>.json`
(also over all images: LNSIM's mean over 25 splits is 0.779).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from amnet.core.errors import AmnetError
from amnet.core.metrics import spearman
from amnet.core.provenance import file_sha256
from amnet.data import build
from amnet.data.listfiles import RootChecker

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def load_scores(path: Path, n_images: int | None = None) -> np.ndarray:
    """The one numeric 2-D array in a MATLAB file, as float64 `[S, N]` (N = images)."""
    import scipy.io

    if not path.is_file():
        raise AmnetError(f"{path}: not found")
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy raises this for v7.3 (HDF5) files
        raise AmnetError(f"{path}: MATLAB v7.3 file, which scipy cannot read; re-save it with "
                         "save(..., '-v7')") from None
    except Exception as e:  # scipy raises many kinds (MatReadError, IndexError...) on junk
        raise AmnetError(f"{path}: not a readable MATLAB file ({e})") from None
    arrays = {k: v for k, v in data.items() if not k.startswith("__")
              and isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype.kind in "fiu"}
    preferred = arrays.get(path.stem)  # LNSIM names the variable after the file
    if preferred is None:
        if len(arrays) != 1:
            raise AmnetError(f"{path}: expected one 2-D numeric variable, found "
                             f"{sorted(arrays) or 'none'}")
        preferred = next(iter(arrays.values()))
    scores = np.asarray(preferred, dtype=np.float64)
    if n_images is not None and scores.shape[1] != n_images and scores.shape[0] == n_images:
        scores = scores.T  # stored (N, S)
    return scores


def list_images(folder: Path) -> list[str]:
    """Image file names in `folder`, numeric stems in numeric order (0001.jpg, 0002.jpg, ...)."""
    if not folder.is_dir():
        raise AmnetError(f"{folder}: images folder not found")
    names = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")]
    if not names:
        raise AmnetError(f"{folder}: no images")
    if all(re.fullmatch(r"\d+", Path(n).stem) for n in names):
        return sorted(names, key=lambda n: (int(Path(n).stem), n))
    return sorted(names)


def convert(stage: Path, *, root: str | Path, splits: int | Sequence[int] | None = None,
            val_fraction: float = 0.1, seed: int = 0, images_dir: str = "Image_data",
            splits_dir: str = "Random_splits", hrs1: str = "subject_hrs1.mat",
            hrs2: str = "subject_hrs2.mat",
            score_range: tuple[float, float] | None = (0.0, 1.0),
            link: str = "symlink") -> dict[str, Any]:
    """Isola protocol splits from `root`; splits: None = all rows of the .mat, n = 1..n, or a list."""
    root = Path(root)
    if not root.is_dir():
        raise AmnetError(f"{root}: not found; point root at the folder holding {images_dir}/ "
                         f"and {splits_dir}/")
    names = list_images(root / images_dir)
    checker = RootChecker(root / images_dir)
    for name in names:
        if (problem := checker.problem(name)) is not None:
            raise AmnetError(f"{root / images_dir}: {problem}")
    n = len(names)
    paths = [root / splits_dir / hrs1, root / splits_dir / hrs2]
    s1, s2 = (load_scores(p, n) for p in paths)
    for path, s in zip(paths, (s1, s2)):
        if s.shape[1] != n:
            raise AmnetError(f"{path}: {s.shape[1]} columns (images) but {root / images_dir} "
                             f"holds {n} images")
    if s1.shape != s2.shape:
        raise AmnetError(f"{paths[0]} and {paths[1]} differ in shape: {s1.shape} vs {s2.shape}")
    ks = build.parse_splits(splits, default=s1.shape[0], maximum=s1.shape[0])
    val_fraction = build.check_fraction("val_fraction", val_fraction)
    for path, s in zip(paths, (s1, s2)):
        rows = s[[k - 1 for k in ks]]
        bad = ~np.isfinite(rows)
        if score_range is not None:
            bad |= (rows < score_range[0]) | (rows > score_range[1])
        if bad.any():
            r, j = map(int, np.argwhere(bad)[0])
            raise AmnetError(f"{path}: split {ks[r]}, image {names[j]}: score {rows[r, j]:g} is "
                             f"not finite or outside the declared range {list(score_range or [])}")

    human: dict[str, dict[str, float]] = {}
    half = n // 2
    for k in ks:
        order = build.rng_for(seed, k).permutation(n)
        train_idx, test_idx = np.sort(order[:half]), np.sort(order[half:])
        train = [(names[j], float(s1[k - 1, j])) for j in train_idx]
        test = [(names[j], float(s2[k - 1, j])) for j in test_idx]
        train, val = build.carve(train, val_fraction, build.rng_for(seed, k, 1))
        build.write_parts(stage, k, train, val, test)
        human[str(k)] = {
            "rho_test_half": round(spearman(s1[k - 1, test_idx], s2[k - 1, test_idx]), 6),
            "rho_all_images": round(spearman(s1[k - 1], s2[k - 1]), 6),
            "n_test": int(len(test_idx))}
        (stage / "splits" / f"human_{k}.json").write_text(
            json.dumps({"split": k, **human[str(k)]}, indent=2, sort_keys=True) + "\n")
    rhos = np.array([h["rho_test_half"] for h in human.values()])
    source = build.link_images(stage, root / images_dir, link,
                               names=None if link == "symlink" else names)
    return {
        "source": str(Path(os.path.realpath(root))), "images_source": str(source),
        "splits": ks, "seed": int(seed),
        "protocol": "isola: image halves drawn per split; train+val on hrs1, test on hrs2",
        "val": {"fraction": val_fraction, "from": "train half, hrs1 scores",
                "rng": "numpy.random.default_rng([seed, k, 1]).permutation"},
        "halves": {"rng": "numpy.random.default_rng([seed, k]).permutation(N); "
                          "first N//2 train, rest test"},
        "score_files": {p.name: file_sha256(p) for p in paths},
        "human_consistency": {"per_split": human, "mean": round(float(rhos.mean()), 6),
                              "sd": round(float(rhos.std(ddof=1)) if len(rhos) > 1 else 0.0, 6),
                              "measure": "spearman(hrs1, hrs2) on each test half"},
        "options": {"images_dir": images_dir, "splits_dir": splits_dir, "hrs1": hrs1,
                    "hrs2": hrs2, "val_fraction": val_fraction, "link": link},
        "_versions": ("scipy",),
    }
