"""What grading decides, as plain records: one :class:`Exercise` verdict, one notebook's :class:`Result`, and
:func:`safe_text`, which every text from a learner's kernel passes through before any writer sees it.

A leaf: it imports nothing heavy (no kernel, torch or sandbox), so the report and gradebook writers need only it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def safe_text(value: object, limit: int = 20_000) -> str:
    """Any value as text that every writer accepts (HTML, CSV, JSON, notebook, SQLite, terminal): lone
    surrogates and undecodable bytes replaced, terminal escapes and control characters (but newline and tab)
    removed, at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    text = text[:limit * 2].encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("", _ANSI.sub("", text))[:limit]


@dataclass
class Exercise:
    """The verdict on one exercise, decided outside the learner's kernel."""
    grade_id: str
    points: float
    max_points: float
    passed: bool
    message: str = ""
    output: str = ""  # what the learner's kernel printed for the visible tests (escaped when shown)

    @property
    def name(self) -> str:
        """The exercise's name: its test cell's grade id without ``_tests``."""
        return self.grade_id.removesuffix("_tests")


@dataclass
class Result:
    student: str
    notebook: str
    exercises: list[Exercise] = field(default_factory=list)
    problem: str = ""       # why nothing could be graded, if so (for the learner)
    notes: list[str] = field(default_factory=list)  # what the grader changed or stopped
    seconds: float = 0.0
    infrastructure: str = ""  # the machine failed, not the submission (for the instructor)

    def made_safe(self) -> "Result":
        """Every text made safe for every writer (see :func:`safe_text`): much of it came from the kernel."""
        self.problem, self.infrastructure = safe_text(self.problem), safe_text(self.infrastructure)
        self.notes = [safe_text(n, 2000) for n in self.notes]
        for ex in self.exercises:
            ex.message, ex.output = safe_text(ex.message, 5000), safe_text(ex.output)
        return self

    @property
    def score(self) -> float:
        return sum(e.points for e in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(e.max_points for e in self.exercises)
