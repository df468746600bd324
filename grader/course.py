"""Instructor commands, built on nbgrader's own machinery (API, gradebook, preprocessors, CSV exporter).

    python -m grader generate                      # solutions/*.ipynb -> notebooks/ (learner versions)
    python -m grader check                         # fail if notebooks/ is stale
    python -m grader grade SUBMISSIONS --out DIR   # autograde + feedback + grades.csv, in one go
    python -m grader autograde|feedback|export ... # the three steps one at a time

SUBMISSIONS is a folder of ``<student>/<notebook>.ipynb`` (any subset of the course's notebooks). Each
notebook is one nbgrader assignment of the same name. The nbgrader course folder (gradebook.db, source/,
submitted/, autograded/, feedback/) defaults to ``grader/course/`` and is reused, so rerunning is idempotent.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nbgrader.api import MissingEntry
from nbgrader.apps import NbGraderAPI
from nbgrader.coursedir import CourseDirectory
from nbgrader.plugins import CsvExportPlugin
from traitlets.config import Config, PyFileConfigLoader

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = ROOT / "notebooks"
CONFIG_FILE = Path(__file__).resolve().with_name("nbgrader_config.py")
DEFAULT_COURSE = ROOT / "grader" / "course"


class GraderError(RuntimeError):
    """A grading step failed; the message says which and why."""


def assignment_names() -> list[str]:
    """The course's notebooks, by name (one nbgrader assignment each)."""
    return sorted(p.stem for p in SOLUTIONS.glob("*.ipynb"))


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


def release(api: NbGraderAPI, names: list[str] | None = None) -> dict[str, Path]:
    """Copy solutions into the course's source/ and run nbgrader generate_assignment on each; returns the
    generated learner notebooks by name."""
    root = Path(api.coursedir.root)
    released = {}
    for name in names or assignment_names():
        source = root / "source" / name
        source.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOLUTIONS / f"{name}.ipynb", source / f"{name}.ipynb")
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


def find_submissions(folder: Path) -> tuple[list[Submission], list[str]]:
    """``<student>/<notebook>.ipynb`` files under ``folder`` that name a course notebook, and a list of
    problems (unknown notebook names, files outside a student folder)."""
    if not folder.is_dir():
        raise GraderError(f"{folder} is not a folder of <student>/<notebook>.ipynb submissions")
    known, found, problems = set(assignment_names()), [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.is_dir():
            problems.append(f"{path.name}: not a student folder (expected <student>/<notebook>.ipynb)")
            continue
        for nb in sorted(path.glob("*.ipynb")):
            if nb.stem in known:
                found.append(Submission(path.name, nb.stem, nb))
            else:
                problems.append(f"{path.name}/{nb.name}: not a course notebook (expected one of {sorted(known)})")
    return found, problems


def autograde(api: NbGraderAPI, submissions: list[Submission], progress: bool = True) -> None:
    """Place each submission in the course's submitted/ folder and run nbgrader autograde on it."""
    root = Path(api.coursedir.root)
    # Release from solutions/ every time (about a second each): the gradebook's tests are always the
    # current ones, even if solutions/ changed since the last grading run.
    release(api, sorted({s.assignment for s in submissions}))
    for i, sub in enumerate(submissions, start=1):
        target = root / "submitted" / sub.student / sub.assignment
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copyfile(sub.path, target / f"{sub.assignment}.ipynb")
        if progress:
            print(f"[{i}/{len(submissions)}] autograding {sub.student}/{sub.assignment}", file=sys.stderr)
        _succeeded(api.autograde(sub.assignment, sub.student), f"autograde {sub.student}/{sub.assignment}")


def feedback(api: NbGraderAPI, submissions: list[Submission], out: Path) -> list[Path]:
    """nbgrader generate_feedback for each submission; copies the HTML to ``out/<student>/<notebook>.html``."""
    root, written = Path(api.coursedir.root), []
    for sub in submissions:
        _succeeded(api.generate_feedback(sub.assignment, sub.student), f"feedback {sub.student}/{sub.assignment}")
        html = root / "feedback" / sub.student / sub.assignment / f"{sub.assignment}.html"
        target = out / sub.student / f"{sub.assignment}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(html, target)
        written.append(target)
    return written


def export(api: NbGraderAPI, out_csv: Path) -> Path:
    """nbgrader's CSV export of the gradebook: one row per student and assignment."""
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    gradebook = api.gradebook
    try:
        CsvExportPlugin(to=str(out_csv)).export(gradebook)
    finally:
        gradebook.close()
    return out_csv


def scores(api: NbGraderAPI, student: str, assignment: str) -> dict[str, float]:
    """Points per graded cell (grade_id -> score) of one autograded submission, and "total"."""
    gradebook = api.gradebook
    try:
        try:
            nb = gradebook.find_submission_notebook(assignment, assignment, student)
        except MissingEntry as err:
            raise GraderError(f"no autograded submission of {assignment} by {student}") from err
        result = {grade.name: float(grade.score) for grade in nb.grades}
        result["total"] = float(nb.score)
        return result
    finally:
        gradebook.close()


def grade(submissions_dir: Path, out: Path, course: Path = DEFAULT_COURSE, progress: bool = True) -> Path:
    """Autograde every submission in ``submissions_dir``, write feedback and grades.csv into ``out``."""
    submissions, problems = find_submissions(submissions_dir)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not submissions:
        raise GraderError(f"no course notebooks found under {submissions_dir}")
    api = open_course(course)
    autograde(api, submissions, progress)
    feedback(api, submissions, out / "feedback")
    summary = {f"{s.student}/{s.assignment}": scores(api, s.student, s.assignment) for s in submissions}
    (out / "scores.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return export(api, out / "grades.csv")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="regenerate notebooks/ from solutions/")
    sub.add_parser("check", help="exit 1 if notebooks/ differs from what `generate` would write")
    for name, text in [("grade", "autograde, write feedback and export grades"), ("autograde", "autograde only"),
                       ("feedback", "feedback for already autograded submissions")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("submissions", type=Path, help="folder of <student>/<notebook>.ipynb")
        p.add_argument("--out", type=Path, default=Path("grading"), help="where feedback/ and grades.csv go")
        p.add_argument("--course", type=Path, default=DEFAULT_COURSE, help="nbgrader course folder")
    p = sub.add_parser("export", help="export the gradebook to CSV")
    p.add_argument("--out", type=Path, default=Path("grading"), help="grades.csv goes here")
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
            print("notebooks/ is up to date with solutions/")
        elif args.command == "grade":
            print(f"grades: {grade(args.submissions, args.out, args.course)}")
        elif args.command == "autograde":
            submissions, problems = find_submissions(args.submissions)
            for problem in problems:
                print(f"skipped: {problem}", file=sys.stderr)
            autograde(open_course(args.course), submissions)
        elif args.command == "feedback":
            submissions, _ = find_submissions(args.submissions)
            for path in feedback(open_course(args.course), submissions, args.out / "feedback"):
                print(f"wrote {path}")
        elif args.command == "export":
            print(f"grades: {export(open_course(args.course), args.out / 'grades.csv')}")
    except GraderError as err:
        sys.exit(f"error: {err}")
