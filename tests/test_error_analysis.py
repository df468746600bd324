"""course_lib.error_analysis: mistakes grouped by (true, predicted), and the words that set a group apart."""
import math

import pytest

from course_lib import error_analysis


def test_error_groups_are_the_mistakes_largest_first():
    texts = ["a", "b", "c", "d", "e", "f"]
    targets = ["x", "x", "y", "y", "y", "z"]
    predictions = ["x", "y", "x", "x", "z", "z"]
    assert error_analysis.error_groups(texts, targets, predictions) == [(("y", "x"), [2, 3]), (("x", "y"), [1]),
                                                                        (("y", "z"), [4])]
    assert error_analysis.error_groups(texts, targets, targets) == []
    with pytest.raises(ValueError, match="differ in length"):
        error_analysis.error_groups(texts, targets, predictions[:-1])


def test_distinctive_words_are_the_log_odds_of_group_against_background():
    group = ["refund my card please", "card refund now", "where is my refund"]
    background = group + ["my parcel is late", "the app crashes", "my parcel was lost", "love the app"]
    top = error_analysis.distinctive_words(group, background, top=3)
    assert [w for w, _ in top] == ["refund", "card", "my"][:len(top)] or top[0][0] == "refund"
    assert top[0][0] == "refund" and "card" in [w for w, _ in top]
    # the formula by hand for 'refund' (uniform prior 0.5 over the vocabulary)
    words = lambda texts: [w for t in texts for w in error_analysis.words(t)]
    g, b = words(group), words(background)
    a0 = 0.5 * len(set(g) | set(b))
    odds = lambda c, n: (c + 0.5) / (n + a0 - c - 0.5)
    assert top[0][1] == pytest.approx(math.log(odds(3, len(g))) - math.log(odds(3, len(b))))
    assert all(w != "where" for w, _ in top)  # seen once: below min_count
    assert error_analysis.words("Order #48213 isn't $12.99!") == ["order", "#48213", "isn't", "$12", "99"]
