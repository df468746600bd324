"""How the grader reads a notebook's cells: the nbgrader grade id, the ``skip-grading`` tag, the set-up cell.

A leaf: it imports nothing but the standard library, so every grader module (and the tests) finds these cells
one way.
"""
from __future__ import annotations

SKIP_TAG = "skip-grading"
SETUP_MARK = "from course_lib import"  # the set-up cell is the first code cell that imports course_lib


def grade_id(cell) -> str | None:
    """The cell's nbgrader grade id, or None (also when the metadata is malformed: it may come from a learner)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    gid = meta.get("grade_id") if isinstance(meta, dict) else None
    return gid if isinstance(gid, str) else None


def is_skipped(cell) -> bool:
    """Whether a (released, trusted) cell is marked as not needed for grading."""
    tags = cell.get("metadata", {}).get("tags", [])
    return cell.get("cell_type") == "code" and isinstance(tags, list) and SKIP_TAG in tags


def setup_cell(nb):
    """The notebook's set-up cell: the imports every later cell (and the grader's tests) run after."""
    found = next((c for c in nb.cells if c.get("cell_type") == "code" and SETUP_MARK in c.get("source", "")), None)
    if found is None:
        raise ValueError(f"the notebook has no set-up cell (a code cell with {SETUP_MARK!r})")
    return found
