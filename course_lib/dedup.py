"""Duplicates in training data: exact (after normalisation) and near (Jaccard similarity of word shingles),
found at scale with MinHash and locality-sensitive hashing (Broder, 1997; Leskovec et al., *Mining of Massive
Datasets*, ch. 3).

* shingles: the set of every ``n`` consecutive words of a normalised text;
* Jaccard similarity of two texts: |A ∩ B| / |A ∪ B| of their shingle *sets*;
* MinHash: for each of ``num_perm`` random hash functions h, the minimum of h over a text's shingles. Two texts
  agree on one MinHash with probability equal to their Jaccard similarity, so the share of agreeing entries of
  two signatures estimates it;
* LSH banding: cut each signature into ``bands`` bands of ``rows`` rows; texts that agree on a whole band become
  candidate pairs. A pair with similarity s is a candidate with probability 1 - (1 - s^rows)^bands, an S-curve
  around (1/bands)^(1/rows); candidates are then checked against the threshold with their exact Jaccard.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations

import numpy as np

_PRIME = (1 << 31) - 1  # a Mersenne prime: a * x + b stays below 2^63, so uint64 arithmetic is exact


def normalise(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed: texts equal after this are exact duplicates."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def shingles(text: str, n: int = 3) -> set[str]:
    """The set of ``n``-word shingles of the normalised text (a text shorter than ``n`` words is one shingle)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    words = normalise(text).split()
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def _shingle_ids(items: set[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % _PRIME
                     for s in sorted(items)], dtype=np.uint64)


class MinHasher:
    """``num_perm`` universal hash functions h(x) = (a x + b) mod p, p = 2^31 - 1, drawn with ``seed``."""

    def __init__(self, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, items: set[str]) -> np.ndarray:
        """(num_perm,) minimum of each hash function over the items (all p for an empty set)."""
        if not items:
            return np.full(self.num_perm, _PRIME, dtype=np.uint64)
        x = _shingle_ids(items)
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _PRIME).min(axis=1)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Share of MinHash entries on which two signatures agree."""
    return float(np.mean(sig_a == sig_b))


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.7, n: int = 3, num_perm: int = 128,
                         bands: int = 32, seed: int = 0) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with i < j whose shingle Jaccard is at least ``threshold``, found through MinHash
    LSH candidates (``bands`` x ``num_perm // bands`` rows) and confirmed with the exact Jaccard."""
    if num_perm % bands:
        raise ValueError(f"bands ({bands}) must divide num_perm ({num_perm})")
    rows = num_perm // bands
    sets = [shingles(t, n) for t in texts]
    hasher = MinHasher(num_perm, seed)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, items in enumerate(sets):
        signature = hasher.signature(items)
        for band in range(bands):
            buckets[(band, signature[band * rows:(band + 1) * rows].tobytes())].append(i)
    candidates = {pair for members in buckets.values() if len(members) > 1 for pair in combinations(members, 2)}
    found = [(i, j, jaccard(sets[i], sets[j])) for i, j in sorted(candidates)]
    return [(i, j, s) for i, j, s in found if s >= threshold]


def exact_pairs(texts: Sequence[str], threshold: float = 0.7, n: int = 3) -> list[tuple[int, int, float]]:
    """Every pair at or above ``threshold`` by brute force over all pairs: O(N^2), the reference LSH is checked
    against on a sample."""
    sets = [shingles(t, n) for t in texts]
    pairs = ((i, j, jaccard(sets[i], sets[j])) for i, j in combinations(range(len(texts)), 2))
    return [(i, j, s) for i, j, s in pairs if s >= threshold]


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.7, n: int = 3) -> list[int]:
    """Group of each text: the connected components of the near-duplicate graph (an edge for every pair of
    :func:`near_duplicate_pairs` at ``threshold``), found with union-find. A and C share a group when A ~ B and
    B ~ C even if A and C are not alike themselves, which is what a leak-free split needs: B cannot sit on both
    sides. Each group is named by its smallest index."""
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for i, j, _ in near_duplicate_pairs(texts, threshold, n):
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(len(texts))]
