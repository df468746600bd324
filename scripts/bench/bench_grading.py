"""Grading throughput: seconds per submission and submissions per minute, --jobs 1 vs --jobs 2, and the grader's
overhead per notebook.

    python scripts/bench/bench_grading.py                       # 20 correct submissions of the fixture assignment
    python scripts/bench/bench_grading.py --notebook all --count 4
                                                          # 4 correct submissions of every course notebook
    python scripts/bench/bench_grading.py --notebook 03_lora_basics --count 1 --jobs 1 --overhead --run-all-cells
                                                          # one course notebook, every cell: plain execution vs grading

The batch is graded sandboxed, through the same function as `python -m grader grade` (which first grades the
notebook's own solution, the canary), once with one job and once with two, each in its own course folder whose
gradebook already exists (as in a running course: nbgrader creates it once, on the first release, which costs ~2.5 s
of its own); it prints both times and the ratio.
With --overhead it also executes the solution notebook once with plain nbclient (no sandbox, no grader) and
prints the grading time minus that.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from grader.batch import grade  # noqa: E402
from grader.gradebook import open_course, release  # noqa: E402
from grader.paths import SOLUTIONS, assignment_names  # noqa: E402
from grader.rebuild import solved  # noqa: E402
from grader.sandbox import Limits  # noqa: E402

FIXTURE = ROOT / "tests" / "data" / "fixture_course"


def self_timed(nb: nbformat.NotebookNode) -> str:
    """What an executed course notebook printed as its own run time ("notebook ran in N s"), if it did."""
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    found = re.findall(r"notebook ran in (\d+) s", text)
    return f"{found[-1]} s" if found else "n/a"


def bench(name: str, count: int, jobs_list: list[int], overhead: bool, limits: Limits, tmp: Path) -> dict:
    """Grade ``count`` correct submissions of one notebook with each --jobs; print and return the times."""
    solutions = FIXTURE if name == "00_fixture" else SOLUTIONS
    tmp = tmp / name
    released = release(open_course(tmp / "release"), [name], solutions)[name]
    nb = solved(nbformat.read(released, as_version=4), nbformat.read(solutions / f"{name}.ipynb", as_version=4))
    subs = tmp / "submissions"
    for i in range(count):
        (subs / f"student{i:03d}").mkdir(parents=True)
        nbformat.write(nb, subs / f"student{i:03d}" / f"{name}.ipynb")
    times, own = {}, {}
    for jobs in jobs_list:
        release(open_course(tmp / f"course{jobs}"), [name], solutions)
        start = time.perf_counter()
        results = grade(subs, tmp / f"out{jobs}", course=tmp / f"course{jobs}", jobs=jobs, solutions=solutions,
                        limits=limits, progress=False)
        times[jobs] = time.perf_counter() - start
        assert all(r.score == r.max_score for r in results), [(r.student, r.score) for r in results]
        own[jobs] = sum(r.seconds for r in results) / count
        print(f"{name} --jobs {jobs}: {count} submissions in {times[jobs]:.1f} s (the canary, the notebook's own "
              f"solution, included): {times[jobs] / count:.1f} s each, {60 * count / times[jobs]:.1f} per minute; "
              f"{own[jobs]:.1f} s per submission on the grader's clock", flush=True)
    if 1 in times and 2 in times:
        print(f"{name}: speed-up of --jobs 2: {times[1] / times[2]:.2f}x")
    if overhead:
        from nbclient import NotebookClient
        plain = nbformat.read(solutions / f"{name}.ipynb", as_version=4)  # the solution notebook, as it is
        work = tmp / "plain"
        work.mkdir()
        start = time.perf_counter()
        NotebookClient(plain, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
        alone = time.perf_counter() - start
        jobs = min(times)
        per = times[jobs] / count
        graded = tmp / f"course{jobs}" / "autograded" / "student000" / name / f"{name}.ipynb"
        print(f"plain execution {alone:.1f} s; graded {per:.1f} s; overhead {per - alone:+.1f} s "
              f"(the notebook's own clock, from its set-up cell to its last: plain {self_timed(plain)}, "
              f"graded {self_timed(nbformat.read(graded, as_version=4))})")
    return {"count": count, "seconds": times, "seconds_per_submission": {j: t / count for j, t in times.items()},
            "graded_seconds_per_submission": own}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", default="00_fixture", help="a notebook name, 00_fixture, or all")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--run-all-cells", action="store_true", help="also run the cells tagged skip-grading")
    args = parser.parse_args()
    names = assignment_names() if args.notebook == "all" else [args.notebook]
    limits = Limits(run_marked_cells=args.run_all_cells)
    with tempfile.TemporaryDirectory() as tmp:
        summary = {name: bench(name, args.count, args.jobs, args.overhead, limits, Path(tmp)) for name in names}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
