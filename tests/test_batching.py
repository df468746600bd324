"""course_lib.batching: the seeded training order and the length-sorted evaluation batches."""
from course_lib import batching


def test_batch_indices_visit_every_example_once_per_epoch_in_a_seeded_order():
    batches = batching.batch_indices(10, steps=5, batch_size=4, seed=3)
    assert [len(b) for b in batches] == [4] * 5
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and flat[:10] != list(range(10))  # shuffled, each once
    assert flat[10:] == flat[:10]  # the second epoch repeats the order, across a batch boundary
    assert batching.batch_indices(10, 5, 4, seed=3) == batches != batching.batch_indices(10, 5, 4, seed=4)


def test_length_batches_cut_the_items_sorted_by_length_into_batches():
    lengths = [5, 2, 9, 2, 7, 1, 5]
    batches = batching.length_batches(lengths, 3)
    assert batches == [[5, 1, 3], [0, 6, 4], [2]]  # by length, ties in their order; the last batch is short
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batching.length_batches([], 4) == []
