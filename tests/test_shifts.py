"""course_lib.shifts: shifted inputs are deterministic, keep ids and labels, and change what they claim to."""
import difflib

import pytest

from course_lib import shifts
from course_lib.data import load_tickets

TEXT = "Hello, my order #48213 has not arrived after three days. Please help!"


def test_typos_are_deterministic_and_about_as_frequent_as_asked():
    assert shifts.typos(TEXT) == shifts.typos(TEXT) and shifts.typos(TEXT, seed=1) != shifts.typos(TEXT, seed=2)
    assert shifts.typos(TEXT, rate=0.0) == TEXT
    texts = [r["text"] for r in load_tickets("test")]
    letters = sum(c.isalpha() for t in texts for c in t)
    edits = sum(max(i2 - i1, j2 - j1) for t in texts
                for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, t, shifts.typos(t, 0.05)).get_opcodes()
                if op != "equal")
    assert sum(shifts.typos(t, 0.05) != t for t in texts) > 0.6 * len(texts)
    assert 0.03 * letters < edits < 0.09 * letters  # one typo in 20 letters; a swap edits two characters
    assert all(shifts.typos(t, 1.0) != t for t in texts[:20])
    for text in texts[:50]:  # digits, '#', '$' and spaces are never touched: order numbers survive
        shifted = shifts.typos(text, 0.3)
        assert [c for c in shifted if not c.isalpha()] == [c for c in text if not c.isalpha()]
    with pytest.raises(ValueError, match="rate"):
        shifts.typos(TEXT, 1.5)


def test_the_other_shifts_and_shift_rows():
    assert shifts.SHIFTS["UPPER CASE"](TEXT) == TEXT.upper()
    assert shifts.no_punctuation(TEXT) == "hello my order #48213 has not arrived after three days please help"
    rows = [{"id": "a", "text": TEXT, "label": "delivery"}]
    shifted = shifts.shift_rows(rows, str.upper)
    assert shifted == [{"id": "a", "text": TEXT.upper(), "label": "delivery"}] and rows[0]["text"] == TEXT
