"""Reading a submission defensively and rebuilding it against the release.

The submitted file is read once, never through a link, size-capped, and must be a UTF-8 JSON notebook. The
notebook that runs is rebuilt from the released one: locked cells (instructions, visible tests) restored,
deleted ones re-inserted, the learner's solution cells and own cells kept in place. Hidden tests are never in it.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from .cells import grade_id


MAX_NOTEBOOK_BYTES = 20 * 2**20


class SubmissionError(ValueError):
    """The submitted file cannot be graded; the message says why (for the learner)."""


def read_submission(path: Path) -> nbformat.NotebookNode:
    """The submitted notebook, or :class:`SubmissionError` naming what is wrong with the file."""
    try:  # one open, never through a link, never blocking on a pipe
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise SubmissionError(f"{path.name} is not a regular file") from err
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SubmissionError(f"{path.name} is not a regular file")
        if info.st_size > MAX_NOTEBOOK_BYTES:
            raise SubmissionError(f"{path.name} is {info.st_size / 2**20:.0f} MB; notebooks over "
                                  f"{MAX_NOTEBOOK_BYTES >> 20} MB are not graded (clear large outputs and resubmit)")
        data = f.read(MAX_NOTEBOOK_BYTES + 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SubmissionError(f"{path.name} is not UTF-8 text (byte {err.start}); it is not a notebook") from err
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as err:  # nbformat raises several kinds for bad JSON / bad structure
        raise SubmissionError(f"{path.name} is not a valid notebook file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]})") from err
    if not isinstance(nb.get("cells"), list):
        raise SubmissionError(f"{path.name} has no list of cells")
    return nb


def solved(release: nbformat.NotebookNode, solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The released notebook with the instructor's solutions in its solution cells: a correct submission (the
    grader's canary, the benchmarks')."""
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    answers = {grade_id(c): c.source for c in solution.cells if c.metadata.get("nbgrader", {}).get("solution")}
    for cell in nb.cells:
        if grade_id(cell) in answers:
            cell.source = answers[grade_id(cell)]
    return nb


def rebuild(learner: nbformat.NotebookNode, release: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The notebook to execute: the release's cells in order, the learner's code in the solution cells (and
    the learner's own added cells after the released cell they followed); locked cells always from the
    release. Returns it and notes on what was restored."""
    released = {grade_id(c): c for c in release.cells if grade_id(c)}
    by_id = {grade_id(c): i for i, c in enumerate(release.cells) if grade_id(c)}
    by_source: dict[str, int] = {}  # ungraded released cells (instructions, set-up), first occurrence
    for i, c in enumerate(release.cells):
        if not grade_id(c):
            by_source.setdefault(c.source, i)
    sources = {c.source for c in release.cells}
    answers, extra, notes, after = {}, {}, [], None  # after: index of the released cell the learner's cells follow
    for cell in learner.cells:
        gid, source = grade_id(cell), cell.get("source")
        if gid in released:
            meta = released[gid].metadata["nbgrader"]
            if meta.get("solution") and cell.get("cell_type") == "code" and isinstance(source, str):
                answers[gid] = source
            elif source != released[gid].source:
                notes.append(f"cell '{gid}' is locked: your changes to it were replaced by the original")
            after = by_id[gid]
        elif isinstance(source, str) and source in by_source:
            after = by_source[source]
        elif cell.get("cell_type") == "code" and isinstance(source, str) and source not in sources:
            extra.setdefault(after, []).append(new_code_cell(source))
    submitted = {grade_id(c) for c in learner.cells}
    cells = extra.pop(None, [])  # the learner's cells above every released cell stay first
    for index, cell in enumerate(release.cells):
        copy = nbformat.from_dict(json.loads(json.dumps(cell)))
        cells.append(copy)
        gid = grade_id(cell)
        if gid in answers:
            copy.source = answers[gid]
        elif gid and (cell.metadata["nbgrader"].get("solution") or cell.metadata["nbgrader"].get("grade")) \
                and gid not in submitted:
            notes.append(f"cell '{gid}' was missing from your notebook: the original was put back")
        cells += extra.pop(index, [])
    out = nbformat.v4.new_notebook(cells=cells, metadata=release.metadata)
    return out, notes
