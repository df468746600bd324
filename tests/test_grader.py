"""The instructor pipeline end to end on the course's notebooks: sandboxed grading, feedback, CSV and
nbgrader's export, through the same function as `python -m grader grade`."""
import csv
import json
import os
from pathlib import Path

import nbformat
import pytest

from grader.batch import grade
from grader.paths import GraderError, assignment_names
from grader.submissions import find_submissions
from notebook_tools import ROOT, filled_submission, read, with_answers


def test_find_submissions_reports_what_it_skips(tmp_path):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "03_lora_basics.ipynb").write_text("{}")
    (tmp_path / "ann" / "homework.ipynb").write_text("{}")
    (tmp_path / "stray.ipynb").write_text("{}")
    (tmp_path / "bob").symlink_to(tmp_path / "ann")
    (tmp_path / "carl").mkdir()
    (tmp_path / "carl" / "04_quantization.ipynb").symlink_to(tmp_path / "ann" / "03_lora_basics.ipynb")
    (tmp_path / "=cmd|x").mkdir()
    (tmp_path / "=cmd|x" / "03_lora_basics.ipynb").write_text("{}")
    found, problems, rejected = find_submissions(tmp_path)
    assert [(s.student, s.assignment) for s in found] == [("ann", "03_lora_basics")]
    assert any(p.student == "ann" and "ann/'homework.ipynb': not a course notebook" in p.text for p in problems)
    assert any(p.student == "carl" and "carl/'04_quantization.ipynb': a link" in p.text for p in problems)
    assert any("'stray.ipynb': not a student folder" in p for p in rejected)
    assert any(p.startswith("'bob': a link") for p in rejected)
    assert any("not a valid student id" in p for p in rejected) and len(rejected) == 3
    with pytest.raises(GraderError, match="not a folder"):
        find_submissions(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.parametrize("name", assignment_names())
def test_solution_gets_full_marks_in_the_sandbox(tmp_path, name):
    submissions = tmp_path / "submissions"
    # The untouched learner notebook (zero points) is graded in test_grader_security ("blank"): the verdict
    # logic does not depend on the notebook. The cells tagged skip-grading are not run, so this is seconds.
    for student, nb in [("alice", filled_submission(name))]:
        (submissions / student).mkdir(parents=True)
        nbformat.write(nb, submissions / student / f"{name}.ipynb")
    out, course = tmp_path / "out", tmp_path / "course"

    results = grade(submissions, out, course=course, progress=False)

    max_score = sum(c.metadata["nbgrader"].get("points", 0) for c in read(ROOT / "solutions" / f"{name}.ipynb").cells
                    if "nbgrader" in c.metadata)
    by_student = {r.student: r for r in results}
    assert by_student["alice"].score == by_student["alice"].max_score == max_score, by_student["alice"]
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert float(rows["alice"][name]) == float(rows["alice"]["total"]) == max_score
    nbgrader_rows = {r["student_id"]: r for r in csv.DictReader((out / "nbgrader_grades.csv").open())}
    assert float(nbgrader_rows["alice"]["score"]) == max_score
    scores = json.loads((out / "scores.json").read_text())
    assert scores[f"alice/{name}"]["total"] == max_score
    for student in ("alice",):
        html = (out / "feedback" / student / f"{name}.html").read_text()
        assert "<html" in html and name in html
    # Every cell grading runs ran without an error, with the skipped ones marked as such; grading needed none of them.
    graded = read(course / "autograded" / "alice" / name / f"{name}.ipynb")
    errors = [o for c in graded.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    text = "".join(o.get("text", "") for c in graded.cells if c.cell_type == "code" for o in c.outputs)
    assert "notebook ran in" in text and "not run when grading" in text
    assert any("not needed for grading" in note for note in by_student["alice"].notes)


def test_grading_refuses_without_a_sandbox_unless_told(tmp_path, monkeypatch):
    import shutil as _shutil

    from grader import sandbox

    assert _shutil.which("bwrap"), "bubblewrap must be installed where the tests run (.ci/run installs it)"
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    with pytest.raises(GraderError, match="--unsandboxed"):
        grade(tmp_path / "subs", tmp_path / "out", course=tmp_path / "course", progress=False)


def test_zip_submissions_are_unpacked_safely(tmp_path):
    import zipfile

    from grader.submissions import unpack

    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("batch/ann/03_lora_basics.ipynb", "{}")
    folder = unpack(good, tmp_path / "a")
    assert (folder / "ann" / "03_lora_basics.ipynb").is_file()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../escape.ipynb", "{}")
    (tmp_path / "b").mkdir()
    with pytest.raises(GraderError, match="unsafe entry"):
        unpack(evil, tmp_path / "b")
    assert not (tmp_path.parent / "escape.ipynb").exists()


def test_forked_workers_run_torch_after_the_grader_used_its_thread_pool():
    # A forked child that goes parallel hangs once its parent has used GNU OpenMP's pool; the workers of
    # --jobs are forked, and run each notebook's set-up (use_cores()) and tests. They must finish.
    import subprocess
    import sys

    probe = """
import torch
from grader.batch import workers
from course_lib.device import use_cores

def work(_):
    use_cores()
    x = torch.randn(512, 512)
    return float((x @ x).exp().sum() > 0), torch.get_num_threads()

if __name__ == "__main__":
    torch.set_num_threads(2)
    x = torch.randn(1024, 1024)
    (x @ x).sum()  # the parent's pool now exists
    with workers(2) as pool:
        print(list(pool.map(work, range(4))))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip() == str([(1.0, 1)] * 4)


def test_grading_again_gives_the_same_grades_and_one_gradebook_entry_each(tmp_path):
    import shutil

    from grader.gradebook import open_course, release

    fixture = ROOT / "tests" / "data" / "fixture_course"
    solutions = tmp_path / "solutions"
    shutil.copytree(fixture, solutions)
    released = read(release(open_course(tmp_path / "release"), ["00_fixture"], solutions)["00_fixture"])
    submission = with_answers(released, {"lora_scale": "def lora_scale(alpha, r):\n    return alpha / r",
                                         "scaled_sum": "def scaled_sum(x, y, alpha):\n    return x"})  # 2nd wrong
    for student in ("ann", "bob"):
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(submission, tmp_path / "subs" / student / "00_fixture.ipynb")
    out, course = tmp_path / "out", tmp_path / "course"
    kept = []
    for _ in range(2):
        grade(tmp_path / "subs", out, course=course, solutions=solutions, jobs=2, progress=False)
        kept.append({name: (out / name).read_text() for name in ("grades.csv", "scores.json", "nbgrader_grades.csv")})
    assert kept[0] == kept[1]
    rows = list(csv.DictReader((out / "nbgrader_grades.csv").open()))
    assert sorted(r["student_id"] for r in rows) == ["ann", "bob"] and {float(r["score"]) for r in rows} == {1.0}
    assert sorted(p.name for p in (out / "feedback").iterdir()) == ["ann", "bob"]


def test_rebuild_restores_locked_cells_and_keeps_the_learners_own_cells_in_place(tmp_path):
    import shutil

    from grader.gradebook import open_course, release
    from grader.rebuild import rebuild

    solutions = tmp_path / "solutions"
    shutil.copytree(ROOT / "tests" / "data" / "fixture_course", solutions)
    released = read(release(open_course(tmp_path / "course"), ["00_fixture"], solutions)["00_fixture"])
    learner = with_answers(released, {"lora_scale": "def lora_scale(alpha, r):\n    return alpha / r"})
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in learner.cells]
    setup = next(i for i, c in enumerate(learner.cells) if c.cell_type == "code")
    learner.cells[ids.index("lora_scale_tests")].source = "pass  # my own test"
    del learner.cells[ids.index("scaled_sum_tests")]
    learner.cells.insert(ids.index("lora_scale_tests") + 1, nbformat.v4.new_code_cell("AFTER_TESTS = 1"))
    learner.cells.insert(setup + 1, nbformat.v4.new_code_cell("HELPER = torch.ones(1)"))  # uses the set-up
    learner.cells.append(nbformat.v4.new_code_cell("ODD = 1", metadata={"nbgrader": {"grade_id": ["x"]}}))

    nb, notes = rebuild(learner, released)

    sources = [c.source for c in nb.cells]
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in released.cells}
    assert sources.index(released.cells[setup].source) < sources.index("HELPER = torch.ones(1)") \
        < sources.index("def lora_scale(alpha, r):\n    return alpha / r")
    assert sources[sources.index(by_id["lora_scale_tests"]) + 1] == "AFTER_TESTS = 1"
    assert sources[-1] == "ODD = 1"  # a grade id that is not a string: the learner's own cell
    assert by_id["scaled_sum_tests"] in sources and "pass  # my own test" not in sources
    assert any("'lora_scale_tests' is locked" in n for n in notes)
    assert any("'scaled_sum_tests' was missing" in n for n in notes)


def _fixture_batch(tmp_path, answers: dict) -> tuple:
    import shutil

    from grader.gradebook import open_course, release

    solutions = tmp_path / "solutions"
    shutil.copytree(ROOT / "tests" / "data" / "fixture_course", solutions)
    released = read(release(open_course(tmp_path / "release"), ["00_fixture"], solutions)["00_fixture"])
    (tmp_path / "subs" / "ann").mkdir(parents=True, exist_ok=True)
    nbformat.write(with_answers(released, answers), tmp_path / "subs" / "ann" / "00_fixture.ipynb")
    return solutions, tmp_path / "subs"


def test_a_zip_kept_anywhere_on_the_machine_is_graded(tmp_path):
    # The kernel sees only its private copy of the notebook, never the place the batch came from.
    import tempfile
    import zipfile

    solutions, subs = _fixture_batch(tmp_path, {"lora_scale": "def lora_scale(alpha, r):\n    return alpha / r"})
    elsewhere = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        with zipfile.ZipFile(elsewhere / "batch.zip", "w") as z:
            z.write(subs / "ann" / "00_fixture.ipynb", "ann/00_fixture.ipynb")
        (result,) = grade(elsewhere / "batch.zip", tmp_path / "out", course=tmp_path / "course", solutions=solutions,
                          progress=False)
    finally:
        import shutil
        shutil.rmtree(elsewhere)
    assert result.score == 1 and result.problem == ""


def test_a_machine_that_cannot_start_kernels_stops_the_run_and_records_nothing(tmp_path, monkeypatch):
    from grader.kernel import KernelSession

    solutions, subs = _fixture_batch(tmp_path, {"lora_scale": "def lora_scale(alpha, r):\n    return alpha / r"})
    out, course = tmp_path / "out", tmp_path / "course"
    grade(subs, out, course=course, solutions=solutions, progress=False)
    before = {name: (out / name).read_bytes() for name in ("grades.csv", "nbgrader_grades.csv", "scores.json")}

    def no_kernel(self, nb):
        raise OSError("no more processes")

    monkeypatch.setattr(KernelSession, "launch", no_kernel)
    with pytest.raises(GraderError, match="nothing was recorded.*no more processes"):
        grade(subs, out, course=course, solutions=solutions, progress=False)
    assert before == {name: (out / name).read_bytes() for name in before}
    rows = list(csv.DictReader((out / "nbgrader_grades.csv").open()))
    assert [(r["student_id"], float(r["score"])) for r in rows] == [("ann", 1.0)]


def test_a_kernel_that_cannot_see_course_lib_stops_the_run_at_the_canary(tmp_path, monkeypatch):
    # The course's own solution is graded first in the same sandbox; short of full marks, nothing is recorded
    # (here the kernel cannot import course_lib: every submission, the correct ones too, would score zero).
    import course_lib
    import grader.sandbox as sandbox

    solutions, subs = _fixture_batch(tmp_path, {"lora_scale": "def lora_scale(alpha, r):\n    return alpha / r"})
    package, real = Path(course_lib.__file__).resolve().parent, sandbox.read_only_paths
    monkeypatch.setattr(sandbox, "read_only_paths", lambda: [p for p in real() if p != package])
    with pytest.raises(GraderError, match="own solution did not earn full marks.*nothing was recorded.*00_fixture: 0 of 3"):
        grade(subs, tmp_path / "out", course=tmp_path / "course", solutions=solutions, progress=False)
    assert not (tmp_path / "out" / "grades.csv").exists()
    assert not list((tmp_path / "course").rglob("autograded/ann/*"))


def test_a_virtual_environment_and_a_checkout_under_tmp_grade_in_full(tmp_path):
    # CI systems keep both under /tmp, where the sandbox mounts its own tmpfs; the checkout is reached only through
    # PYTHONPATH, which the kernel's cleared environment would not have. The venv reaches the course's libraries
    # through a .pth file (its own site-packages holds nothing else).
    import shutil
    import site
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="course-under-tmp-", dir="/tmp"))
    try:
        subprocess.run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", "--without-pip",
                        str(base / "venv")], check=True)
        (own,) = (base / "venv" / "lib").glob("python3*/site-packages")
        (own / "course.pth").write_text(site.getsitepackages()[0] + "\n")
        for package in ("course_lib", "grader"):
            shutil.copytree(ROOT / package, base / "src" / package, ignore=shutil.ignore_patterns("__pycache__"))
        solutions, subs = _fixture_batch(tmp_path, {"lora_scale": "def lora_scale(alpha, r):\n    return alpha / r",
                                                    "scaled_sum": "def scaled_sum(x, y, alpha):\n    return x + alpha * y"})
        code = ("import sys, course_lib; from pathlib import Path; from grader.batch import grade; "
                "print('COURSE_LIB', course_lib.__file__); "
                "(r,) = grade(Path(sys.argv[1]), Path(sys.argv[2]), course=Path(sys.argv[3]), solutions=Path(sys.argv[4]), "
                "progress=False); print('SCORE', r.score, r.max_score)")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(base / "src")}
        done = subprocess.run([str(base / "venv" / "bin" / "python"), "-c", code, str(subs), str(tmp_path / "out"),
                               str(tmp_path / "course"), str(solutions)], cwd=base, env=env, capture_output=True,
                              text=True, timeout=600)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"COURSE_LIB {base}/src/course_lib/__init__.py" in done.stdout
    assert "SCORE 3.0 3.0" in done.stdout, done.stdout


def test_leftovers_of_a_grader_that_died_are_swept_and_a_live_ones_are_kept(tmp_path):
    import subprocess

    from grader import sandbox

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{sandbox.RUN_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{sandbox.RUN_PREFIX}{os.getpid()}-abc"
    for folder in (stale, live):
        (folder / "k").mkdir(parents=True)
    group = Path("/sys/fs/cgroup/pids") / f"{sandbox.CGROUP_PREFIX}{dead.pid}-test"
    try:
        group.mkdir()  # where the grader may not make cgroups (not root), it leaves none behind either
    except OSError:
        group = None
    removed = sandbox.sweep_stale(tmp_path)
    assert stale in removed and not stale.exists() and live.exists()
    assert group is None or (group in removed and not group.exists())


def test_shards_graded_side_by_side_merge_into_what_one_run_writes(tmp_path):
    # Two `grade --shard K/2` processes at once (two machines of a job array), then `merge`: the same grades,
    # scores, feedback pages and gradebook as one run over everything.
    import shutil
    import subprocess
    import sys

    from grader.batch import merge, shard_of
    from grader.gradebook import open_course, release

    fixture = ROOT / "tests" / "data" / "fixture_course"
    released = read(release(open_course(tmp_path / "release"), ["00_fixture"], fixture)["00_fixture"])
    good = {"lora_scale": "def lora_scale(alpha, r):\n    return alpha / r",
            "scaled_sum": "def scaled_sum(x, y, alpha):\n    return x + alpha * y"}
    subs = tmp_path / "subs"
    students = [f"s{i}" for i in range(6)]
    for i, student in enumerate(students):
        answers = good if i % 3 else {**good, "lora_scale": "def lora_scale(alpha, r):\n    return r / alpha"}
        (subs / student).mkdir(parents=True)
        nbformat.write(with_answers(released, answers), subs / student / "00_fixture.ipynb")
    (subs / "s1" / "notes.ipynb").write_text("{}")  # a problem of one student
    (subs / "stray.ipynb").write_text("{}")         # a file of no student
    assert {shard_of(s, 2) for s in students} == {0, 1}

    one = grade(subs, tmp_path / "one", course=tmp_path / "course_one", solutions=fixture, progress=False)
    code = ("import sys; from pathlib import Path; from grader.batch import grade; "
            "grade(Path(sys.argv[1]), Path(sys.argv[2]), course=Path(sys.argv[3]), solutions=Path(sys.argv[4]), "
            "progress=False, shard=(int(sys.argv[5]), 2))")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(subs), str(tmp_path / "sharded"),
                                 str(tmp_path / f"machine{k}"), str(fixture), str(k)], cwd=ROOT) for k in (0, 1)]
    assert [w.wait(timeout=600) for w in workers] == [0, 0]
    assert sorted(p.name for p in (tmp_path / "sharded" / "shards").iterdir()) == ["0-of-2.json", "1-of-2.json"]
    assert not (tmp_path / "sharded" / "grades.csv").exists()  # nothing is reported before the merge

    incomplete = tmp_path / "incomplete"
    shutil.copytree(tmp_path / "sharded", incomplete)
    (incomplete / "shards" / "1-of-2.json").unlink()
    with pytest.raises(GraderError, match=r"shards \[1\] of 2 have no results"):
        merge(incomplete, course=tmp_path / "course_incomplete", solutions=fixture)

    merged = merge(tmp_path / "sharded", course=tmp_path / "course_merged", solutions=fixture)
    assert sorted((r.student, r.score) for r in merged) == sorted((r.student, r.score) for r in one)
    assert sorted(r.score for r in one) == [2.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    for name in ("grades.csv", "scores.json", "nbgrader_grades.csv", "problems.html"):
        assert (tmp_path / "sharded" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    pages = lambda out: sorted(str(p.relative_to(out)) for p in (out / "feedback").rglob("*.html"))
    assert pages(tmp_path / "sharded") == pages(tmp_path / "one") and "feedback/s1/problems.html" in pages(tmp_path / "one")


def test_nbgrader_and_the_sandbox_agree_on_the_cell_timeout(tmp_path):
    # an instructor who runs nbgrader's own autograde gets the limit the course's grader enforces
    from grader.gradebook import load_config
    from grader.sandbox import Limits
    assert load_config(tmp_path).Execute.timeout == Limits().cell_timeout_s


@pytest.mark.slow
def test_topic_2_answers_that_reach_its_removed_modules_earn_nothing(tmp_path):
    # Topic 2 removes whole course_lib modules (dedup, splits, ...) from the grading kernel. An answer that reaches one
    # by a name no static check can read still earns nothing: the module is not there when its call runs.
    name = "02_data_preparation"
    answers = {
        "shingle_jaccard": ("import importlib\n"
                            "def shingle_jaccard(a, b, n=3):\n"
                            "    d = importlib.import_module('course_lib.' + 'de' + 'dup')\n"
                            "    return d.jaccard(d.shingles(a, n), d.shingles(b, n))"),
        "leaked_items": ("def leaked_items(train_texts, test_texts, threshold=0.7, n=3):\n"
                         "    s = getattr(__builtins__, '__im' + 'port__')('course_lib.spl' + 'its', fromlist=['x'])\n"
                         "    return sorted({i for i, _, _ in getattr(s, 'le' + 'aks')(train_texts, test_texts, threshold, n)})"),
    }
    submission = with_answers(filled_submission(name), answers)
    (tmp_path / "submissions" / "dana").mkdir(parents=True)
    nbformat.write(submission, tmp_path / "submissions" / "dana" / f"{name}.ipynb")
    [result] = grade(tmp_path / "submissions", tmp_path / "out", course=tmp_path / "course", progress=False)
    verdicts = {e.name: e for e in result.exercises}
    for exercise in answers:
        assert verdicts[exercise].points == 0 and "reference implementation" in verdicts[exercise].message, exercise
    assert all(e.points == e.max_points for e in result.exercises if e.name not in answers)
