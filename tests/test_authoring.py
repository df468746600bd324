"""grader.authoring: a cell tagged skip-grading may not be the only home of what grading needs."""
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grader.authoring import skip_problems
from grader.cells import SKIP_TAG, is_skipped
from grader.paths import assignment_names
from notebook_tools import ROOT, read


def _nb(*cells):
    out = []
    for source, skip, meta in cells:
        cell = new_code_cell(source)
        if skip:
            cell.metadata["tags"] = [SKIP_TAG]
        cell.metadata.update(meta)
        out.append(cell)
    return new_notebook(cells=out)


EXERCISE = {"nbgrader": {"grade_id": "ex", "solution": True}}


def test_reads_of_names_only_skipped_cells_define_are_problems():
    nb = _nb(("import torch\nmodel, tokenizer = object(), object()", True, {}),
             ("def f(x, tokenizer):\n    return helper(x) + tokenizer", False, EXERCISE),  # an argument is local
             ("helper = lambda x: x\nslow = sum(range(10))", True, {}),
             ("print(f(1, 2), [slow for _ in range(2)], model)", False, {}),
             ("%time x = torch.ones(1)", False, {}))  # magics parse (their argument is a string to IPython)
    assert skip_problems(nb) == ["cell 2 reads 'helper', which only skipped cells define",
                                 "cell 4 reads 'model', which only skipped cells define",
                                 "cell 4 reads 'slow', which only skipped cells define"]
    nb.cells[2].metadata.pop("tags")  # helper and slow now run; a name defined again in a run cell is fine
    nb.cells.insert(0, new_code_cell("import torch\nmodel = None"))
    assert skip_problems(nb) == []


def test_exercise_cells_can_never_be_skipped():
    nb = _nb(("def f():\n    return 1", True, EXERCISE))
    assert is_skipped(nb.cells[0])
    assert skip_problems(nb) == ["cell 1 is an exercise or test cell: it can never be skipped"]


@pytest.mark.parametrize("name", assignment_names())
def test_every_notebooks_skips_are_safe_and_keep_it_fast(name):
    nb = read(ROOT / "solutions" / f"{name}.ipynb")
    assert skip_problems(nb) == []
    assert any(is_skipped(c) for c in nb.cells)
    released = read(ROOT / "notebooks" / f"{name}.ipynb")  # nbgrader's release keeps the tags
    assert [is_skipped(c) for c in released.cells] == [is_skipped(c) for c in nb.cells]
