"""The code keeps the linter's rules (pyproject.toml's [tool.ruff]): unused names, undefined names, long lines."""
import shutil
import subprocess
import sys
from pathlib import Path

from notebook_tools import ROOT


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: make setup installs it (the dev extra)"
    run = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
