"""course_lib.dedup: shingles and Jaccard on sets, MinHash estimates Jaccard, LSH finds what brute force finds."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from course_lib.data import load_tickets
from course_lib.dedup import (MinHasher, estimated_jaccard, exact_pairs, jaccard, near_duplicate_groups,
                              near_duplicate_pairs, normalise, shingles)


def test_shingles_are_sets_of_word_ngrams_of_the_normalised_text():
    assert normalise("  Hello,   WORLD!! ") == "hello world"
    assert shingles("a b c d", 2) == {"a b", "b c", "c d"}
    assert shingles("A b a b a b", 2) == {"a b", "b a"}  # repeats count once: sets, not multisets
    assert shingles("one two", 3) == {"one two"} and shingles("", 3) == set()
    with pytest.raises(ValueError):
        shingles("x", 0)


def test_jaccard():
    assert jaccard({"a", "b"}, {"b", "c"}) == 1 / 3
    assert jaccard(set(), set()) == 1.0 and jaccard({"a"}, set()) == 0.0
    assert jaccard(shingles("a b a b a b c", 2), shingles("a b c", 2)) == 2 / 3


@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(0, 60), min_size=1, max_size=40), st.sets(st.integers(0, 60), min_size=1, max_size=40))
def test_minhash_agreement_estimates_jaccard(a, b):
    a, b = {str(x) for x in a}, {str(x) for x in b}
    hasher = MinHasher(num_perm=512, seed=1)
    estimate = estimated_jaccard(hasher.signature(a), hasher.signature(b))
    assert abs(estimate - jaccard(a, b)) < 0.12  # 512 permutations: standard error <= 0.022
    assert np.array_equal(hasher.signature(a), MinHasher(num_perm=512, seed=1).signature(a))


def test_lsh_finds_the_same_pairs_as_brute_force_on_real_tickets():
    texts = [r["text"] for r in load_tickets("train")[:400]]
    exact = {(i, j) for i, j, _ in exact_pairs(texts, 0.7)}
    found = {(i, j) for i, j, _ in near_duplicate_pairs(texts, 0.7)}
    assert exact and found == exact
    with pytest.raises(ValueError, match="must divide"):
        near_duplicate_pairs(texts, bands=7)


def test_groups_join_chains_of_near_duplicates_even_when_the_ends_differ():
    a = "please refund my order from last week because it never came to me"
    b = "please refund my order from last week because it never came to us"
    c = "kindly refund my order from last week because it never came to us"  # ~ b, but not ~ a
    other = "the app crashes when I open settings on my phone"
    assert jaccard(shingles(a), shingles(c)) < 0.7 <= min(jaccard(shingles(a), shingles(b)),
                                                          jaccard(shingles(b), shingles(c)))
    assert near_duplicate_groups([other, c, a, b, a.upper()]) == [0, 1, 1, 1, 1]


def test_groups_are_the_connected_components_of_the_near_duplicate_graph():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    texts = [r["text"] for r in load_tickets("train")[:400]]
    pairs = near_duplicate_pairs(texts, 0.7)
    graph = coo_matrix(([1] * len(pairs), ([i for i, _, _ in pairs], [j for _, j, _ in pairs])), shape=(400, 400))
    _, theirs = connected_components(graph, directed=False)
    ours = near_duplicate_groups(texts, 0.7)
    assert len(set(ours)) < 400  # the sample has near duplicates
    assert all((ours[i] == ours[j]) == (theirs[i] == theirs[j]) for i in range(400) for j in range(i))
    assert all(ours[i] == min(k for k in range(400) if ours[k] == ours[i]) for i in range(400))
