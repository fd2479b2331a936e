"""kill -9 resumes of `amnet-cache extract` under CPU load (issue 19, "The resume failure").

Starts an extraction with DataLoader workers while one busy process per core loads the machine,
kills its main process alone with SIGKILL at a seeded random moment while it extracts (after its
output file appeared), reruns the same command at once and compares the resumed cache with an
uninterrupted run's, byte for byte (tests/kill_resume.py, which tests/test_extract_kill_resume.py
runs too). Prints one line per try and the totals, and writes them (with the date, the CPU and
the amnet commit) to --out.

    python bench/resume_kills.py                  # 6 tries, each run a new amnet-cache process
    python bench/resume_kills.py --warm --tries 20  # runs forked from one warm python: the
                                                    # rerun starts within milliseconds
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=6, help="kills, each resumed [6]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments [0]")
    ap.add_argument("--warm", action="store_true",
                    help="fork each run from one warm python instead of a new process")
    ap.add_argument("--images", type=int, default=32, help="generated images to extract [32]")
    ap.add_argument("--out", type=Path, help="JSON file for the results (not written if unset)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # the load processes go

    import kill_resume
    from amnet.core.device import cpu_label

    def show(k, t):
        print(f"[{k + 1}/{args.tries}] kill at {t.delay:.2f} s, {t.workers} workers alive: "
              + ("clean" if t.clean else "NOT CLEAN: " + t.problem()), flush=True)

    with tempfile.TemporaryDirectory(prefix="amnet-resume-kills-") as tmp:
        tmp = Path(tmp)
        images = kill_resume.make_images(tmp / "images", args.images)
        runner = (kill_resume.Warm if args.warm else kill_resume.Cold)(tmp)
        load = kill_resume.cpu_load()
        try:
            got, seconds = kill_resume.tries(runner, images, tmp / "runs", args.tries,
                                             args.seed, on_try=show)
        finally:
            for p in load:
                p.kill()
                p.wait()
            runner.close()
    clean = sum(t.clean for t in got)
    print(f"{clean} of {len(got)} resumes clean ({sum(t.killed for t in got)} killed mid-run, "
          f"{sum(t.killed and t.workers > 0 for t in got)} with live workers; an uninterrupted "
          f"run extracted for {seconds:.1f} s)")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
        from bench.record import label
        record = {**label(), "cpu": cpu_label(),
                  "commit": commit, "runner": "warm" if args.warm else "cold",
                  "seed": args.seed, "images": args.images, "extract": kill_resume.EXTRACT,
                  "reference_extract_seconds": round(seconds, 2), "tries": len(got), "clean": clean,
                  "cases": [{"delay": t.delay, "killed": t.killed, "workers": t.workers,
                             "resume_rc": t.resume_rc, "identical": t.same,
                             "clean": t.clean} for t in got]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    sys.exit(0 if clean == len(got) else 1)


if __name__ == "__main__":
    main()
