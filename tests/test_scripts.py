"""scripts/ as layers: every script lives in a folder of its kind, runs one way (argparse, its docstring as --help,
which says what it writes), imports the installed course_lib and never another script or a path it edits in."""
import ast
import subprocess
import sys

import pytest

from notebook_tools import ROOT

KINDS = ("data", "adapters", "measure", "bench", "tools")
SCRIPTS = sorted((ROOT / "scripts").rglob("*.py"))
SCRIPT_NAMES = {p.stem for p in SCRIPTS}
PATH_EDITS_ALLOWED = {"bench_grading"}  # the grader is not an installed package


def test_every_script_is_in_a_folder_of_its_kind():
    assert SCRIPTS
    assert {p.parent.relative_to(ROOT / "scripts").as_posix() for p in SCRIPTS} <= set(KINDS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_script_runs_one_way(path):
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc and f"scripts/{path.parent.name}/{path.name}" in doc, "the docstring shows how to run it, by its path"
    parsers = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "ArgumentParser"]
    assert parsers and any(k.arg == "description" and getattr(k.value, "id", "") == "__doc__"
                           for p in parsers for k in p.keywords), "argparse with the docstring as --help"
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & SCRIPT_NAMES, "a script imports another script: move the shared code into course_lib"
    edits = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "path"
             and getattr(n.value, "id", "") == "sys"]
    assert not edits or path.stem in PATH_EDITS_ALLOWED, "sys.path edited: course_lib is installed"


@pytest.mark.parametrize("kind", ["data", "measure"])
def test_help_prints_the_docstring(kind):
    script = sorted((ROOT / "scripts" / kind).glob("*.py"))[0]
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True).stdout
    first = ast.get_docstring(ast.parse(script.read_text())).splitlines()[0]
    assert first in out and f"scripts/{kind}/{script.name}" in out
