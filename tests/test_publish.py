"""grader.publish: one value ([project.urls] Source) sets the notebooks' install line and the Colab links."""
import shutil

import nbformat
import pytest

from grader import publish
from notebook_tools import ROOT


def test_the_course_is_published_from_its_source():
    assert publish.differences() == [], "run `python -m grader publish`"
    assert "https://colab.research.google.com/github/fine-tuning-llms/course/blob/main/notebooks/03_lora_basics.ipynb" \
        in (ROOT / "README.md").read_text()


def test_publishing_another_address_rewrites_first_cells_and_links(tmp_path, monkeypatch):
    names = ["01_when_to_finetune", "03_lora_basics"]
    (tmp_path / "solutions").mkdir()
    for name in names:
        shutil.copy(ROOT / "solutions" / f"{name}.ipynb", tmp_path / "solutions" / f"{name}.ipynb")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.setattr(publish, "SOLUTIONS", tmp_path / "solutions")
    monkeypatch.setattr(publish, "README", tmp_path / "README.md")
    monkeypatch.setattr(publish, "assignment_names", lambda: names)
    monkeypatch.setattr(publish, "source", lambda: "https://github.com/acme/llm-course")
    assert len(publish.differences()) == 3  # two first cells and the README table
    changed = publish.publish()
    assert sorted(p.name for p in changed) == ["01_when_to_finetune.ipynb", "03_lora_basics.ipynb", "README.md"]
    assert publish.differences() == [] and publish.publish() == []  # idempotent
    for name in names:
        first = next(c for c in nbformat.read(tmp_path / "solutions" / f"{name}.ipynb", as_version=4).cells
                     if c.cell_type == "code").source
        assert 'COURSE_LIB_SOURCE = "git+https://github.com/acme/llm-course.git"' in first
    readme = (tmp_path / "README.md").read_text()
    assert readme.count("colab.research.google.com/github/acme/llm-course/blob/main/notebooks/") == 2
    assert "fine-tuning-llms/course/blob" not in readme


def test_a_source_colab_cannot_open_is_refused(monkeypatch, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project.urls]\nSource = "https://gitlab.com/acme/course"\n')
    monkeypatch.setattr(publish, "ROOT", tmp_path)
    with pytest.raises(ValueError, match="GitHub repository address"):
        publish.source()
