"""grader.references: the grading kernel's copy of a notebook's references is stubs; cells that need one are found."""
import subprocess
import sys
import textwrap
import time

import nbformat
import pytest

from grader import references
from grader.references import UNAVAILABLE_ERROR, UnremovableReference, needing, removal, unavailable_problems
from grader.verdicts import reference_uses
from notebook_tools import ROOT, read


def _run_stubbed(tmp_path, references, code):
    """Run ``code`` with the rewritten files of ``references`` in place of course_lib's (a copy of the package)."""
    import shutil

    shutil.copytree(ROOT / "course_lib", tmp_path / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    plan = removal(references)
    for path, text in plan.files.items():
        (tmp_path / "course_lib" / path.name).write_text(text)
    for folder, text in plan.packages.items():
        (tmp_path / folder.name).mkdir()
        (tmp_path / folder.name / "__init__.py").write_text(text)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_removed_references_raise_however_they_are_reached(tmp_path):
    done = _run_stubbed(tmp_path, ["lora.lora_scaling", "lora.LoRALinear", "memory.BYTES_PER_TRAINED_PARAM",
                                   "decision.CostModel.training", "peft"], """
        import importlib, inspect, sys
        from course_lib import decision, lora, memory
        outcomes = []
        for attempt in (lambda: lora.lora_scaling(16, 8), lambda: exec("class Mine(lora.LoRALinear): pass", {"lora": lora}),
                        lambda: memory.BYTES_PER_TRAINED_PARAM * 2, lambda: float(memory.BYTES_PER_TRAINED_PARAM),
                        lambda: decision.CostModel().training(1000), lambda: importlib.import_module("peft"),
                        lambda: getattr(sys.modules["course_lib.lora"], "lora_scaling")(1, 2)):
            try:
                attempt()
                outcomes.append("ran")
            except Exception as err:
                outcomes.append(type(err).__name__)
        print(outcomes)
        print("KEPT", lora.count_parameters.__name__, decision.CostModel().per_request(1000))
        print("SOURCE", "def lora_scaling" in inspect.getsource(lora), "class LoRALinear" in inspect.getsource(lora))
    """)
    assert done.returncode == 0, done.stderr
    assert f"[{', '.join([repr(UNAVAILABLE_ERROR)] * 7)}]" in done.stdout
    assert "KEPT count_parameters 0.0015" in done.stdout  # the rest of the module is untouched
    assert "SOURCE False False" in done.stdout                 # the reference's text is gone from the file


def test_references_that_cannot_be_removed_are_refused():
    with pytest.raises(UnremovableReference, match="torch.add"):
        removal(["torch.add"])
    with pytest.raises(UnremovableReference, match="no module"):
        removal(["no_such_package.thing"])
    assert removal(["datasketch_not_installed_here"]).files == {}  # absent here, so absent in the kernel


def test_a_graded_cell_that_needs_a_reference_through_course_lib_is_found():
    nb = read(ROOT / "tests" / "data" / "fixture_course" / "00_fixture.ipynb")
    nb.metadata.course.references = {"lora_scale": ["sft.sft_example"]}
    nb.cells.append(nbformat.v4.new_code_cell("from course_lib import dpo\nbatch = dpo.preference_batch(None, [])"))
    problems = unavailable_problems(nb)
    assert len(problems) == 1 and "dpo.preference_batch, which needs sft.sft_example" in problems[0]
    nb.cells[-1].metadata["tags"] = ["skip-grading"]
    assert unavailable_problems(nb) == []


SHOP = """
from __future__ import annotations
from dataclasses import dataclass
from .lora import inject_lora

@dataclass(frozen=True)
class Recipe:
    r: int
    def with_r(self, r: int) -> Recipe:
        return Recipe(r)
    def apply(self, model):
        return inject_lora(model, r=self.r)

SMALL = Recipe(4)
LARGE = SMALL.with_r(16)
"""


@pytest.mark.parametrize("tail, line", [("", None), ("APPLIED = LARGE.apply(None)\n", 16),
                                        ("class Eager(Recipe):\n    def __post_init__(self):\n"
                                         "        self.apply(None)\nEAGER = Eager(2)\n", 19)])
def test_code_run_at_import_is_judged_by_what_it_calls(tmp_path, monkeypatch, tail, line):
    """Making an instance at import runs its construction, not its methods; calling a method that needs a reference
    (directly or from ``__post_init__``) is found. Whoever holds the class or an instance may call anything."""
    (tmp_path / "shop.py").write_text(SHOP + tail)
    monkeypatch.setattr(references, "PACKAGE", tmp_path)
    needs, problems = needing(["lora.inject_lora"])
    assert needs["shop.Recipe"] == needs["shop.LARGE"] == needs["shop.SMALL"] == "lora.inject_lora"
    assert "shop.with_r" not in needs
    if line is None:
        assert problems == []
    else:
        assert problems == [f"course_lib/shop.py line {line} needs lora.inject_lora when it is imported"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb")))
def test_no_cell_the_grading_kernel_runs_needs_a_reference(name):
    assert unavailable_problems(read(ROOT / "solutions" / f"{name}.ipynb")) == []


def test_the_static_check_walks_each_attribute_chain_once():
    source = "x = (a" + ".a" * 150_000 + ")\nfrom course_lib import lora as L\nL.lora_scaling(1, 2)"
    start = time.perf_counter()
    uses = reference_uses(source, ["lora.lora_scaling", "peft"])
    assert time.perf_counter() - start < 10
    assert uses == ["lora.lora_scaling"] or uses == []  # a parser that gives up on the chain names nothing
    assert reference_uses("import peft.tuners as t\nt.lora", ["peft"]) == ["peft"]
