"""Instructor commands: nbgrader for release, gradebook and export; sandboxed execution and trusted verdicts ours.

    python -m grader generate                                 # solutions/*.ipynb -> notebooks/ (learner versions)
    python -m grader check                                    # fail if notebooks/ is stale
    python -m grader grade SUBMISSIONS --out DIR [--jobs N]   # grade, feedback, grades.csv, summary
    python -m grader export --out DIR                         # nbgrader's CSV export of the gradebook

SUBMISSIONS is a folder or zip of ``<student>/<notebook>.ipynb`` (any subset of the course's notebooks).
Each notebook is one nbgrader assignment of the same name. How a submission is graded: :mod:`grader.run`;
the sandbox: :mod:`grader.sandbox`. The nbgrader course folder (gradebook.db, source/, release/) defaults to
``grader/course/`` and is reused: rerunning regrades and overwrites, so it is idempotent.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import nbformat
import torch
from nbgrader.apps import NbGraderAPI
from nbgrader.coursedir import CourseDirectory
from nbgrader.plugins import CsvExportPlugin
from sqlalchemy.exc import SAWarning
from tqdm.auto import tqdm
from traitlets.config import Config, PyFileConfigLoader

from .authoring import skip_problems
from .report import feedback_html, problems_html, write_csv, write_summary
from .run import Result, blank_verdicts, grade_one
from .sandbox import Limits, SandboxUnavailable, bwrap, run_folder, sweep_stale

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = ROOT / "notebooks"
CONFIG_FILE = Path(__file__).resolve().with_name("nbgrader_config.py")
DEFAULT_COURSE = ROOT / "grader" / "course"


class GraderError(RuntimeError):
    """A grading step failed; the message says which and why."""


def assignment_names(solutions: Path = SOLUTIONS) -> list[str]:
    """The course's notebooks, by name (one nbgrader assignment each)."""
    return sorted(p.stem for p in solutions.glob("*.ipynb"))


def load_config(course: Path) -> Config:
    """The course's nbgrader configuration, rooted at ``course``."""
    config = PyFileConfigLoader(CONFIG_FILE.name, path=str(CONFIG_FILE.parent)).load_config()
    config.CourseDirectory.root = str(course.resolve())
    return config


def open_course(course: Path = DEFAULT_COURSE) -> NbGraderAPI:
    """nbgrader's API over the course folder (created if missing, with a copy of the configuration so that
    nbgrader's own CLI and formgrader work there too)."""
    # nbgrader runs the `alembic` command installed beside this Python: make sure it is found even when
    # the virtual environment is not activated (e.g. `.venv/bin/python -m grader ...`).
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    course.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG_FILE, course / "nbgrader_config.py")
    config = load_config(course)
    return NbGraderAPI(CourseDirectory(config=config), config=config)


def _succeeded(result: dict, what: str) -> None:
    if not result.get("success"):
        raise GraderError(f"{what} failed:\n{result.get('error') or result.get('log')}")


def release(api: NbGraderAPI, names: list[str] | None = None, solutions: Path = SOLUTIONS) -> dict[str, Path]:
    """Copy solutions into the course's source/ and run nbgrader generate_assignment on each; returns the
    generated learner notebooks by name."""
    root = Path(api.coursedir.root)
    released = {}
    for name in names or assignment_names(solutions):
        source = root / "source" / name
        source.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(solutions / f"{name}.ipynb", source / f"{name}.ipynb")
        _succeeded(api.generate_assignment(name), f"generate_assignment {name}")
        released[name] = root / "release" / name / f"{name}.ipynb"
    return released


def generate(out: Path = NOTEBOOKS, names: list[str] | None = None) -> list[Path]:
    """Write the learner notebooks that nbgrader generates from solutions/ into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in release(open_course(Path(tmp) / "course"), names).items():
            shutil.copyfile(path, out / f"{name}.ipynb")
            written.append(out / f"{name}.ipynb")
    return written


def stale_notebooks() -> list[str]:
    """Names of learner notebooks in notebooks/ that differ from what :func:`generate` writes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [p.stem for p in fresh
                if not (NOTEBOOKS / p.name).is_file() or (NOTEBOOKS / p.name).read_bytes() != p.read_bytes()]


@dataclass(frozen=True)
class Submission:
    student: str
    assignment: str
    path: Path


STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # what a student folder may be called


def shown(name: str) -> str:
    """A name from a submission as it may appear in a message: quoted, escapes for anything unusual."""
    return ascii(name)[:120]


def find_submissions(folder: Path, solutions: Path = SOLUTIONS) -> tuple[list[Submission], list[str], list[str]]:
    """``<student>/<notebook>.ipynb`` files under ``folder`` that name a course notebook; problems of students
    (``"<student>: ..."``: unknown notebook names, no notebook), and problems of the batch that belong to no
    student (a folder whose name is not a safe student id, links, files outside a student folder). Nothing is
    followed through a link."""
    if not folder.is_dir():
        raise GraderError(f"{folder} is not a folder of <student>/<notebook>.ipynb submissions")
    known, found, problems, rejected = set(assignment_names(solutions)), [], [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_symlink():
            rejected.append(f"{shown(path.name)}: a link, not a student folder; not graded")
            continue
        if not path.is_dir():
            rejected.append(f"{shown(path.name)}: not a student folder (expected <student>/<notebook>.ipynb)")
            continue
        if not STUDENT_ID.fullmatch(path.name):
            rejected.append(f"{shown(path.name)}: not a valid student id (letters, digits, '.', '_', '-'; "
                            "at most 64); not graded")
            continue
        notebooks = sorted(path.glob("*.ipynb"))
        for nb in notebooks:
            if nb.is_symlink():
                problems.append(f"{path.name}/{shown(nb.name)}: a link, not a notebook; not graded")
            elif nb.stem in known:
                found.append(Submission(path.name, nb.stem, nb))
            else:
                problems.append(f"{path.name}/{shown(nb.name)}: not a course notebook (expected one of {sorted(known)})")
        if not notebooks:
            problems.append(f"{path.name}: no notebook in this folder (expected one of {sorted(known)} .ipynb)")
    return found, problems, rejected


def export(api: NbGraderAPI, out_csv: Path) -> Path:
    """nbgrader's CSV export of the gradebook: one row per student and assignment."""
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    gradebook = api.gradebook
    try:
        CsvExportPlugin(to=str(out_csv)).export(gradebook)
    finally:
        gradebook.close()
    return out_csv


def unpack(source: Path, target: Path, max_bytes: int = 2 * 2**30) -> Path:
    """A folder of submissions, or a zip of one unpacked safely into ``target`` (no absolute paths, no '..', no
    links, at most ``max_bytes`` in all); a zip holding a single top folder is entered."""
    if source.is_dir():
        return source
    if not zipfile.is_zipfile(source):
        raise GraderError(f"{source} is neither a folder nor a zip of <student>/<notebook>.ipynb submissions")
    total = 0
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise GraderError(f"{source}: unsafe entry {info.filename!r} (absolute, '..' or a link)")
            total += info.file_size
            if total > max_bytes:
                raise GraderError(f"{source}: more than {max_bytes >> 30} GB when unpacked")
        archive.extractall(target)
    entries = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not any(entries[0].glob("*.ipynb")):
        return entries[0]
    return target


def _grade_task(task: tuple) -> Result:
    return grade_one(*task)


def _start_worker() -> None:
    """Start of a forked worker. It keeps to one torch thread, and tells a notebook's set-up (``use_cores``) so
    through OMP_NUM_THREADS: GNU OpenMP hangs in a forked child that goes parallel once its parent has used the
    thread pool. Its work is light (the tests); the kernels, which do the heavy work, are fresh processes with
    their own share of the cores. It also gets an event loop of its own: the inherited one shares the grader's
    epoll instance."""
    from jupyter_core.utils import ensure_event_loop

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    ensure_event_loop().close()


def workers(jobs: int) -> ProcessPoolExecutor:
    """Worker processes for --jobs: forked where the platform allows (everything is already imported, so a
    worker starts at once), spawned otherwise."""
    if "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker)
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))


def record(api: NbGraderAPI, results: list[Result]) -> None:
    """Store each result's points in nbgrader's gradebook (one auto score per graded cell)."""
    gradebook = api.gradebook
    try:
        for r in results:
            gradebook.update_or_create_student(r.student)
            with warnings.catch_warnings():  # nbgrader's own autoflush chatter ("not in session"), harmless
                warnings.simplefilter("ignore", SAWarning)
                gradebook.update_or_create_submission(r.notebook, r.student)
            for ex in r.exercises:
                grade_row = gradebook.find_grade(ex.grade_id, r.notebook, r.notebook, r.student)
                grade_row.auto_score = ex.points
            gradebook.db.commit()
    finally:
        gradebook.close()


def _run_tasks(tasks: list[tuple], jobs: int, progress: bool) -> list[Result]:
    """Grade every task, in this process or ``jobs`` forked workers. A worker that dies (or any failure outside
    :func:`grade_one`, which never raises) costs only its own submissions: they come back as problems."""
    results: list[Result] = []
    bar = tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress)
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(_grade_task(task))
            bar.update()
    else:
        with workers(jobs) as pool:
            futures = [pool.submit(_grade_task, task) for task in tasks]
            for task, future in zip(tasks, futures):
                try:
                    results.append(future.result())
                except Exception as err:
                    failed = Result(task[0], task[1], problem="the grader's worker failed while grading this "
                                    "notebook; tell your instructor",
                                    infrastructure=f"worker failed ({type(err).__name__})")
                    failed.exercises = blank_verdicts(nbformat.read(task[4], as_version=4), "Not graded: " + failed.problem)
                    results.append(failed)
                bar.update()
    bar.close()
    return results


def grade(submissions: Path, out: Path, course: Path = DEFAULT_COURSE, jobs: int = 1, sandboxed: bool = True,
          limits: Limits = Limits(), solutions: Path = SOLUTIONS, progress: bool = True) -> list[Result]:
    """Grade every submission in a folder or zip: sandboxed execution, verdicts decided outside the kernel,
    feedback in ``out/feedback/<student>/<notebook>.html``, ``out/grades.csv`` (a row per student, a column
    per notebook and exercise), ``out/summary.md`` + ``out/score_distribution.png``, ``out/scores.json``, and
    the scores in nbgrader's gradebook (``out/nbgrader_grades.csv`` is nbgrader's export of it).
    Raises :class:`GraderError`, recording nothing, when every submission failed for a reason of the machine's
    (e.g. no kernel could start): that is not a class of zeros."""
    if sandboxed:
        try:
            bwrap()
        except SandboxUnavailable as err:
            raise GraderError(str(err)) from err
    if jobs < 1:
        raise GraderError(f"--jobs must be at least 1, got {jobs}")
    sweep_stale()
    out.mkdir(parents=True, exist_ok=True)
    api = open_course(course)
    work = Path(api.coursedir.root) / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)
    unpacked = work / "unpacked"
    unpacked.mkdir()
    run_root = run_folder()  # the kernels' private folders: grader-owned, under a short path
    try:
        folder = unpack(submissions, unpacked)
        found, problems, rejected = find_submissions(folder, solutions)
        problems_by_student: dict[str, list[str]] = {}
        for problem in problems:
            problems_by_student.setdefault(problem.split("/")[0].split(":")[0], []).append(problem)
        students = sorted({s.student for s in found} | set(problems_by_student))
        if not found and not problems and not rejected:
            raise GraderError(f"no course notebooks found under {submissions}")
        names = sorted({s.assignment for s in found})
        if jobs > 1:  # kernels side by side share the cores
            limits = replace(limits, threads=limits.threads or max(1, (os.cpu_count() or 1) // jobs))
        released = release(api, names, solutions) if names else {}
        tasks = [(s.student, s.assignment, s.path, released[s.assignment], solutions / f"{s.assignment}.ipynb",
                  run_root, limits, sandboxed,
                  Path(api.coursedir.root) / "autograded" / s.student / s.assignment / f"{s.assignment}.ipynb")
                 for s in found]
        results = _run_tasks(tasks, jobs, progress)
        broken = [r for r in results if r.infrastructure]
        if results and len(broken) == len(results):
            reasons = sorted({r.infrastructure for r in broken})
            raise GraderError(f"no submission could be graded, for a reason of this machine, not the submissions "
                              f"(nothing was recorded): {'; '.join(reasons)[:1000]}")
        record(api, results)
        write_reports(results, students, problems_by_student, rejected, out)
        if names:
            export(api, out / "nbgrader_grades.csv")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)
    return results


def write_reports(results: list[Result], students: list[str], problems_by_student: dict[str, list[str]],
                  rejected: list[str], out: Path) -> None:
    """Feedback pages, problems pages, grades.csv, summary.md and scores.json under ``out``."""
    feedback_dir = out / "feedback"
    shutil.rmtree(feedback_dir, ignore_errors=True)
    for r in results:
        target = feedback_dir / r.student / f"{r.notebook}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(feedback_html(r), encoding="utf-8")
    for student, items in problems_by_student.items():
        (feedback_dir / student).mkdir(parents=True, exist_ok=True)
        (feedback_dir / student / "problems.html").write_text(problems_html(student, items), encoding="utf-8")
    if rejected:
        (out / "problems.html").write_text(problems_html("this batch (no student)", rejected), encoding="utf-8")
    elif (out / "problems.html").exists():
        (out / "problems.html").unlink()
    write_csv(results, students, out / "grades.csv")
    write_summary(results, out, rejected)
    summary = {f"{r.student}/{r.notebook}": {**{e.grade_id: e.points for e in r.exercises}, "total": r.score}
               for r in results}
    (out / "scores.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


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
    p.add_argument("--cell-timeout", type=int, default=Limits.cell_timeout_s, help="seconds per cell")
    p.add_argument("--notebook-timeout", type=int, default=Limits.notebook_timeout_s, help="seconds per submission: its notebook, restarts and every call of the tests")
    p.add_argument("--run-all-cells", action="store_true",
                   help="also run the cells the course tags skip-grading (demos, training runs): slower")
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
            problems = {name: skip_problems(nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4))
                        for name in assignment_names()}
            if any(problems.values()):
                sys.exit("cells tagged skip-grading that grading needs: " +
                         "; ".join(f"{n}: {p}" for n, ps in problems.items() for p in ps))
            print("notebooks/ is up to date with solutions/, and every skip-grading tag is safe")
        elif args.command == "grade":
            limits = Limits(memory_mb=args.memory_mb, cell_timeout_s=args.cell_timeout,
                            notebook_timeout_s=args.notebook_timeout, run_marked_cells=args.run_all_cells)
            results = grade(args.submissions, args.out, args.course, args.jobs, not args.unsandboxed, limits)
            print(f"graded {len(results)} notebooks: {args.out / 'grades.csv'}, {args.out / 'summary.md'}, "
                  f"feedback in {args.out / 'feedback'}")
        elif args.command == "export":
            print(f"grades: {export(open_course(args.course), args.out / 'nbgrader_grades.csv')}")
    except GraderError as err:
        sys.exit(f"error: {err}")
