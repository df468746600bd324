"""Where each solution notebook's time goes: runs the notebooks one after another in a fresh kernel each
(nbclient, all cells, like "Run all" in JupyterLab) and records the seconds of every code cell.

    python scripts/measure/time_notebooks.py                 # every notebook in solutions/
    python scripts/measure/time_notebooks.py 03 05           # the notebooks whose names start with these
    python scripts/measure/time_notebooks.py --top 5         # also print each notebook's 5 slowest cells
    python scripts/measure/time_notebooks.py --keep out/     # also keep the executed notebooks (outputs) in out/

Writes course_lib/data/measurements/notebook_times.json (merged with the notebooks already recorded there).
Run it on an idle machine: the numbers are wall-clock seconds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from course_lib.data import load_measurement, write_measurement

ROOT = Path(__file__).resolve().parents[2]


def cell_seconds(cell) -> float:
    """Seconds between the kernel starting and finishing a cell (nbclient's record_timing metadata)."""
    stamps = cell.metadata.get("execution", {})
    start, end = stamps.get("iopub.status.busy"), stamps.get("iopub.status.idle")
    if not (start and end):
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def time_notebook(path: Path, keep: Path | None = None) -> dict:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": workdir}}).execute()
        total = time.perf_counter() - start
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / path.name)
    cells = [{"index": i, "first_line": "".join(c.source).splitlines()[0][:80] if c.source else "",
              "seconds": round(cell_seconds(c), 2)}
             for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    return {"seconds": round(total, 1), "cells": cells}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--top", type=int, default=3, help="print this many slowest cells per notebook")
    parser.add_argument("--keep", type=Path, help="write the executed notebooks (with their outputs) here")
    args = parser.parse_args()
    paths = sorted(p for p in (ROOT / "solutions").glob("*.ipynb")
                   if not args.prefixes or any(p.stem.startswith(x) for x in args.prefixes))
    if not paths:
        sys.exit(f"no solution notebook starts with {args.prefixes}")
    record = load_measurement("notebook_times.json", announce=False)
    for path in paths:
        result = time_notebook(path, args.keep)
        record["notebooks"][path.stem] = result
        slow = sorted(result["cells"], key=lambda c: -c["seconds"])[:args.top]
        print(f"{path.stem}: {result['seconds']:.0f} s; slowest: "
              + "; ".join(f"[{c['index']}] {c['seconds']:.0f} s {c['first_line']!r}" for c in slow), flush=True)
    record["total_seconds"] = round(sum(n["seconds"] for n in record["notebooks"].values()), 1)
    write_measurement("notebook_times.json", record)
    print(f"all recorded notebooks: {record['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
