"""course_lib.device: the device asked for wins, bf16 only where the hardware has it, and the cores torch uses."""
import os

import pytest
import torch

from course_lib import device


def test_use_cores_takes_every_core_unless_the_environment_says_otherwise(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert device.use_cores() == torch.get_num_threads() == (os.cpu_count() or 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert device.use_cores() == torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a count: ignored
        assert device.use_cores() == (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)


def test_default_device_prefers_what_is_asked():
    assert device.default_device("cpu") == torch.device("cpu")
    assert device.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_precision_auto_follows_the_hardware_and_bad_names_are_refused(monkeypatch):
    monkeypatch.delenv("COURSE_LIB_PRECISION", raising=False)
    monkeypatch.setattr(device, "bf16_native", lambda device="cpu": True)
    assert device.resolve_precision("cpu", "auto") == "bf16"
    monkeypatch.setenv("COURSE_LIB_PRECISION", "fp32")  # a learner rules bf16 out, or reproduces a laptop
    assert device.resolve_precision("cpu", "auto") == "fp32" and device.resolve_precision("cpu", "bf16") == "bf16"
    monkeypatch.setenv("COURSE_LIB_PRECISION", "fp16")
    with pytest.raises(ValueError, match="COURSE_LIB_PRECISION must be one of"):
        device.resolve_precision("cpu", "auto")
    monkeypatch.delenv("COURSE_LIB_PRECISION")
    monkeypatch.setattr(device, "bf16_native", lambda device="cpu": False)
    assert device.resolve_precision("cpu", "auto") == "fp32"
    assert device.resolve_precision("cpu", "bf16") == "bf16"  # asked for: emulated where not native
    with pytest.raises(ValueError, match="precision must be one of"):
        device.resolve_precision("cpu", "fp16")
    assert not device.bf16_native("meta")
    assert device.bf16_native("cuda") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_mixed_precision_casts_the_matmuls_and_keeps_the_weights_and_losses_fp32(precision, dtype):
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with device.mixed_precision("cpu", precision):
        y = layer(x)
        loss = torch.nn.functional.cross_entropy(y, torch.tensor([0, 1, 2]))
    assert y.dtype == dtype and loss.dtype == torch.float32 and layer.weight.dtype == torch.float32
    assert torch.allclose(y.float(), layer(x), atol=0.05, rtol=0.02)
