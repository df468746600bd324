"""grader.verdicts on its own: which references a source names, what a failed test tells the learner, and how
one exercise is decided (visible then hidden tests, points, reference uses), with an in-process stand-in for the
sandboxed kernel that answers through the same wire format."""
import nbformat
import pytest
import torch

from course_lib.grading import GradingError, wire
from grader.kernel import LearnerCallError
from grader.references import UNAVAILABLE_ERROR
from grader.verdicts import _failure, decide, reference_uses

FORBIDDEN = ["dpo.dpo_loss", "lora.LoRALinear", "trl", "scipy.stats.bootstrap"]


@pytest.mark.parametrize("source, found", [
    ("from course_lib.dpo import dpo_loss\ndpo_loss(1, 2)", ["dpo.dpo_loss"]),
    ("from course_lib.dpo import dpo_loss as mine\nmine(1)", ["dpo.dpo_loss"]),
    ("import course_lib.dpo as d\nd.dpo_loss", ["dpo.dpo_loss"]),
    ("from course_lib import dpo\nx = dpo.dpo_loss", ["dpo.dpo_loss"]),
    ("from course_lib import lora as L\nclass Mine(L.LoRALinear): pass", ["lora.LoRALinear"]),
    ("import trl", ["trl"]),
    ("from trl import DPOTrainer", ["trl"]),
    ("import scipy.stats as st\nst.bootstrap((x,), f)", ["scipy.stats.bootstrap"]),
    ("import trl\nfrom course_lib.dpo import dpo_loss", ["dpo.dpo_loss", "trl"]),
])
def test_reference_uses_resolves_imports_aliases_and_attribute_chains(source, found):
    assert reference_uses(source, FORBIDDEN) == found


@pytest.mark.parametrize("source", [
    "print('dpo.dpo_loss is the reference')",                 # a string names nothing
    "import trlx\nimport mytrl",                               # another package whose name starts alike
    "my_dpo = object()\nmy_dpo.dpo_loss",                     # the learner's own object with the same attribute
    "from course_lib.dpo import pair_logprobs",                # another function of the same module
    "import scipy.stats as st\nst.norm.cdf(1.0)",              # another function of the same package
    "def dpo_loss(a, b):\n    return a - b",                  # the learner's own function of the same name
    "def broken(:\n    pass",                                  # code that cannot be parsed names nothing
])
def test_reference_uses_ignores_what_is_not_a_use(source):
    assert reference_uses(source, FORBIDDEN) == []


def test_reference_uses_reads_magics_as_ipython_runs_them():
    assert reference_uses("!pip list\nimport trl as t\n%time t.DPOTrainer", FORBIDDEN) == ["trl"]


def _raise(err):
    try:
        raise err
    except BaseException as caught:
        return caught


def test_a_hidden_failure_shows_only_the_authors_words():
    summary = _failure(_raise(GradingError("values differ at index 3: 7.0 vs 6.0", summary="Check the sign.")),
                       True, "<hidden>")
    assert summary == "Check the sign."
    plain = _failure(_raise(GradingError("values differ at index 3: 7.0 vs 6.0")), True, "<hidden>")
    assert "7.0" not in plain and "hidden test input" in plain
    other = _failure(_raise(ZeroDivisionError("division by zero at x=-3.0")), True, "<hidden>")
    assert other == "The hidden tests could not use what your function returned (ZeroDivisionError)."
    call = _failure(_raise(LearnerCallError("f", "no answer within 5 s", detail="RuntimeError: secret -3.0")),
                    True, "<hidden>")
    assert call == "`f` did not return a result (no answer within 5 s) on a hidden test input"


def test_a_visible_failure_shows_the_message_and_the_test_line():
    label = "<visible tests of f_tests>"
    source = "x = 1\nassert x == 2, 'x should be 2'"
    err = _raise_from(compile(source, label, "exec"))
    assert _failure(err, False, label, source) == ("AssertionError: x should be 2 "
                                                   "(in the visible test: `assert x == 2, 'x should be 2'`)")
    call = LearnerCallError("f", "it raised", detail="ValueError")
    assert _failure(call, False, label) == "`f` did not return a result (it raised: ValueError)"


def _raise_from(code):
    try:
        exec(code, {})
    except AssertionError as err:
        return err
    raise AssertionError("the code did not fail")


# --- decide: one exercise, visible then hidden tests, against a stand-in kernel ---------------------------

def _solution(visible: str, hidden: str, points: int = 2) -> nbformat.NotebookNode:
    def cell(source, gid, **meta):
        nb_meta = {"schema_version": 3, "grade": False, "solution": False, "locked": True, "task": False,
                   "grade_id": gid, "points": 0} | meta
        return nbformat.v4.new_code_cell(source, metadata={"nbgrader": nb_meta})
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from course_lib import grading\nfrom course_lib.grading import assert_number_close, check"),
        cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", "double",
             solution=True, locked=False),
        cell(f"{visible}\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS", "double_tests", grade=True,
             points=points),
    ])


class StandInKernel:
    """Answers calls as the sandboxed kernel does (values through the wire format), from plain functions."""

    def __init__(self, **functions):
        self.functions, self.calls = functions, []

    def call(self, name, args, kwargs, refs, probe=None):
        tensors: dict[str, torch.Tensor] = {}
        args = wire.decode(wire.encode(tuple(args), tensors, refs), tensors)
        self.calls.append(args)
        try:
            value = self.functions[name](*args, **kwargs)
        except Exception as err:
            raise LearnerCallError(name, "it raised an exception", detail=type(err).__name__) from None
        out: dict[str, torch.Tensor] = {}
        return {"value": wire.encode(value, out)}, out


class NotAvailableWhileGrading(ModuleNotFoundError):
    pass


NotAvailableWhileGrading.__name__ = UNAVAILABLE_ERROR
VISIBLE = "print('visible ran')\nassert_number_close(double(1.0), 2.0, name='double(1.0)')"
HIDDEN = "print('hidden ran')\ncheck(double(-3.0) == -6.0, 'Negative inputs go wrong.')"


def test_a_right_answer_earns_the_points_and_the_visible_output_is_kept():
    [verdict] = decide(_solution(VISIBLE, HIDDEN), {}, StandInKernel(double=lambda x: 2 * x))
    assert (verdict.grade_id, verdict.points, verdict.max_points, verdict.passed) == ("double_tests", 2.0, 2.0, True)
    assert "visible ran" in verdict.output and "hidden ran" not in verdict.output


def test_a_wrong_answer_on_hidden_inputs_earns_nothing_and_sees_only_the_message():
    kernel = StandInKernel(double=lambda x: 2 * abs(x))
    [verdict] = decide(_solution(VISIBLE, HIDDEN), {}, kernel)
    assert (verdict.points, verdict.passed) == (0.0, False)
    assert verdict.message == "Negative inputs go wrong." and "-3" not in verdict.message
    assert kernel.calls == [(1.0,), (-3.0,)]


def test_a_visible_failure_stops_before_the_hidden_tests():
    kernel = StandInKernel(double=lambda x: x + 2 if x > 0 else 2 * x)
    [verdict] = decide(_solution(VISIBLE, HIDDEN), {}, kernel)
    assert verdict.points == 0.0 and "double(1.0)" in verdict.message
    plain = "x = 1\nassert double(x) == 2.0, 'double(1.0) should be 2.0'"
    [verdict] = decide(_solution(plain, HIDDEN), {}, StandInKernel(double=lambda x: x + 2))
    assert verdict.message == ("AssertionError: double(1.0) should be 2.0 "
                               "(in the visible test: `assert double(x) == 2.0, 'double(1.0) should be 2.0'`)")
    assert kernel.calls == [(1.0,)]


def test_an_answer_that_names_a_reference_earns_nothing_and_is_told_which():
    kernel = StandInKernel(double=lambda x: 2 * x)
    [verdict] = decide(_solution(VISIBLE, HIDDEN), {"double": ["dpo.dpo_loss"]}, kernel)
    assert verdict.points == 0.0 and "dpo.dpo_loss" in verdict.message and kernel.calls == []


def test_an_answer_that_reaches_a_removed_reference_earns_nothing():
    def double(x):
        raise NotAvailableWhileGrading("course_lib.dpo.dpo_loss is a reference implementation")
    [verdict] = decide(_solution(VISIBLE, HIDDEN), {}, StandInKernel(double=double))
    assert verdict.points == 0.0 and "reference implementations" in verdict.message


def test_points_come_from_the_test_cells_metadata():
    [verdict] = decide(_solution(VISIBLE, HIDDEN, points=5), {}, StandInKernel(double=lambda x: 2.0 * x))
    assert (verdict.points, verdict.max_points) == (5.0, 5.0)
