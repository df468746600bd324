"""Each exercise's tests (visible + hidden, run as the solution notebook defines them) pass the reference solution
and the right answers of right_answers.py, reject every wrong answer of wrong_answers.py, and never call another
exercise's answer."""

import pytest

from course_lib.grading import GradingError
from grader.cells import setup_cell
from grader.paths import assignment_names
from notebook_tools import ROOT, grade_cells, read
from right_answers import RIGHT
from wrong_answers import REFERENCE_LAYER, WRONG

NAMES = assignment_names()


def _run_tests(smollm2, name, exercise, wrong=None):
    """Run one exercise's full test cell (visible + hidden) after the notebook's imports, with every
    reference solution defined, and ``wrong`` in place of the exercise's function(s) if given."""
    solution = read(ROOT / "solutions" / f"{name}.ipynb")
    ns = {}
    imports = setup_cell(solution)
    exec(imports.source, ns)
    ns["model"], ns["tokenizer"] = smollm2
    cells = grade_cells(solution)
    for gid, cell in cells.items():  # later tests may call earlier exercises' functions; probes follow their solution
        if cell.metadata["nbgrader"]["solution"] or gid.endswith("_probe"):
            exec(cell.source, ns)
    REFERENCE_LAYER[:] = [ns.get("MyLoRALinear")]
    ns.update(wrong or {})
    exec(cells[f"{exercise}_tests"].source, ns)


@pytest.mark.parametrize("name, exercise", sorted(WRONG))
def test_reference_solution_passes_all_tests(smollm2, name, exercise):
    _run_tests(smollm2, name, exercise)


@pytest.mark.parametrize("name, exercise, mistake", [(n, e, m) for (n, e) in sorted(WRONG) for m in sorted(WRONG[n, e])])
def test_hidden_tests_reject_wrong_answer(smollm2, name, exercise, mistake):
    with pytest.raises((GradingError, AssertionError, RuntimeError)) as err:
        _run_tests(smollm2, name, exercise, WRONG[name, exercise][mistake])
    if isinstance(err.value, GradingError):
        assert len(str(err.value)) > 20  # the learner is told what is wrong


@pytest.mark.parametrize("name, exercise", sorted(WRONG))
def test_an_exercises_tests_never_call_the_learners_other_answers(smollm2, name, exercise):
    # Every other exercise unanswered (as in a fresh learner notebook): this exercise's tests still pass.
    from grader.verdicts import defined_functions

    def unanswered(*args, **kwargs):
        raise NotImplementedError("another exercise's answer was called")

    cells = grade_cells(read(ROOT / "solutions" / f"{name}.ipynb"))
    others = {f: unanswered for gid, c in cells.items() if c.metadata["nbgrader"]["solution"] and gid != exercise
              for f in defined_functions(c.source)}
    _run_tests(smollm2, name, exercise, others)


def test_every_exercise_is_covered_by_wrong_answers():
    for name in NAMES:
        cells = grade_cells(read(ROOT / "solutions" / f"{name}.ipynb"))
        exercises = {gid for gid, c in cells.items() if c.metadata["nbgrader"]["solution"]}
        assert exercises == {e for n, e in WRONG if n == name}, name


@pytest.mark.parametrize("name, exercise, variant", [(n, e, v) for (n, e) in sorted(RIGHT) for v in sorted(RIGHT[n, e])])
def test_correct_answers_written_differently_pass(smollm2, name, exercise, variant):
    answer = RIGHT[name, exercise][variant]
    _run_tests(smollm2, name, exercise, answer if isinstance(answer, dict) else {exercise: answer})
