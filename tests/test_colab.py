"""Colab, simulated: a fresh virtual environment that has the libraries Colab preinstalls (here: this checkout's
environment, seen through a .pth file, so torch, transformers, peft, ... import) but not course_lib. Each
notebook's first cell, with COURSE_LIB_SOURCE pointing at this repository as a git URL, must install course_lib
from it (pip clones the committed HEAD and builds it, as on Colab from GitHub) and print the doctor's summary;
then each notebook's imports cell must run against the installed copy, package data (data sets, adapters,
measurements) included. What this does not simulate: downloading the model packages (they are already visible,
so the cell's second pip command finds them installed) and Colab's GPU."""
import os
import subprocess
import sysconfig
import venv

import pytest

from grader.paths import assignment_names
from notebook_tools import ROOT, read

PUBLISHED = 'COURSE_LIB_SOURCE = "git+https://github.com/fine-tuning-llms/course.git"'


def _code_cells(name: str) -> list[str]:
    return [c.source for c in read(ROOT / "solutions" / f"{name}.ipynb").cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """(python of the fresh environment, a working folder outside the repository)."""
    if not (ROOT / ".git").exists():
        pytest.fail("the Colab simulation installs course_lib from this repository's git history: run it in a checkout")
    home = tmp_path_factory.mktemp("colab")
    venv.EnvBuilder(with_pip=True).create(home / "venv")
    python = home / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (home / "work").mkdir()
    # The "preinstalled" libraries: this environment's site-packages as a plain path entry. Its .pth files (the
    # editable install of course_lib among them) are not processed from there, so course_lib is not importable.
    with open(os.path.join(site, "colab_preinstalled.pth"), "w") as pth:
        pth.write(sysconfig.get_paths()["purelib"] + "\n")
    return python, home / "work"


def _run(colab, code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    python, work = colab
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "MPLBACKEND": "Agg"}
    return subprocess.run([str(python), "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_fresh_environment_has_the_libraries_but_not_course_lib(colab):
    run = _run(colab, "import importlib.util, torch, transformers, peft, trl\n"
                      "assert importlib.util.find_spec('course_lib') is None, 'course_lib must not be preinstalled'")
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("name", assignment_names())
def test_first_cell_installs_course_lib_from_the_source_and_the_imports_run(colab, name):
    cells = _code_cells(name)
    first, imports = cells[0], next(c for c in cells if "from course_lib import" in c)
    assert PUBLISHED in first, "the first cell names the published source in one line (see README, Colab)"
    setup = first.replace(PUBLISHED, f'COURSE_LIB_SOURCE = "git+file://{ROOT}"')
    run = _run(colab, setup, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "course_lib doctor:" in run.stdout and " fail" not in run.stdout.split("course_lib doctor:")[1]
    check = imports + f"\nimport course_lib\nassert course_lib.__file__.startswith({str(colab[0].parents[1])!r}), course_lib.__file__\n"
    run = _run(colab, check)
    assert run.returncode == 0, f"{name}: the imports cell failed against the installed course_lib:\n{run.stderr[-3000:]}"
