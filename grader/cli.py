"""Instructor commands: nbgrader for release, gradebook and export; sandboxed execution and trusted verdicts ours.

    python -m grader generate                                 # solutions/*.ipynb -> notebooks/ (learner versions)
    python -m grader check                                    # fail if notebooks/ is stale
    python -m grader grade SUBMISSIONS --out DIR [--jobs N]   # grade, feedback, grades.csv, summary
    python -m grader grade SUBMISSIONS --out DIR --shard K/N  # one shard of a job array (several machines) ...
    python -m grader merge DIR                                # ... and, when all are done, the gradebook and reports
    python -m grader export --out DIR                         # nbgrader's CSV export of the gradebook
    python -m grader publish [--check]                        # set the course's address everywhere (Colab)

SUBMISSIONS is a folder or zip of ``<student>/<notebook>.ipynb`` (any subset of the course's notebooks).
Each notebook is one nbgrader assignment of the same name (:mod:`grader.gradebook`). How one submission is
graded: :mod:`grader.run` (:mod:`~grader.rebuild`, :mod:`~grader.kernel`, :mod:`~grader.verdicts`); a batch:
:mod:`grader.batch`; the sandbox: :mod:`grader.sandbox`; rules for exercise authors: ``grader/AUTHORING.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from .authoring import skip_problems
from .batch import grade, merge, parse_shard
from .gradebook import export, generate, open_course, stale_notebooks
from .paths import DEFAULT_COURSE, ROOT, SOLUTIONS, GraderError, assignment_names
from .publish import differences, publish
from .references import unavailable_problems
from .sandbox import Limits

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="regenerate notebooks/ from solutions/")
    sub.add_parser("check", help="exit 1 if notebooks/ differs from what `generate` would write, or a cell "
                                 "tagged skip-grading defines what grading needs")
    p = sub.add_parser("grade", help="grade a folder or zip of submissions in sandboxes; feedback, CSV, summary")
    p.add_argument("submissions", type=Path, help="folder or zip of <student>/<notebook>.ipynb")
    p.add_argument("--out", type=Path, default=Path("grading"), help="where feedback/, grades.csv, summary.md go")
    p.add_argument("--course", type=Path, default=DEFAULT_COURSE, help="nbgrader course folder (gradebook)")
    p.add_argument("--jobs", type=int, default=1, help="grade this many submissions in parallel")
    p.add_argument("--unsandboxed", action="store_true",
                   help="run submissions without the bubblewrap sandbox (only for trusted submissions)")
    p.add_argument("--memory-mb", type=int, default=Limits.memory_mb, help="memory limit per submission")
    p.add_argument("--grader-memory-mb", type=int, default=Limits.grader_memory_mb,
                   help="memory the grader itself may add per submission (reading it, the tests' computations)")
    p.add_argument("--cell-timeout", type=int, default=Limits.cell_timeout_s, help="seconds per cell")
    p.add_argument("--notebook-timeout", type=int, default=Limits.notebook_timeout_s,
                   help="seconds per submission: its notebook, restarts and every call of the tests")
    p.add_argument("--run-all-cells", action="store_true",
                   help="also run the cells the course tags skip-grading (demos, training runs): slower")
    p.add_argument("--shard", metavar="K/N", help="grade only the students of shard K of N (0 <= K < N; e.g. a job "
                   "array's index) into OUT/shards/; then `merge OUT` records and reports them all")
    p = sub.add_parser("merge", help="record the shard files of `grade --shard` into the gradebook; write reports")
    p.add_argument("out", type=Path, help="the --out folder the shards wrote to (it holds shards/)")
    p.add_argument("--course", type=Path, default=DEFAULT_COURSE, help="nbgrader course folder (gradebook)")
    p = sub.add_parser("publish", help="write [project.urls] Source into the notebooks' first cells and the "
                                       "README's Open-in-Colab links, then regenerate notebooks/")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything disagrees")
    p = sub.add_parser("export", help="export the gradebook to CSV (nbgrader's format)")
    p.add_argument("--out", type=Path, default=Path("grading"), help="nbgrader_grades.csv goes here")
    p.add_argument("--course", type=Path, default=DEFAULT_COURSE, help="nbgrader course folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            for path in generate():
                print(f"wrote {path.relative_to(ROOT)}")
        elif args.command == "check":
            stale = stale_notebooks()
            if stale:
                sys.exit(f"stale learner notebooks: {stale}; run `make notebooks`")
            notebooks = {name: nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4) for name in assignment_names()}
            problems = {name: skip_problems(nb) for name, nb in notebooks.items()}
            if any(problems.values()):
                sys.exit("cells tagged skip-grading that grading needs: " +
                         "; ".join(f"{n}: {p}" for n, ps in problems.items() for p in ps))
            problems = {name: unavailable_problems(nb) for name, nb in notebooks.items()}
            if any(problems.values()):
                sys.exit("grading would need a reference implementation that does not exist in the grading kernel: " +
                         "; ".join(f"{n}: {p}" for n, ps in problems.items() for p in ps))
            print("notebooks/ is up to date with solutions/, every skip-grading tag is safe, and no cell that grading "
                  "runs needs a reference implementation")
        elif args.command == "grade":
            limits = Limits(memory_mb=args.memory_mb, grader_memory_mb=args.grader_memory_mb,
                            cell_timeout_s=args.cell_timeout,
                            notebook_timeout_s=args.notebook_timeout, run_marked_cells=args.run_all_cells)
            shard = parse_shard(args.shard) if args.shard else None
            results = grade(args.submissions, args.out, args.course, args.jobs, not args.unsandboxed, limits,
                            shard=shard)
            if shard:
                print(f"graded {len(results)} notebooks of shard {args.shard}: {args.out / 'shards'}; "
                      f"when every shard is done: python -m grader merge {args.out}")
            else:
                print(f"graded {len(results)} notebooks: {args.out / 'grades.csv'}, {args.out / 'summary.md'}, "
                      f"feedback in {args.out / 'feedback'}")
        elif args.command == "publish":
            if args.check:
                wrong = differences()
                if wrong:
                    sys.exit(f"not published from [project.urls] Source: {wrong}; run `python -m grader publish`")
                print("every notebook and the README use [project.urls] Source")
            else:
                for path in publish():
                    print(f"set the source in {path.relative_to(ROOT)}")
                for path in generate():
                    print(f"wrote {path.relative_to(ROOT)}")
        elif args.command == "merge":
            results = merge(args.out, args.course)
            print(f"merged {len(results)} notebooks: {args.out / 'grades.csv'}, {args.out / 'summary.md'}, "
                  f"feedback in {args.out / 'feedback'}")
        elif args.command == "export":
            print(f"grades: {export(open_course(args.course), args.out / 'nbgrader_grades.csv')}")
    except GraderError as err:
        sys.exit(f"error: {err}")
