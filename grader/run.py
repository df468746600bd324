"""Grade one submission: run it in a sandboxed kernel, decide each exercise in the grader's own process.

1. The submission is read defensively (valid UTF-8 JSON notebook, size-capped) and rebuilt against the
   released notebook: locked cells (the visible tests, the instructions) are restored from the release, deleted
   ones re-inserted, the learner's solution cells and own cells kept. The hidden tests are never in it.
2. The rebuilt notebook runs in a kernel inside the sandbox (:mod:`grader.sandbox`), with a per-cell timeout,
   a wall-clock limit and an output budget. Its outputs are what the learner sees of the visible tests.
3. Each exercise's tests (visible and hidden, from solutions/) run in the grader's process. Every call of a
   learner's function crosses into the sandboxed kernel as plain data (:mod:`course_lib.wire`) and back, so
   the learner's code runs only in the sandbox, and the decision "passed" is made here, by trusted code.
4. An exercise whose code uses the reference implementation it was asked to write (declared per exercise in
   the solution notebook's metadata) earns nothing, whatever its tests say.
"""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import nbformat


from .authoring import is_skipped
from .kernel import KernelSession, sanitize_outputs
from .rebuild import SubmissionError, grade_id, read_submission, rebuild
from .sandbox import Limits, Sandbox
from .verdicts import Result, blank_verdicts, decide

def grade_one(student: str, notebook: str, path: Path, release: Path, solution: Path, work: Path,
              limits: Limits, sandboxed: bool, executed_to: Path | None = None) -> Result:
    """Everything for one submission; never raises (the Result says what happened, a submission that broke the
    grader included). ``work``: a grader-owned folder for the kernel's private files. ``executed_to``: where
    to keep the executed notebook (for the instructor; no hidden tests, outputs sanitized)."""
    start = time.monotonic()
    result = Result(student, notebook)
    solution_nb = nbformat.read(solution, as_version=4)
    try:
        _grade_into(result, path, nbformat.read(release, as_version=4), solution_nb, work, limits, sandboxed,
                    executed_to)
    except Exception as err:  # whatever a submission does, it is this submission's problem, not the class's
        result.problem = f"the grader could not grade this notebook ({type(err).__name__}); tell your instructor"
        result.exercises = blank_verdicts(solution_nb, "Not graded: " + result.problem)
    result.seconds = time.monotonic() - start
    return result.made_safe()


def _grade_into(result: Result, path: Path, release_nb, solution_nb, work: Path, limits: Limits, sandboxed: bool,
                executed_to: Path | None) -> None:
    try:
        learner = read_submission(path)
    except SubmissionError as err:
        result.problem = str(err)
        result.exercises = blank_verdicts(solution_nb, "Not graded: " + str(err))
        return
    nb, result.notes = rebuild(learner, release_nb)
    folder = work / uuid.uuid4().hex[:10]  # short: the kernel's sockets live in it (unix paths < 108 bytes)
    folder.mkdir(mode=0o700, parents=True)
    session = None
    try:
        sandbox = Sandbox.create(limits) if sandboxed else None
        first = next((i for i, c in enumerate(nb.cells) if grade_id(c)), len(nb.cells))
        minimal = [c.source for i, c in enumerate(nb.cells) if c.cell_type == "code" and not is_skipped(c) and
                   (i < first or c.get("metadata", {}).get("nbgrader", {}).get("solution"))]
        session = KernelSession(folder, limits, sandbox, minimal)
        try:
            session.launch(nb)
        except Exception as err:  # no learner code has run yet: the machine, not the submission
            result.infrastructure = f"the kernel could not be started ({type(err).__name__}: {str(err)[:200]})"
            result.problem = "the grader could not start a kernel for this notebook; tell your instructor"
            result.exercises = blank_verdicts(solution_nb, "Not graded: " + result.problem)
            return
        try:
            executed, notes = session.run_notebook(nb)
        except Exception as err:
            executed, notes = nb, [f"the notebook could not be run ({type(err).__name__})"]
            session.dead = True
        result.notes += notes
        executed = sanitize_outputs(executed)
        if executed_to is not None:
            executed_to.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(executed, executed_to)
        before = len(session.notes)
        result.exercises = decide(solution_nb, executed, learner, release_nb, session)
        result.notes += session.notes[before:]
    finally:
        if session is not None:
            session.close()
        shutil.rmtree(folder, ignore_errors=True)
