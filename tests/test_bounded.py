"""grader.bounded: the grader's work on learner text runs in a bounded child; its own memory is bounded."""
import time

import pytest
import torch

from grader.bounded import Overrun, in_child, memory_bound


def _spin():
    while True:
        pass


def _allocate():
    return len(bytearray(2 * 2**30))


def _fail():
    raise KeyError("secret detail")


def test_a_child_answers_within_its_bounds():
    assert in_child(sorted, [3, 1, 2], seconds=10, memory_mb=256) == [1, 2, 3]


def test_a_child_past_its_time_is_killed():
    start = time.monotonic()
    with pytest.raises(Overrun, match="longer than 2 s"):
        in_child(_spin, seconds=2, memory_mb=256)
    assert time.monotonic() - start < 6


def test_a_child_past_its_memory_fails_and_errors_come_back_by_type_only():
    with pytest.raises(Overrun, match="more than 512 MB"):
        in_child(_allocate, seconds=20, memory_mb=512)
    with pytest.raises(Overrun, match="^KeyError$"):
        in_child(_fail, seconds=10, memory_mb=256)


def test_the_graders_memory_bound_refuses_a_huge_allocation_then_lifts():
    with memory_bound(512):
        with pytest.raises((RuntimeError, MemoryError)):
            torch.zeros(2**30)  # 4 GB
    assert torch.zeros(2**28).numel() == 2**28  # 1 GB: fine again outside the bound
