"""Error analysis: look at the mistakes, grouped, before changing anything.

A metric says how often a model is wrong; the errors say why. Group the misclassified items by (true label,
predicted label), largest group first, and find the words that set a group apart from all the items: a
smoothed log-odds ratio of each word's frequency in the group against its frequency in the background
(Monroe, Colaresi & Quinn, 2008, "Fightin' Words", with a uniform prior).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence


def error_groups(texts: Sequence[str], targets: Sequence, predictions: Sequence) -> list[tuple[tuple, list[int]]]:
    """The misclassified items grouped by (true, predicted) label: ``[((true, predicted), [indices]), ...]``,
    largest group first (ties in label order)."""
    if not len(texts) == len(targets) == len(predictions):
        raise ValueError(f"texts, targets and predictions differ in length: "
                         f"{len(texts)}, {len(targets)}, {len(predictions)}")
    groups: dict[tuple, list[int]] = {}
    for i, (t, p) in enumerate(zip(targets, predictions)):
        if t != p:
            groups.setdefault((t, p), []).append(i)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), str(item[0])))


def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, apostrophes, '#' and '$' kept inside)."""
    return re.findall(r"[a-z0-9#$']+", text.lower())


def distinctive_words(texts: Sequence[str], background: Sequence[str], top: int = 8, min_count: int = 2,
                      prior: float = 0.5) -> list[tuple[str, float]]:
    """The ``top`` words most over-represented in ``texts`` relative to ``background`` (which may include them),
    by the log-odds ratio with a uniform Dirichlet ``prior`` per word: [(word, log-odds ratio), ...], largest first.
    Words seen fewer than ``min_count`` times in ``texts`` are skipped (one odd word says nothing)."""
    group = Counter(w for t in texts for w in words(t))
    back = Counter(w for t in background for w in words(t))
    vocab = set(group) | set(back)
    n_group, n_back, a0 = sum(group.values()), sum(back.values()), prior * len(vocab)
    scores = []
    for word, count in group.items():
        if count < min_count:
            continue
        g = (count + prior) / (n_group + a0 - count - prior)
        b = (back[word] + prior) / (n_back + a0 - back[word] - prior)
        scores.append((word, math.log(g) - math.log(b)))
    return sorted(scores, key=lambda s: (-s[1], s[0]))[:top]
