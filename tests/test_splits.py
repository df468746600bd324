"""course_lib.splits: stratified splits keep every label's share; leaks are found, exact and near."""
from collections import Counter

import pytest
from hypothesis import given, strategies as st

from course_lib.splits import leaks, stratified_split


@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=200), st.integers(0, 5))
def test_every_row_lands_in_exactly_one_part_and_labels_keep_their_share(labels, seed):
    rows = [{"id": i, "label": label} for i, label in enumerate(labels)]
    parts = stratified_split(rows, {"train": 0.7, "validation": 0.15, "test": 0.15}, seed=seed)
    ids = sorted(r["id"] for part in parts.values() for r in part)
    assert ids == list(range(len(rows)))
    for label, total in Counter(labels).items():
        for name, fraction in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
            assert abs(sum(r["label"] == label for r in parts[name]) - fraction * total) <= 1
    assert all([r["id"] for r in part] == sorted(r["id"] for r in part) for part in parts.values())


def test_a_rare_label_is_not_left_out_of_test():
    rows = [{"label": "common"}] * 95 + [{"label": "rare"}] * 5
    parts = stratified_split(rows, {"train": 0.8, "test": 0.2})
    assert Counter(r["label"] for r in parts["test"]) == {"common": 19, "rare": 1}
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(rows, {"train": 0.8, "test": 0.3})
    with pytest.raises(ValueError, match="no field 'label'"):
        stratified_split([{"text": "x"}], {"all": 1.0})


def test_leaks_are_found_exact_and_near_but_not_merely_similar():
    train = ["My order 123 still has not arrived after three days.", "The app crashes on my phone.",
             "Please delete my account and all my personal data."]
    test = ["my order 123 still has not arrived after three days",          # exact after normalisation
            "Please delete my account and all my personal data now.",       # near
            "The website crashes on my laptop.",                            # similar topic, not a duplicate
            "I love the new design."]
    found = leaks(train, test, threshold=0.7)
    assert [(i, j) for i, j, _ in found] == [(0, 0), (1, 2)]
    assert found[0][2] == 1.0 and 0.7 <= found[1][2] < 1.0


def test_label_counts_match_the_libraries_stratified_splits():
    # Hugging Face datasets and scikit-learn split differently, but per label they must agree with ours to one item.
    from datasets import Dataset
    from sklearn.model_selection import train_test_split

    from course_lib.data import load_tickets

    rows = [r for r in load_tickets("train") if r["label"] != "feedback"][:500] + \
        [r for r in load_tickets("train") if r["label"] == "feedback"][:37]  # one rare label
    ours = Counter(r["label"] for r in stratified_split(rows, {"train": 0.8, "test": 0.2}, seed=0)["test"])
    hf = Dataset.from_list(rows).class_encode_column("label").train_test_split(test_size=0.2, stratify_by_column="label",
                                                                             seed=0)["test"]
    names = hf.features["label"].names
    theirs_hf = Counter(names[i] for i in hf["label"])
    _, test = train_test_split(rows, test_size=0.2, stratify=[r["label"] for r in rows], random_state=0)
    theirs_sk = Counter(r["label"] for r in test)
    for label in ours | theirs_hf | theirs_sk:
        assert abs(ours[label] - theirs_hf[label]) <= 1 and abs(ours[label] - theirs_sk[label]) <= 1, label
