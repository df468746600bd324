"""Comparisons for tests and graded notebook cells, with failure messages that say what differs.

A failed check raises :class:`GradingError` (an ``AssertionError``) naming the quantity, then the
shape, dtype, the first differing index, and the max absolute and relative errors: never a bare
AssertionError. Only real tensors and numbers are accepted, so an object that claims equality with
everything (``__eq__`` always True) fails instead of passing.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

_TENSOR_TYPES = (torch.Tensor, nn.Parameter)


class GradingError(AssertionError):
    """A check failed; the message is meant for the learner. ``summary`` is the part that may be shown for a
    hidden test: the author's message of :func:`check`; None for comparisons, whose message shows values."""

    def __init__(self, message: str, summary: str | None = None):
        super().__init__(message)
        self.summary = summary


def _require_tensor(value: object, what: str) -> torch.Tensor:
    if type(value) not in _TENSOR_TYPES:
        raise GradingError(f"{what} should be a torch.Tensor, got {type(value).__module__}.{type(value).__name__}")
    return value


def assert_tensors_close(actual: object, expected: torch.Tensor, *, atol: float = 1e-6, rtol: float = 1e-5,
                         name: str = "result", check_dtype: bool = True) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise (``torch.isclose``'s rule),
    with the same shape (and dtype, unless ``check_dtype=False``). NaNs in the same places count as equal."""
    actual = _require_tensor(actual, name)
    expected = _require_tensor(expected, f"expected {name}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise GradingError(f"{name} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise GradingError(f"{name} has dtype {actual.dtype}, expected {expected.dtype}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    close = torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return
    bad = (~close).nonzero()
    first = tuple(int(i) for i in bad[0])
    diff = (a - e).abs().nan_to_num(nan=math.inf)
    rel = diff / e.abs().clamp_min(1e-12)
    where = f" at index {first}" if first else ""
    raise GradingError(
        f"{name} differs from the expected values in {len(bad)} of {e.numel()} elements "
        f"(first{where}: got {a[first].item():.6g}, expected {e[first].item():.6g}); "
        f"max abs error {diff.max().item():.3g}, max rel error {rel.max().item():.3g} "
        f"(tolerance atol={atol:g}, rtol={rtol:g})")


def assert_number_close(actual: object, expected: float, *, atol: float = 1e-8, rtol: float = 1e-6,
                        name: str = "result", hint: str | None = None) -> None:
    """Assert a real number (int, float, or a 0-d tensor) is within atol + rtol * |expected|. ``hint`` (written
    for the learner, naming the likely mistake but not the input) is added to the message and is what a hidden
    test may show, like :func:`check`'s message."""
    if type(actual) in _TENSOR_TYPES and actual.numel() == 1:
        actual = actual.item()
    if isinstance(actual, bool) or not isinstance(actual, numbers.Real):
        raise GradingError(f"{name} should be a number, got {type(actual).__module__}.{type(actual).__name__}"
                           + (f". {hint}" if hint else ""), summary=hint)
    actual = float(actual)
    if math.isnan(actual) or abs(actual - expected) > atol + rtol * abs(expected):
        raise GradingError(f"{name} is {actual:.6g}, expected {expected:.6g} "
                           f"(abs error {abs(actual - expected):.3g}; tolerance atol={atol:g}, rtol={rtol:g})"
                           + (f". {hint}" if hint else ""), summary=hint)


def check(condition: bool, message: str) -> None:
    """Raise :class:`GradingError` with ``message`` (written for the learner) unless ``condition`` is True
    (a Python bool, a numpy bool, or a one-element bool tensor; anything else fails)."""
    if type(condition) in _TENSOR_TYPES and condition.dtype == torch.bool and condition.numel() == 1:
        condition = bool(condition)
    elif type(condition).__module__ == "numpy" and type(condition).__name__ in ("bool_", "bool"):
        condition = bool(condition)
    if condition is not True:
        raise GradingError(message, summary=message)


class Scale(nn.Module):
    """Multiplies its input by a constant, or its last dimension by fixed per-feature factors: a deterministic
    stand-in for dropout in tests (what a function does with its ``dropout`` argument becomes visible in the
    output). A scalar commutes with every linear map, so only per-feature factors (like dropout's per-element
    mask) show *where* on a path the dropout is applied."""

    def __init__(self, factor: float | Sequence[float]):
        super().__init__()
        self.factor = float(factor) if isinstance(factor, numbers.Real) else [float(f) for f in factor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.factor, float):
            return self.factor * x
        return x * torch.tensor(self.factor, dtype=x.dtype, device=x.device)
