"""course_lib.doctor: a healthy set-up reports no failure; drift, missing packages and bad ranges say what to run."""
import subprocess
import sys

import pytest

from course_lib import device, doctor


def test_this_environment_is_healthy_and_the_command_says_so():
    checks = doctor.run_checks()
    assert not [c for c in checks if c.status == "fail"], [c.line() for c in checks]
    libraries = {c.name: c for c in checks if c.name in doctor.LIBRARIES}
    assert set(libraries) == set(doctor.LIBRARIES)
    assert all(c.status == "ok" for c in libraries.values()), "make setup installs exactly the pinned versions"
    run = subprocess.run([sys.executable, "-m", "course_lib", "doctor"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "[  ok] torch" in run.stdout and "course_lib doctor:" in run.stdout
    bf16 = next(c for c in checks if c.name == "CPU bf16")
    assert bf16.found.startswith("yes" if device.bf16_native("cpu") else "no")


@pytest.mark.parametrize("native, forced, status, says", [
    (True, None, "ok", "train in bf16 mixed precision"), (False, None, "ok", "train in fp32"),
    (True, "fp32", "ok", "train in fp32 (COURSE_LIB_PRECISION=fp32)"), (False, "bf16", "warn", "emulated"),
    (True, "half", "fail", "COURSE_LIB_PRECISION must be one of")])
def test_cpu_bf16_line_says_what_topics_3_and_5_will_compute_in(monkeypatch, native, forced, status, says):
    monkeypatch.setattr(device, "bf16_native", lambda device="cpu": native)
    if forced:
        monkeypatch.setenv("COURSE_LIB_PRECISION", forced)
    else:
        monkeypatch.delenv("COURSE_LIB_PRECISION", raising=False)
    check = doctor.check_cpu_bf16()
    assert check.status == status and says in check.found, check
    assert check.found.startswith("yes" if native else "no")


def test_pins_are_read_from_a_constraints_file(tmp_path):
    path = tmp_path / "constraints.txt"
    path.write_text("# exact versions\nPEFT==0.21.2  # LoRA\ntorch_x==1.0\nnot a pin\n")
    assert doctor.pinned_versions(path) == {"peft": "0.21.2", "torch-x": "1.0"}
    assert doctor.pinned_versions(tmp_path / "missing.txt") == {}


def test_drift_missing_and_out_of_range_versions_say_what_to_run(monkeypatch):
    installed = doctor.metadata.version("peft").split("+")[0]
    drift = doctor.check_library("peft", {"peft": "0.0.1"}, {})
    assert drift.status == "warn" and drift.fix == "pip install peft==0.0.1" and "pinned to 0.0.1" in drift.found
    assert doctor.check_library("peft", {"peft": installed}, {"peft": ">=0.17,<0.22"}).status == "ok"
    missing = doctor.check_library("no-such-package-xyz", {}, {"no-such-package-xyz": ">=1"})
    assert missing.status == "fail" and missing.fix == "pip install 'no-such-package-xyz>=1'"
    monkeypatch.setattr(doctor.metadata, "version", lambda name: "0.30.0")
    outside = doctor.check_library("peft", {}, {"peft": ">=0.17,<0.22"})
    assert outside.status == "fail" and "outside the tested range" in outside.found
    assert outside.fix == "pip install 'peft>=0.17,<0.22'"


def test_summary_names_what_needs_attention():
    checks = [doctor.Check("torch", "ok", "2.13.0"), doctor.Check("bubblewrap", "warn", "missing", "apt"),
              doctor.Check("MiniLM", "fail", "missing", "pip")]
    text = doctor.summary(checks)
    assert text.startswith("course_lib doctor: 1 fail, 1 warn (bubblewrap, MiniLM)")
    assert doctor.summary(checks[:1]) == "course_lib doctor: all 1 checks ok"
