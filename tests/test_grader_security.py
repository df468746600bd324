"""Hostile submissions, graded end to end by the instructor command's function, next to honest ones.

Every case is a submission of the small fixture assignment (tests/data/fixture_course: `lora_scale`, 1 point,
and `scaled_sum`, 2 points). All are graded in one sandboxed run with small limits; each test then checks that
the run completed, the attacker got no points it did not earn, the honest students' grades are right, the
gradebook and every file outside the sandbox are intact, and the feedback names the reason without
revealing the hidden tests.
"""
import csv
import os
import shutil
import socket
import sqlite3
import tempfile
from pathlib import Path

import nbformat
import pytest

from grader.course import grade, open_course, release
from grader.sandbox import Limits
from notebook_tools import ROOT, with_answers

FIXTURE = ROOT / "tests" / "data" / "fixture_course"
NAME = "00_fixture"
MARKER = "HIDDEN-MARKER-7f3a"
GOOD_SCALE = "def lora_scale(alpha, r):\n    return alpha / r"
GOOD_SUM = "def scaled_sum(x, y, alpha):\n    return x + alpha * y"
WRONG_SCALE = "def lora_scale(alpha, r):\n    return r / alpha"


def _answers(scale=GOOD_SCALE, total=GOOD_SUM):
    return {"lora_scale": scale, "scaled_sum": total}


def _cases(paths: dict) -> dict:
    """student -> (answers or raw bytes or None for a notebook edited by a function, expected total, reason)."""
    secrets = [paths["gradebook"], paths["solution"], paths["other"]]
    read_code = ("def lora_scale(alpha, r):\n    found = []\n"
                 f"    for p in {[str(p) for p in secrets]!r}:\n"
                 "        try:\n            found.append(open(p, 'rb').read(200))\n        except OSError:\n            pass\n"
                 "    print('FOUND', found)\n    return alpha / r if not found else -1.0")
    write_code = ("import os\ndef lora_scale(alpha, r):\n"
                  f"    for p in {[str(p) for p in secrets]!r}:\n"
                  "        for attempt in (lambda: open(p, 'wb').write(b'pwned'), lambda: os.remove(p)):\n"
                  "            try:\n                attempt()\n            except OSError:\n                pass\n"
                  "    return alpha / r")
    return {
        "honest_correct": (_answers(), 3, ""),
        "honest_wrong": (_answers(scale=WRONG_SCALE), 2, "lora_scale(16, 8) is 0.5, expected 2"),
        "honest_counts_threads": (_answers(scale=GOOD_SCALE + "\nimport torch\nprint('THREADS', torch.get_num_threads())"),
                                  3, ""),
        "infinite_loop": (_answers(scale="def lora_scale(alpha, r):\n    while True:\n        pass"), 2,
                          "no answer within"),
        "endless_print": (_answers(scale=GOOD_SCALE + "\nwhile True:\n    print('spam' * 100)"), 0, "was stopped"),
        "sys_exit": (_answers(scale="import sys\ndef lora_scale(alpha, r):\n    sys.exit(0)"), 2, "did not return"),
        "raise_systemexit": (_answers(scale="def lora_scale(alpha, r):\n    raise SystemExit"), 2, "did not return"),
        "os_exit": (_answers(total="import os\ndef scaled_sum(x, y, alpha):\n    os._exit(0)"), 1, "did not return"),
        "segfault": (_answers(total="import ctypes\ndef scaled_sum(x, y, alpha):\n    return ctypes.string_at(0)"),
                     1, "did not return"),
        "memory_bomb": (_answers(scale="def lora_scale(alpha, r):\n    x = bytearray(64 * 2**30)\n"
                                 "    return alpha / r"), 2, "did not return"),
        "fork_bomb": (_answers(scale="import os, time\nfor _ in range(2000):\n    try:\n        if os.fork() == 0:\n"
                               "            time.sleep(20)\n            os._exit(0)\n    except OSError:\n        break\n"
                               + WRONG_SCALE), 2, "is 0.5, expected 2"),
        "big_file": (_answers(scale="def lora_scale(alpha, r):\n    with open('big.bin', 'wb') as f:\n"
                              "        for _ in range(1024):\n            f.write(b'0' * 2**20)\n    return alpha / r"),
                     None, "did not return"),
        "read_secrets": (_answers(scale=read_code), 3, ""),
        "write_secrets": (_answers(scale=write_code), 3, ""),
        "network": (_answers(total="import socket\ndef scaled_sum(x, y, alpha):\n"
                             f"    for host in ('127.0.0.1', '1.1.1.1'):\n        s = socket.socket()\n"
                             "        s.settimeout(1)\n        try:\n"
                             f"            s.connect((host, {paths['port']}))\n            return x\n"
                             "        except OSError:\n            pass\n    return x + alpha * y"), 3, ""),
        "monkeypatch": (_answers(scale="import torch, numpy, course_lib.grading as g\n"
                                 "torch.allclose = torch.equal = numpy.allclose = lambda *a, **k: True\n"
                                 "g.check = g.assert_tensors_close = g.assert_number_close = lambda *a, **k: None\n"
                                 "check = assert_number_close = assert_tensors_close = g.check\n"
                                 "def lora_scale(alpha, r):\n    return 0.0",
                                 total="def scaled_sum(x, y, alpha):\n    return x"), 0, "differs"),
        "input_transformer": (_answers(scale="get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
                                       "def lora_scale(alpha, r):\n    return 0.0",
                                       total="def scaled_sum(x, y, alpha):\n    return x"), 0, "did not return"),
        "showtraceback": (_answers(scale="get_ipython().showtraceback = lambda *a, **k: None\n"
                                   "def lora_scale(alpha, r):\n    return 0.0",
                                   total="def scaled_sum(x, y, alpha):\n    return x"), 0, ""),
        "always_equal": (_answers(scale="class Yes(float):\n    def __eq__(self, other): return True\n"
                                  "    def __ne__(self, other): return False\n"
                                  "def lora_scale(alpha, r):\n    return Yes(0.0)",
                                  total="class T:\n    def __eq__(self, o): return True\n    shape = (5,)\n"
                                  "def scaled_sum(x, y, alpha):\n    return T()"), 0, ""),
        "edit_locked_tests": (None, 0, "locked"),
        "delete_locked_tests": (None, 0, "missing"),
        "odd_metadata": (None, 3, ""),  # a cell whose nbgrader grade_id is a list: an own cell, not a crash
        "reference_call": (_answers(scale="def lora_scale(alpha, r):\n    return lora.lora_scaling(alpha, r)"), 2,
                           "reference implementation"),
        "blank": (None, 0, "NotImplementedError"),
        "invalid_json": (b"{ this is not json", 0, "not a valid notebook"),
        "not_utf8": (b"\xff\xfe\x00\x01 not text", 0, "not UTF-8"),
        "huge": (b'{"cells": [], "pad": "' + b"x" * (21 * 2**20) + b'"}', 0, "MB"),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    solutions = tmp / "solutions"
    shutil.copytree(FIXTURE, solutions)
    released = nbformat.read(release(open_course(tmp / "release"), [NAME], solutions)[NAME], as_version=4)
    course, out, subs = tmp / "course", tmp / "out", tmp / "submissions"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    paths = {"gradebook": course / "gradebook.db", "solution": solutions / f"{NAME}.ipynb",
             "other": subs / "honest_correct" / f"{NAME}.ipynb", "port": listener.getsockname()[1]}
    # A first, honest run creates the gradebook the attackers then try to read and write.
    _write(subs, "honest_correct", released, _answers())
    grade(subs, out, course=course, solutions=solutions, limits=LIMITS, progress=False)
    protected = {p: p.read_bytes() for p in (paths["solution"], paths["other"])}
    cases = _cases(paths)
    for student, (content, _, _) in cases.items():
        if isinstance(content, bytes):
            (subs / student).mkdir(parents=True)
            (subs / student / f"{NAME}.ipynb").write_bytes(content)
        elif content is not None:
            _write(subs, student, released, content)
    wrong = {"lora_scale": "def lora_scale(alpha, r):\n    return 0.0", "scaled_sum": "def scaled_sum(x, y, alpha):\n    return x"}
    edited = with_answers(released, wrong)
    for cell in edited.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = "pass"
    (subs / "edit_locked_tests").mkdir()
    nbformat.write(edited, subs / "edit_locked_tests" / f"{NAME}.ipynb")
    deleted = with_answers(released, wrong)
    deleted.cells = [c for c in deleted.cells if not c.metadata.get("nbgrader", {}).get("grade")]
    (subs / "delete_locked_tests").mkdir()
    nbformat.write(deleted, subs / "delete_locked_tests" / f"{NAME}.ipynb")
    odd = with_answers(released, _answers())
    odd.cells.append(nbformat.v4.new_code_cell("x = 1", metadata={"nbgrader": {"grade_id": ["lora_scale"]}}))
    (subs / "odd_metadata").mkdir()
    nbformat.write(odd, subs / "odd_metadata" / f"{NAME}.ipynb")
    (subs / "blank").mkdir()
    nbformat.write(released, subs / "blank" / f"{NAME}.ipynb")
    (subs / "renamed").mkdir()
    nbformat.write(with_answers(released, _answers()), subs / "renamed" / f"{NAME} (1).ipynb")
    (subs / "removed").mkdir()
    (subs / "removed" / "notes.txt").write_text("I forgot the notebook")
    results = grade(subs, out, course=course, solutions=solutions, limits=LIMITS, jobs=2, progress=False)
    connections = []
    try:
        connections.append(listener.accept())
    except BlockingIOError:
        pass
    listener.close()
    return {"results": {r.student: r for r in results}, "cases": cases, "out": out, "course": course,
            "protected": protected, "connections": connections, "tmp": tmp}


LIMITS = Limits(memory_mb=2048, processes=128, file_size_mb=64, cell_timeout_s=10, call_timeout_s=8,
                notebook_timeout_s=90, output_bytes=200_000)


def _write(subs, student, released, answers):
    (subs / student).mkdir(parents=True, exist_ok=True)
    nbformat.write(with_answers(released, answers), subs / student / f"{NAME}.ipynb")


CASES = list(_cases({"gradebook": "g", "solution": "s", "other": "o", "port": 1}))


@pytest.mark.parametrize("student", CASES)
def test_each_submission_gets_what_it_earned_and_is_told_why(graded, student):
    result = graded["results"][student]
    _, expected, reason = graded["cases"][student]
    if expected is not None:
        assert result.score == expected, (student, [(e.grade_id, e.points, e.message) for e in result.exercises],
                                          result.notes, result.problem)
    else:
        assert result.score < 3
    feedback = (graded["out"] / "feedback" / student / f"{NAME}.html").read_text()
    assert reason in feedback
    assert MARKER not in feedback, "hidden test text leaked into the feedback"
    assert "SQLite format" not in feedback and "BEGIN SOLUTION" not in feedback
    assert len(feedback) < 1_000_000


def test_the_honest_students_grades_are_right_and_in_the_csv_and_gradebook(graded):
    rows = {r["student"]: r for r in csv.DictReader((graded["out"] / "grades.csv").open())}
    assert rows["honest_correct"]["total"] == "3" and rows["honest_correct"][f"{NAME}:lora_scale"] == "1"
    assert rows["honest_wrong"]["total"] == "2" and rows["honest_wrong"][f"{NAME}:scaled_sum"] == "2"
    assert set(rows) >= set(CASES) | {"renamed", "removed"}
    assert rows["renamed"][NAME] == "" and rows["removed"][NAME] == ""
    db = sqlite3.connect(graded["course"] / "gradebook.db")
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    exported = {r["student_id"]: r for r in csv.DictReader((graded["out"] / "nbgrader_grades.csv").open())}
    assert float(exported["honest_correct"]["score"]) == 3.0 and float(exported["honest_wrong"]["score"]) == 2.0
    assert float(exported["monkeypatch"]["score"]) == 0.0


def test_nothing_outside_the_sandbox_was_touched(graded):
    for path, content in graded["protected"].items():
        assert path.read_bytes() == content, f"{path} was modified"
    assert graded["connections"] == [], "a submission reached a socket outside its sandbox"
    assert not list(graded["tmp"].rglob("big.bin")), "a submission's file was left behind"
    summary = (graded["out"] / "summary.md").read_text()
    assert "Exercises most often failed" in summary and (graded["out"] / "score_distribution.png").stat().st_size > 0


def test_kernels_graded_side_by_side_share_the_cores(graded):
    # --jobs 2: each kernel gets half the cores (not all of them each, which would oversubscribe the machine).
    executed = nbformat.read(graded["course"] / "autograded" / "honest_counts_threads" / NAME / f"{NAME}.ipynb", 4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"THREADS {max(1, (os.cpu_count() or 1) // 2)}\n" in printed


def test_renamed_or_missing_notebooks_are_reported(graded):
    assert "renamed" not in graded["results"] and "removed" not in graded["results"]
    renamed = (graded["out"] / "feedback" / "renamed" / "problems.html").read_text()
    assert "not a course notebook" in renamed
    removed = graded["out"] / "feedback" / "removed" / "problems.html"
    assert removed.is_file()


def test_raw_writes_to_stdout_never_reach_the_instructors_terminal(tmp_path, capfd):
    # Writes below IPython (os.write on fd 1 and 2) bypass the notebook's output budget; they must go nowhere.
    from grader.run import grade_one

    solutions = tmp_path / "solutions"
    shutil.copytree(FIXTURE, solutions)
    released_path = release(open_course(tmp_path / "course"), [NAME], solutions)[NAME]
    flood = GOOD_SCALE + "\nimport os\nfor _ in range(64):\n    os.write(1, b'LEAK' * 2**18)\n    os.write(2, b'LEAK' * 2**18)"
    _write(tmp_path / "subs", "flood", nbformat.read(released_path, 4), _answers(scale=flood))
    capfd.readouterr()
    run_root = Path(tempfile.mkdtemp(prefix="cg-"))  # kernel sockets need a short path
    try:
        result = grade_one("flood", NAME, tmp_path / "subs" / "flood" / f"{NAME}.ipynb", released_path,
                           solutions / f"{NAME}.ipynb", run_root, LIMITS, True, [tmp_path])
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    captured = capfd.readouterr()
    assert result.score == 3
    assert "LEAK" not in captured.out and "LEAK" not in captured.err
