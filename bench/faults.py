"""Reliability totals (issue 11): the bad-input zoo and the fault injections, counted.

Runs every case of tests/zoo_cases.py (bad images, split and list files, caches, shards, pickles)
and every fault of tests/faults.py (kill -9 of extract, merge and train at fixed and seeded
random points, and of the `dvc repro` stage children), the same code the tests run, and prints
the totals per group:

    tried       cases run
    clean       bad input: the right exit code, one `Error:` line naming the file (and line),
                or the right skip-and-record; fault: killed, resumed, byte-identical, no debris
    tracebacks  a Python traceback reached the user
    rows lost   feature rows, CSV rows or output files changed or removed that should not be

labelled with the date and the CPU, and fills the faults-table blocks of docs/reliability.md and
the README's reliability section.
Each result is appended to --results (JSON lines) as it lands; a rerun skips the cases recorded
there (resumable; --fresh starts over).

    python bench/faults.py                      # everything (DVC included: minutes)
    python bench/faults.py --only zoo           # the zoo only (--only faults: the kills only)
    python bench/faults.py --extra 6 --timed 4 --seed 1    # more seeded kill points
    python bench/faults.py --render             # the table (and the pages' blocks) from --results
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
BLOCK_START, BLOCK_END = "<!-- faults-table:start -->", "<!-- faults-table:end -->"
GROUPS = ("images", "lists", "caches", "shards", "pickles", "extract", "merge", "train", "dvc")


def load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def table(records: list[dict]) -> str:
    """The markdown totals table of `records` (the last record of each id counts)."""
    last = {r["id"]: r for r in records}
    # a timer kill that went off after the run had ended injected nothing: not counted
    missed = [i for i, r in last.items() if r.get("killed") is False and r["clean"]]
    for i in missed:
        del last[i]
    tot: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in last.values():
        g = r["id"].split("/")[0]
        for key in (g, "total"):
            t = tot[key]
            t[0] += 1
            t[1] += bool(r["clean"])
            t[2] += bool(r["traceback"])
            t[3] += int(r["lost"])
    labels = sorted({(r["date"], r["cpu"]) for r in last.values()})
    dates = sorted({d for d, _ in labels})
    cpus = sorted({c for _, c in labels})
    head = (f"{len(last)} cases, run {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "")
            + f" on {'; '.join(cpus)} (`python bench/faults.py`):\n\n") if last else ""
    rows = ["| group | kind | tried | clean | tracebacks | rows lost |",
            "|---|---|---:|---:|---:|---:|"]
    kinds = {"images": "bad input", "lists": "bad input", "caches": "bad input",
             "shards": "bad input", "pickles": "bad input", "extract": "kill -9",
             "merge": "kill -9", "train": "kill -9", "dvc": "kill -9"}
    for g in [*GROUPS, "total"]:
        if g in tot:
            t = tot[g]
            name = f"**{g}**" if g == "total" else g
            rows.append(f"| {name} | {kinds.get(g, '')} | {t[0]} | {t[1]} | {t[2]} | {t[3]} |")
    bad = [r for r in last.values() if not r["clean"]]
    notes = "".join(f"\n- `{r['id']}`: {(r['problems'] or ['?'])[0][:160]}" for r in bad)
    miss = (f"\n\n{len(missed)} timer kills went off after their run had ended (not counted)."
            if missed else "")
    return head + "\n".join(rows) + miss + ("\n\nNot clean:" + notes if bad else "") + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("zoo", "faults"), help="run one half only")
    ap.add_argument("-k", default="", help="run only cases whose id contains this")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random kill points [0]")
    ap.add_argument("--extra", type=int, default=0,
                    help="seeded kill points per command beyond one per target [0]")
    ap.add_argument("--timed", type=int, default=2,
                    help="seeded timer kill points per command [2]")
    ap.add_argument("--no-dvc", action="store_true", help="leave out the dvc repro kills")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "faults-results.jsonl",
                    help="JSON lines, appended as cases finish [docs/faults-results.jsonl]")
    ap.add_argument("--fresh", action="store_true", help="forget the recorded results first")
    ap.add_argument("--render", action="store_true",
                    help="only print the table from --results (and fill the --doc blocks)")
    ap.add_argument("--doc", type=Path, nargs="+",
                    default=[ROOT / "docs" / "reliability.md", ROOT / "README.md"],
                    help="pages whose faults-table block is filled "
                         "[docs/reliability.md README.md]")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.render:
        run(args)
    records = load(args.results)
    text = table(records)
    print(text)
    from amnet.core.atomic import atomic_write_text
    sys.path.insert(0, str(ROOT / "bench"))
    from record import replace_block
    for doc in args.doc:
        if doc.is_file() and BLOCK_START in doc.read_text() and records:
            atomic_write_text(doc, replace_block(doc.read_text(), "faults-table", text,
                                                 (BLOCK_START, BLOCK_END)))


def run(args) -> None:
    import faults
    import zoo
    from zoo_cases import all_cases

    from amnet.core.device import cpu_label

    if args.fresh:
        args.results.unlink(missing_ok=True)
    done = {r["id"] for r in load(args.results)}
    label = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cpu": cpu_label()}
    todo: list = []
    if args.only != "faults":
        todo += [("zoo", c) for c in all_cases()]
    if args.only != "zoo":
        todo += [("fault", f) for f in faults.faults(args.seed, args.extra, args.timed)
                 if not (args.no_dvc and f.id.startswith("dvc/"))]
    todo = [(kind, c) for kind, c in todo if args.k in c.id and c.id not in done]
    print(f"{len(todo)} cases to run ({len(done)} recorded in {args.results})", file=sys.stderr)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="amnet-faults-") as tmp, zoo.shared_trunks():
        tmp = Path(tmp)
        world = fworld = None
        for n, (kind, c) in enumerate(todo, 1):
            t0 = time.perf_counter()
            folder = tmp / "case"
            if kind == "zoo":
                world = world or zoo.build_world(tmp / "world")
                outcome = zoo.run_case(c, world, folder).to_dict()
            else:
                fworld = fworld or faults.build_fault_world(tmp / "fault-world")
                outcome = c.run(fworld, folder).to_dict()
            shutil.rmtree(folder, ignore_errors=True)
            record = {**outcome, **label, "pending": c.pending}
            with open(args.results, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            print(f"[{n}/{len(todo)}] {c.id}: {'clean' if record['clean'] else 'NOT CLEAN'}"
                  f" ({time.perf_counter() - t0:.1f} s)"
                  + ("" if record["clean"] else f" {record['problems'][:1]}"), file=sys.stderr)


if __name__ == "__main__":
    main()
