"""Grade one submission: run it in a sandboxed kernel, decide each exercise in the grader's own process.

1. The submission is read defensively (valid UTF-8 JSON notebook, size-capped) and rebuilt against the
   released notebook: locked cells (the visible tests, the given probes, the instructions) are restored from the
   release, deleted ones re-inserted, the learner's solution cells and own cells kept. The hidden tests are never
   in it. This reading, and the static check of 4., run in a child process bounded in time and memory
   (:mod:`grader.bounded`).
2. The rebuilt notebook runs in a kernel inside the sandbox (:mod:`grader.sandbox`), with a per-cell timeout,
   a wall-clock limit and an output budget; the notebook's reference implementations do not exist there
   (:mod:`grader.references`). Test cells are not run in the kernel.
3. Each exercise's tests (visible and hidden, from solutions/) run in the grader's process, under an address-space
   bound. Every call of a learner's function (or of a given probe, defined from the release) crosses into the
   sandboxed kernel as plain data (:mod:`course_lib.grading.wire`) and back, so the learner's code runs only in the
   sandbox, and the decision "passed" is made here, by trusted code.
4. An exercise whose code names the reference implementation it was asked to write (declared per exercise in
   the solution notebook's metadata) earns nothing, and the feedback says so; a call that reaches one fails.
"""
from __future__ import annotations

import functools
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .bounded import Overrun, in_child, memory_bound
from .cells import grade_id, is_skipped
from .kernel import KernelSession, sanitize_outputs
from .rebuild import SubmissionError, read_submission, rebuild
from .references import Removal, declared, removal
from .results import Result
from .sandbox import Limits, Sandbox
from .verdicts import blank_verdicts, decide, reference_uses


@dataclass(frozen=True)
class Task:
    """One notebook to grade: whose and which, the submitted file, the release and solution it is graded against,
    and how. ``work``: a grader-owned folder for the kernel's private files. ``executed_to``: where to keep the
    executed notebook (for the instructor; no hidden tests, outputs sanitized)."""
    student: str
    notebook: str
    path: Path
    release: Path
    solution: Path
    work: Path
    limits: Limits
    sandboxed: bool
    executed_to: Path | None = None


def grade_one(task: Task) -> Result:
    """Everything for one submission; never raises (the Result says what happened, a submission that broke the
    grader included)."""
    start = time.monotonic()
    result = Result(task.student, task.notebook)
    solution_nb = nbformat.read(task.solution, as_version=4)
    try:
        _grade_into(result, task.path, nbformat.read(task.release, as_version=4), solution_nb, task.work, task.limits,
                    task.sandboxed, task.executed_to)
    except Exception as err:  # whatever a submission does, it is this submission's problem, not the class's
        result.problem = f"the grader could not grade this notebook ({type(err).__name__}); tell your instructor"
        result.exercises = blank_verdicts(solution_nb, "Not graded: " + result.problem)
    result.seconds = time.monotonic() - start
    return result.made_safe()


def examine(path: Path, release_nb, solution_nb) -> dict:
    """Read and rebuild the submission and find the references its answers name: everything the grader computes
    from learner text before the kernel runs (in a bounded child: :func:`grade_one`). Returns ``{"problem"}`` or
    the rebuilt notebook, the notes on what was restored and ``uses`` (exercise -> references named)."""
    try:
        learner = read_submission(path)
    except SubmissionError as err:
        return {"problem": str(err)}
    nb, notes = rebuild(learner, release_nb)
    release_sources = {c.source for c in release_nb.cells}
    added = "\n".join(c.source for c in learner.cells if c.get("cell_type") == "code" and not grade_id(c)
                      and isinstance(c.get("source"), str) and c.source not in release_sources)
    answers = {grade_id(c): c.source for c in nb.cells if grade_id(c)}
    forbidden = solution_nb.metadata.get("course", {}).get("references", {})
    uses = {exercise: found for exercise, refs in forbidden.items()
            if (found := reference_uses(answers.get(exercise, "") + "\n" + added, refs))}
    return {"nb": nb, "notes": notes, "uses": uses}


@functools.lru_cache(maxsize=32)
def _removal(references: tuple[str, ...]) -> Removal:
    return removal(list(references))


def _grade_into(result: Result, path: Path, release_nb, solution_nb, work: Path, limits: Limits, sandboxed: bool,
                executed_to: Path | None) -> None:
    try:
        examined = in_child(examine, path, release_nb, solution_nb, seconds=limits.examine_s,
                            memory_mb=limits.grader_memory_mb)
    except Overrun as err:
        examined = {"problem": f"the grader could not read this notebook within its limits ({err}; "
                               f"{limits.examine_s} s and {limits.grader_memory_mb:,} MB): shorten its code and resubmit"}
    if "problem" in examined:
        result.problem = examined["problem"]
        result.exercises = blank_verdicts(solution_nb, "Not graded: " + result.problem)
        return
    nb = nbformat.from_dict(examined["nb"])
    result.notes = [str(n) for n in examined["notes"]]
    folder = work / uuid.uuid4().hex[:10]  # short: the kernel's sockets live in it (unix paths < 108 bytes)
    folder.mkdir(mode=0o700, parents=True)
    session = None
    try:
        if sandboxed:  # the notebook's reference implementations do not exist in its kernel
            sandbox = Sandbox.create(limits, _removal(tuple(declared(solution_nb))).write(folder / "removed"))
        else:
            sandbox = None
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
        with memory_bound(limits.grader_memory_mb):  # what the kernel sends, and what the tests compute from it
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
            result.exercises = decide(solution_nb, examined["uses"], session)
        result.notes += session.notes[before:]
    finally:
        if session is not None:
            session.close()
        shutil.rmtree(folder, ignore_errors=True)
