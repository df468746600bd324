"""Where and how the course computes: the device (CUDA when present, else CPU), bf16 mixed precision where the
hardware multiplies bf16 natively, and how many CPU cores torch uses. Every loop and notebook asks here."""
from __future__ import annotations

import contextlib
import os

import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: the one asked for, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("fp32", "bf16", "auto")


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU with bf16 (Ampere and later; not
    a T4) or a CPU with AVX512-BF16 or AMX (recent Xeons and EPYCs; most laptops have neither)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def resolve_precision(device: str | torch.device, precision: str = "auto") -> str:
    """``"fp32"`` or ``"bf16"``: ``"auto"`` is ``$COURSE_LIB_PRECISION`` when that is set (``fp32`` reproduces a
    machine without bf16, or rules bf16 out), else bf16 where :func:`bf16_native`, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        chosen = os.environ.get("COURSE_LIB_PRECISION", "auto")
        if chosen not in PRECISIONS:
            raise ValueError(f"COURSE_LIB_PRECISION must be one of {PRECISIONS}, got {chosen!r}")
        if chosen != "auto":
            return chosen
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def mixed_precision(device: str | torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 mixed precision inside the block (``torch.autocast``: matmuls in bfloat16, softmax, norms and losses
    in fp32; the weights stay fp32), what ``bf16=True`` does in a transformers/TRL ``Trainer``; with fp32
    (:func:`resolve_precision`) the block computes as usual. autocast keeps its bf16 copies of the weights until
    the block ends: enter it once per training step, never around a whole training loop, or the forward passes
    never see the optimizer's updates (:func:`course_lib.training.train` does it per micro-batch)."""
    device = torch.device(device)
    if resolve_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def use_cores() -> int:
    """Give torch every core (some platforms start it on fewer), or ``$OMP_NUM_THREADS`` when that is set (the
    grader sets it so that kernels graded side by side share the cores); returns the thread count."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    count = int(threads) if threads.isdigit() and int(threads) > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(count)
    return count
