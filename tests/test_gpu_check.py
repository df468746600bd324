"""scripts/tools/gpu_check.py, the per-topic GPU check, run as a dry run on the CPU so that it cannot rot unnoticed
on machines without a GPU (every check runs; the CPU is compared with itself)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tools" / "gpu_check.py"


def test_every_topic_check_runs_and_passes_on_the_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--device", "cpu"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    lines = [line for line in out.splitlines() if line.startswith(("OK", "FAIL"))]
    assert lines and all(line.startswith("OK") for line in lines), out
    for topic in ("topic 3", "topic 4", "topic 5", "topics 1, 3, 6", "topics 1, 2", "topics 4, 6"):
        assert any(topic in line for line in lines), f"no check for {topic}:\n{out}"
    assert out.rstrip().endswith(f"{len(lines)} passed, 0 failed")
