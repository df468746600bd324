"""Grading a batch: every submission in worker processes, then the gradebook, feedback and reports.

One machine: ``--jobs N`` forked workers, each kernel with its share of the cores. Several machines: the same
command per shard (``--shard K/N``, e.g. a Slurm or Kubernetes job array), each writing its results to a shard
file, then ``merge`` records them into the one gradebook and writes the reports.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import nbformat
import torch
from tqdm.auto import tqdm

from .gradebook import export, open_course, record, release
from .paths import DEFAULT_COURSE, SOLUTIONS, GraderError
from .rebuild import solved
from .report import write_reports
from .results import Exercise, Result
from .run import Task, grade_one
from .sandbox import Limits, SandboxUnavailable, bwrap, run_folder, sweep_stale
from .submissions import find_submissions, unpack
from .verdicts import blank_verdicts

SHARDS = "shards"  # the folder under --out where each shard writes its results
CANARY = "(the course's own solution)"  # not a valid student id: it can never be a learner's


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


def _run_tasks(tasks: list[Task], jobs: int, progress: bool) -> list[Result]:
    """Grade every task, in this process or ``jobs`` forked workers. A worker that dies (or any failure outside
    :func:`grade_one`, which never raises) costs only its own submissions: they come back as problems."""
    results: list[Result] = []
    bar = tqdm(total=len(tasks), desc="grading", unit="notebook", disable=not progress)
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(grade_one(task))
            bar.update()
    else:
        with workers(jobs) as pool:
            futures = [pool.submit(grade_one, task) for task in tasks]
            for task, future in zip(tasks, futures):
                try:
                    results.append(future.result())
                except Exception as err:
                    failed = Result(task.student, task.notebook, problem="the grader's worker failed while grading this "
                                    "notebook; tell your instructor",
                                    infrastructure=f"worker failed ({type(err).__name__})")
                    failed.exercises = blank_verdicts(nbformat.read(task.solution, as_version=4),
                                                      "Not graded: " + failed.problem)
                    results.append(failed)
                bar.update()
    bar.close()
    return results


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), shard K of N counted from 0 (a job array's index); anything else raises."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise GraderError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= k < n:
        raise GraderError(f"--shard {text}: K must be between 0 and N - 1")
    return k, n


def shard_of(student: str, shards: int) -> int:
    """The shard that grades a student: a stable hash of the id, so all of a student's notebooks go together and
    every machine agrees without talking to the others."""
    return zlib.crc32(student.encode("utf-8")) % shards


def grade(submissions: Path, out: Path, course: Path = DEFAULT_COURSE, jobs: int = 1, sandboxed: bool = True,
          limits: Limits = Limits(), solutions: Path = SOLUTIONS, progress: bool = True,
          shard: tuple[int, int] | None = None) -> list[Result]:
    """Grade every submission in a folder or zip: sandboxed execution, verdicts decided outside the kernel,
    feedback in ``out/feedback/<student>/<notebook>.html``, ``out/grades.csv`` (a row per student, a column
    per notebook and exercise), ``out/summary.md`` + ``out/score_distribution.png``, ``out/scores.json``, and
    the scores in nbgrader's gradebook (``out/nbgrader_grades.csv`` is nbgrader's export of it).
    With ``shard=(K, N)`` only the students of shard K are graded and their results go to
    ``out/shards/K-of-N.json`` for :func:`merge`; nothing is recorded and no report is written.
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
        if not found and not problems and not rejected:
            raise GraderError(f"no course notebooks found under {submissions}")
        problems_by_student: dict[str, list[str]] = {}
        for problem in problems:
            problems_by_student.setdefault(problem.student, []).append(problem.text)
        if shard is not None:
            k, n = shard
            found = [s for s in found if shard_of(s.student, n) == k]
            problems_by_student = {st: p for st, p in problems_by_student.items() if shard_of(st, n) == k}
            rejected = rejected if k == 0 else []  # files of no student: reported once
        students = sorted({s.student for s in found} | set(problems_by_student))
        names = sorted({s.assignment for s in found})
        if jobs > 1:  # kernels side by side share the cores
            limits = replace(limits, threads=limits.threads or max(1, (os.cpu_count() or 1) // jobs))
        released = release(api, names, solutions) if names else {}
        # The canaries: each notebook's own solution, graded first in the same sandbox, must earn full marks.
        (work / "canary").mkdir()
        for name in names:
            canary = solved(nbformat.read(released[name], as_version=4),
                            nbformat.read(solutions / f"{name}.ipynb", as_version=4))
            nbformat.write(canary, work / "canary" / f"{name}.ipynb")
        tasks = [Task(CANARY, name, work / "canary" / f"{name}.ipynb", released[name], solutions / f"{name}.ipynb",
                      run_root, limits, sandboxed) for name in names]
        staged = work / "executed"  # the executed notebooks wait here until the canaries have passed
        tasks += [Task(s.student, s.assignment, s.path, released[s.assignment], solutions / f"{s.assignment}.ipynb",
                       run_root, limits, sandboxed, staged / s.student / s.assignment / f"{s.assignment}.ipynb")
                  for s in found]
        results = _run_tasks(tasks, jobs, progress)
        canaries, results = results[:len(names)], results[len(names):]
        _check_canaries(canaries)
        broken = [r for r in results if r.infrastructure]
        if results and len(broken) == len(results):
            reasons = sorted({r.infrastructure for r in broken})
            raise GraderError(f"no submission could be graded, for a reason of this machine, not the submissions "
                              f"(nothing was recorded): {'; '.join(reasons)[:1000]}")
        for path in sorted(staged.glob("*/*/*.ipynb")):
            target = Path(api.coursedir.root) / "autograded" / path.relative_to(staged)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
        if shard is not None:
            _write_shard(out / SHARDS / f"{shard[0]}-of-{shard[1]}.json", shard, results, students,
                         problems_by_student, rejected)
        else:
            finish(api, out, results, students, problems_by_student, rejected, names)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)
    return results


def _check_canaries(canaries: list[Result]) -> None:
    """Raise :class:`GraderError` (nothing is recorded) unless every notebook's own solution earned full marks in
    this run's sandbox: otherwise the machine, not the learners, would decide the grades (a kernel that cannot
    import course_lib gives every submission, the correct ones too, zero)."""
    failed = [c for c in canaries if c.score < c.max_score or c.max_score == 0]
    if not failed:
        return
    lines = []
    for c in failed:
        why = c.infrastructure or c.problem or next((f"{e.name}: {e.message}" for e in c.exercises if not e.passed), "")
        lines.append(f"{c.notebook}: {c.score:g} of {c.max_score:g} ({why[:300]}{'; ' if c.notes else ''}"
                     f"{'; '.join(c.notes)[:300]})")
    raise GraderError("the course's own solution did not earn full marks in this grading sandbox, so the grades would "
                      "say more about this machine than about the submissions; nothing was recorded. "
                      + " | ".join(lines) + ". Check that the kernel sees the course's environment: "
                      "`python -m course_lib doctor`, course_lib installed in the virtual environment (`pip install "
                      "-e .`) or on PYTHONPATH, and `python -m grader check`.")


def finish(api, out: Path, results: list[Result], students: list[str], problems_by_student: dict[str, list[str]],
           rejected: list[str], names: list[str]) -> None:
    """Record the results in the gradebook, write the feedback and reports, export nbgrader's CSV."""
    record(api, results)
    write_reports(results, students, problems_by_student, rejected, out)
    if names:
        export(api, out / "nbgrader_grades.csv")


def _write_shard(path: Path, shard: tuple[int, int], results: list[Result], students: list[str],
                 problems_by_student: dict[str, list[str]], rejected: list[str]) -> None:
    """One shard's results as JSON, written whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"shard": shard[0], "of": shard[1], "results": [asdict(r) for r in results], "students": students,
            "problems": problems_by_student, "rejected": rejected}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data), encoding="utf-8")
    partial.replace(path)


def _read_shard(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["results"] = [Result(**{**r, "exercises": [Exercise(**e) for e in r["exercises"]]}).made_safe()
                           for r in data["results"]]
        data["students"], data["rejected"] = [str(s) for s in data["students"]], [str(r) for r in data["rejected"]]
        data["problems"] = {str(k): [str(p) for p in v] for k, v in dict(data["problems"]).items()}
        data["shard"], data["of"] = int(data["shard"]), int(data["of"])
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise GraderError(f"{path}: not a shard file written by `grade --shard` ({type(err).__name__}: {err})") from err
    return data


def merge(out: Path, course: Path = DEFAULT_COURSE, solutions: Path = SOLUTIONS) -> list[Result]:
    """Merge the shard files under ``out/shards`` (every one of the N, all with the same N) into the gradebook
    and the reports, as one :func:`grade` run over all submissions would have written them."""
    paths = sorted((out / SHARDS).glob("*-of-*.json"))
    if not paths:
        raise GraderError(f"no shard files in {out / SHARDS}: run `grade --shard K/N --out {out}` first")
    shards = [_read_shard(p) for p in paths]
    counts = {s["of"] for s in shards}
    if len(counts) != 1:
        raise GraderError(f"the shard files in {out / SHARDS} come from different splits: N = {sorted(counts)}")
    n = counts.pop()
    missing = sorted(set(range(n)) - {s["shard"] for s in shards})
    if missing:
        raise GraderError(f"shards {missing} of {n} have no results in {out / SHARDS} yet: nothing was recorded")
    results = [r for s in shards for r in s["results"]]
    problems = {k: v for s in shards for k, v in s["problems"].items()}
    students = sorted({st for s in shards for st in s["students"]})
    rejected = [r for s in shards for r in s["rejected"]]
    names = sorted({r.notebook for r in results})
    api = open_course(course)
    if names:
        release(api, names, solutions)  # the assignments must exist in this gradebook
    finish(api, out, results, students, problems, rejected, names)
    return results
