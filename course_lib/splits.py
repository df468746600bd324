"""Train/validation/test splits that keep each label's share, and a check that no test item leaks into training.

A split leaks when an item of the evaluation split has an exact or near duplicate in the training split: the
model is then graded on what it saw, and the test score overstates what it does on new data. Removing exact
duplicates before a random split is not enough: templated or paraphrased data holds near copies that survive any
exact-key de-duplication (the course's first ticket split did, see topic 2). :func:`group_split` keeps every
group of near duplicates on one side, so :func:`leaks` finds nothing across its parts.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from .dedup import near_duplicate_groups, near_duplicate_pairs, normalise


def stratified_split(rows: Sequence[dict], fractions: dict[str, float], label: str = "label",
                     seed: int = 0) -> dict[str, list[dict]]:
    """Split ``rows`` into named parts of the given ``fractions`` (summing to 1) so that every label keeps its
    share in every part: each label's rows are shuffled (seeded) and cut by the fractions, rounding so that the
    counts add up; the parts keep the rows' original order."""
    _check_fractions(fractions)
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
        start = 0
        for name, count in _counts(fractions, len(indices)).items():
            parts[name] += indices[start:start + count]
            start += count
    return {name: [rows[i] for i in sorted(indices)] for name, indices in parts.items()}


def _check_fractions(fractions: dict[str, float]) -> None:
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")


def _counts(fractions: dict[str, float], total: int) -> dict[str, int]:
    """How many of ``total`` items each part gets: the cumulative shares rounded, so that the counts add up."""
    counts, cumulative, start = {}, 0.0, 0
    for name, fraction in fractions.items():
        cumulative += fraction
        stop = round(cumulative * total)
        counts[name], start = stop - start, stop
    return counts


def group_split(rows: Sequence[dict], fractions: dict[str, float], text: str = "text", label: str = "label",
                threshold: float = 0.7, n: int = 3, seed: int = 0) -> dict[str, list[dict]]:
    """Split ``rows`` like :func:`stratified_split`, but never across a group of near duplicates
    (:func:`~course_lib.dedup.near_duplicate_groups` of the ``text`` fields at ``threshold``), so that
    :func:`leaks` at that threshold finds nothing between any two parts. A group counts for its most common
    label. Per label, groups of two or more go first, in a seeded random order, each to a part drawn with
    probability proportional to what the part still lacks of its share among the parts it fits in (so a large
    group lands in test as often as a small one would); single rows then fill every part to its exact count
    where the groups allow. The idea of scikit-learn's ``StratifiedGroupKFold``, for named fractions."""
    _check_fractions(fractions)
    for index, row in enumerate(rows):
        for field in (text, label):
            if field not in row:
                raise ValueError(f"row {index} has no field {field!r}")
    groups: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(near_duplicate_groups([row[text] for row in rows], threshold, n)):
        groups[group].append(index)
    by_label: dict[object, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        counts = Counter(rows[i][label] for i in members)
        by_label[min(counts, key=lambda key: (-counts[key], str(key)))].append(members)
    rng = random.Random(seed)
    parts: dict[str, list[int]] = {name: [] for name in fractions}
    names = list(fractions)
    for key in sorted(by_label, key=str):
        label_groups = by_label[key]
        targets = _counts(fractions, sum(len(members) for members in label_groups))  # stratified_split's counts
        taken = dict.fromkeys(names, 0)
        rng.shuffle(label_groups)
        label_groups.sort(key=lambda members: len(members) == 1)  # stable: multi-row groups first, shuffled
        for members in label_groups:
            lacking = {name: targets[name] - taken[name] for name in names}
            fitting = [name for name in names if lacking[name] >= len(members)]
            if fitting:
                name = rng.choices(fitting, weights=[lacking[name] for name in fitting])[0]
            else:
                name = max(names, key=lambda name: lacking[name])
            parts[name] += members
            taken[name] += len(members)
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
