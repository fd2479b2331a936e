"""One progress bar for every long loop (extract, verify, train, predict, downloads), and
`duration`, the ETA of a line.

Shown only where a person watches: stderr is a terminal and CI is not set (design.md,
"quiet when not a terminal or in CI"); `enabled=False` turns it off outright.
"""
from __future__ import annotations

import os
import shutil
import sys


def progress_bar(total: int | None, desc: str, enabled: bool = True, initial: int = 0,
                 unit: str = "img", **kwargs):
    """A tqdm bar on stderr with rate and ETA (`unit`/s); a no-op bar where nobody watches."""
    from tqdm import tqdm
    # some ttys (script, docker -t) report 0 x 0, and tqdm then hides the bar
    cols, rows = shutil.get_terminal_size((100, 24))
    show = enabled and sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, smoothing=0.05,
                ncols=cols or 100, nrows=rows or 24, disable=not show, **kwargs)


def duration(seconds: float) -> str:
    """A time span as a person reads it: `42 s`, `1 min 05 s`, `2 h 03 min`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
