"""Train/validation/test splits that keep each label's share, and a check that no test item leaks into training.

A split leaks when an item of the evaluation split has an exact or near duplicate in the training split: the
model is then graded on what it saw, and the test score overstates what it does on new data. Duplicates are
best removed *before* splitting (as ``scripts/make_tickets.py`` does); :func:`leaks` finds the ones that got
through.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from .dedup import near_duplicate_pairs, normalise


def stratified_split(rows: Sequence[dict], fractions: dict[str, float], label: str = "label",
                     seed: int = 0) -> dict[str, list[dict]]:
    """Split ``rows`` into named parts of the given ``fractions`` (summing to 1) so that every label keeps its
    share in every part: each label's rows are shuffled (seeded) and cut by the fractions, rounding so that the
    counts add up; the parts keep the rows' original order."""
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    by_label: dict[object, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if label not in row:
            raise ValueError(f"row {index} has no field {label!r}")
        by_label[row[label]].append(index)
    rng = random.Random(seed)
    parts: dict[str, list[int]] = {name: [] for name in fractions}
    for key in sorted(by_label, key=str):
        indices = by_label[key][:]
        rng.shuffle(indices)
        start, cumulative = 0, 0.0
        for name, fraction in fractions.items():
            cumulative += fraction
            stop = round(cumulative * len(indices))
            parts[name] += indices[start:stop]
            start = stop
    return {name: [rows[i] for i in sorted(indices)] for name, indices in parts.items()}


def leaks(train: Sequence[str], evaluation: Sequence[str], threshold: float = 0.7,
          n: int = 3) -> list[tuple[int, int, float]]:
    """(eval index, train index, jaccard) for every evaluation text whose normalised form equals a training
    text's (jaccard 1.0) or whose shingle Jaccard with it is at least ``threshold``; the closest training text
    for each leaking item."""
    exact = {}
    for j, text in enumerate(train):
        exact.setdefault(normalise(text), j)
    found: dict[int, tuple[int, float]] = {}
    for i, text in enumerate(evaluation):
        j = exact.get(normalise(text))
        if j is not None:
            found[i] = (j, 1.0)
    offset = len(train)
    for a, b, similarity in near_duplicate_pairs(list(train) + list(evaluation), threshold, n):
        if a < offset <= b:  # one from each side (pairs come ordered, so a train item is always first)
            i, j = b - offset, a
            if i not in found or similarity > found[i][1]:
                found[i] = (j, similarity)
    return sorted((i, j, s) for i, (j, s) in found.items())
