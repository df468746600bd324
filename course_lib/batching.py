"""Batches of token ids: padding, the training order (one seeded shuffle read cyclically), length-sorted
evaluation batches, and collating (input_ids, labels) examples, with -100 (``IGNORE_INDEX``, what PyTorch's
cross-entropy skips) on every label that is not trained."""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch

IGNORE_INDEX = -100


def pad(sequences: list[list[int]], value: int, left: bool) -> torch.Tensor:
    """A (len(sequences), longest) tensor of the sequences padded with ``value`` on the left or the right."""
    width = max(len(s) for s in sequences)
    return torch.tensor([([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s)))
                         for s in sequences])


def batch_indices(count: int, steps: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Indices of each step's batch: one seeded shuffle of ``range(count)``, read cyclically (an epoch boundary
    falls inside a batch when ``count`` is not a multiple of ``batch_size``)."""
    order = random.Random(seed).sample(range(count), count)
    return [[order[(step * batch_size + i) % count] for i in range(batch_size)] for step in range(steps)]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of batches of ``batch_size`` items cut from the items sorted by length (ties keep their order), so
    that each batch pads little: for evaluation, where a result does not depend on which items share a batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) into a batch; padding gets label -100 and mask 0."""
    ids, labels = zip(*examples)
    input_ids = pad(list(ids), pad_id, left=False)
    return {"input_ids": input_ids, "labels": pad(list(labels), IGNORE_INDEX, left=False),
            "attention_mask": pad([[1] * len(s) for s in ids], 0, left=False)}
