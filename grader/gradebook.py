"""The course and nbgrader: where things are, releasing learner notebooks, the gradebook and its export.

Each notebook is one nbgrader assignment of the same name. The nbgrader course folder (gradebook.db, source/,
release/, autograded/) defaults to ``grader/course/`` and is reused: regrading overwrites, so it is idempotent.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from nbgrader.apps import NbGraderAPI
from nbgrader.coursedir import CourseDirectory
from nbgrader.plugins import CsvExportPlugin
from sqlalchemy.exc import SAWarning
from traitlets.config import Config, PyFileConfigLoader

from .paths import CONFIG_FILE, DEFAULT_COURSE, NOTEBOOKS, SOLUTIONS, GraderError, assignment_names
from .results import Result


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


def export(api: NbGraderAPI, out_csv: Path) -> Path:
    """nbgrader's CSV export of the gradebook: one row per student and assignment."""
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    gradebook = api.gradebook
    try:
        CsvExportPlugin(to=str(out_csv)).export(gradebook)
    finally:
        gradebook.close()
    return out_csv
