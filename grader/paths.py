"""Where the course's files are, the grader's error type and the course's notebook names.

A leaf: it imports nothing but the standard library.
"""
from __future__ import annotations

from pathlib import Path

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
