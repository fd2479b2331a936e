"""SUN Memorability as processed for AMNet: `images/` + `splits/{train,test}_{1..25}.txt`.

The files are in LaMem's format (Isola protocol: 25 random splits of 1,111 train / 1,111 test)
and carry no validation lists. AMNet selected its SUN models on the test split, which is
optimistic; here each split's validation list is carved from its train list instead
(`val_fraction`, default 10%, drawn with `numpy.random.default_rng([seed, k])` and recorded in
prepare.json), so test is only ever used for the final number. A `val_<k>.txt` already present
in the source is used as it is.

The release (SUN_memorability.zip, see spec section 5) is on Google Drive, which cannot be
fetched non-interactively: unpack it by hand and point `root` at the folder holding images/ and
splits/ (or a folder one or two levels above it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from amnet.core.errors import AmnetError
from amnet.data.lamem import convert_lamem_format, find_layout

SUN_URL = "https://drive.google.com/file/d/1cLtjeQF949n0-Hm8WR3uzOcEo6hQcbC4/view"


def convert(stage: Path, *, root: str | Path, splits: int | Sequence[int] | None = None,
            val_fraction: float = 0.1, seed: int = 0,
            score_range: tuple[float, float] | None = (0.0, 1.0),
            link: str = "symlink") -> dict[str, Any]:
    """SUN from `root`; splits: None = all found (1..25), n = 1..n, or a list of numbers."""
    root = Path(root)
    layout = find_layout(root)
    if layout is None:
        raise AmnetError(f"SUN Memorability not found under {root} (no images/ + "
                         f"splits/train_1.txt): download SUN_memorability.zip from {SUN_URL}, "
                         f"unpack it there by hand, and run prepare again")
    info = convert_lamem_format(stage, layout, splits=splits, val_fraction=val_fraction,
                                seed=seed, score_range=score_range, link=link)
    info["options"] = {"link": link}
    return info
