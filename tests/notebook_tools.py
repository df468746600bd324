"""Helpers for the notebook tests: read nbgrader cells, build a filled-in submission, run cells."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from grader.cells import grade_id

ROOT = Path(__file__).resolve().parents[1]
REGION = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", re.S)


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def grade_cells(nb) -> dict[str, nbformat.NotebookNode]:
    """Cells carrying nbgrader metadata, by grade_id (read as the grader reads it)."""
    return {gid: c for c in nb.cells if (gid := grade_id(c))}


def hidden_regions(nb) -> list[str]:
    """The text of every solution region and hidden-test region of a source notebook."""
    return [m.group(2) for c in nb.cells for m in REGION.finditer(c.source)]


def with_answers(learner, answers: dict[str, str]) -> nbformat.NotebookNode:
    """A copy of a learner notebook with the solution cells named in ``answers`` (grade_id -> code) filled in."""
    nb = nbformat.from_dict(json.loads(json.dumps(learner)))
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and meta["grade_id"] in answers:
            cell.source = answers[meta["grade_id"]]
    return nb


def filled_submission(name: str) -> nbformat.NotebookNode:
    """The learner notebook with every solution cell replaced by the instructor's solution: what a
    learner who got everything right would hand in."""
    solution = read(ROOT / "solutions" / f"{name}.ipynb")
    answers = {gid: c.source for gid, c in grade_cells(solution).items() if c.metadata["nbgrader"].get("solution")}
    return with_answers(read(ROOT / "notebooks" / f"{name}.ipynb"), answers)
