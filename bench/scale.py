"""LaMem scale on one machine: how time, disk and memory grow from 500 to 45,000 images (issue 23).

    python bench/scale.py                                  # the full run -> docs/bench/scale.json
    python bench/scale.py --max-n 2000 --out x.json        # the small end, a few minutes
    python bench/scale.py --render                         # the README block, no compute

Extract rows: `amnet.extract.run.extract` (what `amnet-cache extract` runs) over N synthetic
256 x 256 JPEGs (LaMem's images are about that size), random:0 weights, `--precision auto`.
Train rows: a cache of N rows written with the real writer (`amnet.cache.writer`), features of
the real shape and dtype (`[1024, 14, 14]` float16, a noise pattern plus the score times a fixed
map: learnable), fed through the real `attach_sources` (Preloaded or Lazy, chosen by "auto"
under `--ram-budget`) to `train_epoch` for `--steps` batches of 222 (an epoch of 45,000 images
takes over an hour on 2 cores: the epoch time is steps-scaled, `epoch_s_est`). Lazy rows also
time the reading alone (no head): one `get` per row in batch order (before) against
`read_batch`'s sorted reads (after), from a cold page cache (posix_fadvise DONTNEED).

Each row runs in its own process; peak RSS is that process plus its workers, sampled every 0.1 s.
Rows are written to the JSON as they finish, and a rerun skips the rows it already holds (same
stage, n, feeding and parameters). The big synthetic caches are deleted after each row.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import record  # noqa: E402
from bench.scale_model import render  # noqa: E402,F401 -- the README block (test_readme_numbers)

EXTRACT_N = (500, 1000, 5000)
# (n, preload): "auto" goes lazy by itself once the cache passes half the RAM budget
TRAIN_ROWS = ((1000, "auto"), (1000, "lazy"), (2000, "auto"), (5000, "auto"), (10000, "auto"),
              (20000, "auto"), (45000, "auto"))
IMAGE_SIZE = 256
FEED_BATCHES = 6


class PeakRSS:
    """Peak resident memory of this process and its children (DataLoader workers), summed."""

    def __init__(self, every: float = 0.1):
        import psutil
        self.proc, self.peak, self.every = psutil.Process(), 0, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.every)

    def sample(self) -> None:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 -- a worker that just exited
                pass
        self.peak = max(self.peak, total)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def drop_page_cache(path: Path) -> None:
    """Evict `path` from the OS page cache: reads that follow come from the disk, as they do for
    a cache larger than RAM."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_images(folder: Path, n: int) -> list[tuple[str, Path]]:
    """n synthetic 256 x 256 JPEGs (smooth colour fields with noise and a disk), made once."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    items = []
    for i in range(n):
        path = folder / f"img{i:06d}.jpg"
        if not path.exists():
            a, b, c = rng.random((3, 3))
            img = (a[:, None, None] * xx + b[:, None, None] * yy + c[:, None, None]) * 120
            cx, cy, r = rng.random(3) * [1, 1, 0.3]
            img += 80 * (((xx - cx) ** 2 + (yy - cy) ** 2) < r ** 2)
            img += rng.normal(0, 12, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(path, quality=90)
        items.append((path.name, path))
    return items


def write_cache(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """A complete n-row cache through `amnet.cache.writer` (float16 `[n, 1024, 14, 14]`);
    returns the scores `[n]` its features encode."""
    from amnet.cache.schema import settings_attrs
    from amnet.cache.writer import create, write_rows
    from amnet.extract.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec

    rng = np.random.default_rng(seed)
    # 256 distinct rows (noise + score x a fixed sparse map), each image a copy of one: writing
    # 17.6 GB is then a gather and the disk, not float16 arithmetic
    levels = (0.4 + 0.5 * rng.random(256)).astype(np.float32)
    noise = rng.standard_normal((16, 1024, 14, 14)).astype(np.float32)
    signal = rng.standard_normal((1024, 14, 14)) * (rng.random((1, 14, 14)) < 0.2)
    table = (noise[np.arange(256) % 16] + 4 * (levels - 0.65)[:, None, None, None] * signal
             ).astype(np.float16)
    pick = rng.integers(0, 256, n)
    scores = levels[pick]
    spec = BackboneSpec(weights_id="random:0", arch="resnet50", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, weights_sha256="00" * 32)
    names = [f"img{i:06d}.jpg" for i in range(n)]
    with create(path, names, settings_attrs(spec, 224, False, 1024, (14, 14))) as f:
        for s in range(0, n, 256):
            k = min(256, n - s)
            write_rows(f["features"], list(range(s, s + k)), table[pick[s:s + k]])
        f["done"][:] = True
        f.attrs["complete"] = True
    return scores


def extract_row(p: dict) -> dict:
    """One extract row (in a child process): seconds and images/s of `extract()`."""
    import torch

    from amnet.extract.run import auto_workers, extract
    items = make_images(Path(p["workdir"]) / "images", p["n"])
    out = Path(p["workdir"]) / f"extract-{p['n']}.h5"
    workers = auto_workers(torch.device("cpu"))
    with PeakRSS() as rss:
        s = extract(items, out, weights="random:0", device="cpu", batch_size=32, workers=workers,
                    progress=False, precision="auto", overwrite=True)
    size = out.stat().st_size
    out.unlink()
    return {"seconds": s["seconds"], "images_per_s": s["images_per_s"],
            "s_per_item": s["seconds"] / p["n"], "peak_rss_mb": rss.peak / 2**20,
            "cache_gb": size / 1e9, "precision": s["precision"], "workers": workers,
            "threads": s["threads"], "load_avg_1min": os.getloadavg()[0]}


def feed_rate(cache, names: list[str], seed: int, sorted_reads: bool) -> float:
    """Rows/s of reading FEED_BATCHES random batches of 222 from the file, no head."""
    import torch

    from amnet.head.feeding import read_batch
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(FEED_BATCHES):
        batch = [names[i] for i in rng.choice(len(names), 222, replace=False)]
        if sorted_reads:
            read_batch(cache, batch, [False] * 222, [0] * 222)
        else:  # what Lazy did before: one get per row, in the batch's (random) order
            torch.stack([cache.get(n) for n in batch])
    return FEED_BATCHES * 222 / (time.perf_counter() - t0)


def train_row(p: dict) -> dict:
    """One train row (in a child process): attach_sources + `steps` batches of train_epoch."""
    import torch

    from dataclasses import replace

    from amnet.core.device import resolve_head_precision, seed_everything
    from amnet.core.settings import AMNetConfig, TrainConfig
    from amnet.head.epochs import train_epoch
    from amnet.head.feeding import SplitPart, attach_sources, open_cache
    from amnet.head.model import AMNet

    path = Path(p["cache"])
    scores = np.load(path.with_suffix(".scores.npy"))
    dev = torch.device("cpu")
    cfg = TrainConfig(batch_size=p["batch"], preload=p["preload"])
    seed_everything(0)
    drop_page_cache(path)
    with PeakRSS() as rss, open_cache(path) as cache:
        part = SplitPart(cache.names, scores)
        t0 = time.perf_counter()
        mode = attach_sources(path, cache, {"train": part}, {}, cfg.preload, cfg.workers, dev,
                              ram_budget=int(p["ram_budget_gb"] * 1e9))
        setup_s = time.perf_counter() - t0
        model = AMNet(replace(AMNetConfig(), target_mean=float(scores.mean())))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        precision = resolve_head_precision("auto", dev)
        targets = torch.from_numpy(scores)
        # one untimed batch first: kernel set-up and the lazy workers' start are not per-item costs
        train_epoch(model, opt, part, targets, torch.Generator().manual_seed(1), False, cfg, dev,
                    precision, None, max_batches=1)
        t0 = time.perf_counter()
        loss = train_epoch(model, opt, part, targets, torch.Generator().manual_seed(0), False, cfg,
                           dev, precision, None, max_batches=p["steps"])
        steps_s = time.perf_counter() - t0
        part.source.close()
        feed = {}
        if mode == "lazy":  # the reading alone, cold: before (get per row) and after (sorted)
            for key, seed, sorted_reads in (("feed_rows_per_s_get", 1, False),
                                            ("feed_rows_per_s_sorted", 2, True)):
                drop_page_cache(path)
                feed[key] = feed_rate(cache, cache.names, seed, sorted_reads)
    samples = p["steps"] * p["batch"]
    return {"feeding": "lazy" if mode == "lazy" else "preloaded", "data": mode,
            "setup_s": setup_s, "steps_s": steps_s, "seconds": setup_s + steps_s,
            "samples_per_s": samples / steps_s, "s_per_item": steps_s / samples,
            "epoch_s_est": setup_s + p["n"] * steps_s / samples, "loss": loss,
            "precision": precision, "peak_rss_mb": rss.peak / 2**20, **feed,
            "load_avg_1min": os.getloadavg()[0]}  # the machine is shared: how busy it was


def run_child(kind: str, params: dict) -> dict:
    """Run one row in a fresh process (its own peak RSS); its result is stdout's last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(params)],
                         stdout=subprocess.PIPE, env=env, text=True)
    if res.returncode != 0:
        raise SystemExit(f"bench/scale.py: the {kind} row n={params['n']} failed (exit "
                         f"{res.returncode}); rerun to resume")
    return json.loads(res.stdout.strip().splitlines()[-1])


def save(out: Path, rows: list[dict], params: dict) -> None:
    from amnet.core.atomic import atomic_write_text
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({**record.label(), "params": params, "rows": rows},
                                      indent=1, default=str) + "\n")


def plan(args) -> list[tuple[str, dict]]:
    """(stage, params) of every row up to --max-n; params identify a row for resuming."""
    ext = [("extract", {"n": n, "image_size": IMAGE_SIZE, "weights": "random:0"})
           for n in EXTRACT_N if n <= args.max_n]
    tr = [("train", {"n": n, "preload": pre, "steps": args.steps, "batch": args.batch,
                     "ram_budget_gb": args.ram_budget}) for n, pre in TRAIN_ROWS if n <= args.max_n]
    # both ends of each stage first: a run cut short still spans the range
    order = [*ext[:1], *tr[:2], *tr[-1:], *ext[-1:], *ext, *tr]
    return [r for i, r in enumerate(order) if r not in order[:i]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-n", type=int, default=45000, help="largest N to run [45000]")
    ap.add_argument("--out", type=Path, default=record.path("scale"))
    ap.add_argument("--ram-budget", type=float, default=8.0,
                    help="GB of RAM a training run may use; 'auto' preloads up to half of it [8]")
    ap.add_argument("--steps", type=int, default=2, help="train batches per row [2]")
    ap.add_argument("--batch", type=int, default=222, help="train batch [222, the paper's]")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/amnet-scale"),
                    help="synthetic images and caches (deleted after each row)")
    ap.add_argument("--render", action="store_true", help="the README block from the JSON")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, params = args.child[0], json.loads(args.child[1])
        print(json.dumps((extract_row if kind == "extract" else train_row)(params)), flush=True)
        return
    if args.render:
        record.publish("scale", render(record.load("scale")))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    params = {"ram_budget_gb": args.ram_budget, "steps": args.steps, "batch": args.batch}
    for stage, p in plan(args):
        if any(r["stage"] == stage and all(r.get(k) == v for k, v in p.items()) for r in rows):
            continue
        t0 = time.perf_counter()
        if stage == "extract":
            result = run_child("extract", {**p, "workdir": str(args.workdir)})
        else:
            cache = args.workdir / f"train-{p['n']}.h5"
            scores = write_cache(cache, p["n"])
            np.save(cache.with_suffix(".scores.npy"), scores)
            write_s = time.perf_counter() - t0
            try:
                result = {"write_s": write_s, "cache_gb": cache.stat().st_size / 1e9,
                          **run_child("train", {**p, "cache": str(cache)})}
            finally:
                cache.unlink(missing_ok=True)
                cache.with_suffix(".scores.npy").unlink(missing_ok=True)
        rows.append({"stage": stage, **p, **result, "wall_s": time.perf_counter() - t0})
        save(args.out, rows, params)
        print(f"{stage} n={p['n']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else
                                                   f"{k} {v}" for k, v in result.items()),
              file=sys.stderr, flush=True)
    if args.out.resolve() == record.path("scale").resolve():
        record.publish("scale", render(record.load("scale")))


if __name__ == "__main__":
    main()
