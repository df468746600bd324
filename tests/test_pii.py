"""course_lib.pii: no e-mail or card-like number survives redaction; ordinary numbers and text do."""
import re

from hypothesis import given, strategies as st

from course_lib.pii import redact


def test_each_kind_is_replaced_and_counted():
    text = ("Mail me at jo.doe+shop@mail.example.co.uk or call +44 20 7946 0958 / (555) 123-4567. "
            "Card 4111 1111 1111 1111 and 5500-0000-0000-0004 were charged. Order #48213 cost $24.50. Regards, Sam Lee")
    out, counts = redact(text)
    assert counts == {"email": 1, "phone": 2, "card": 2, "name": 1}
    assert "[EMAIL]" in out and "4111" not in out and "7946" not in out and "Sam" not in out
    assert "#48213" in out and "$24.50" in out and out.endswith("Regards, [NAME]")


def test_text_without_personal_data_is_unchanged():
    for text in ["My order #48213 still has not arrived after three days.", "It costs $310.40 since March 3rd.",
                 "Thanks for the quick replies, your team is always friendly.", "error code E42 on my iPhone 15"]:
        assert redact(text) == (text, {})


_digits = st.text(alphabet="0123456789", min_size=1, max_size=1)
_card = st.lists(_digits, min_size=13, max_size=19).flatmap(
    lambda ds: st.sampled_from([" ", "-", ""]).map(
        lambda sep: "".join(d + (sep if i % 4 == 3 else "") for i, d in enumerate(ds)).strip(" -")))
_email = st.from_regex(r"[a-z][a-z0-9._+]{0,10}@[a-z][a-z0-9-]{0,8}\.(com|org|co\.uk|de)", fullmatch=True)
_filler = st.text(alphabet="abcdefghij ,.!?", max_size=30)


@given(st.lists(st.tuples(_filler, st.one_of(_card, _email)), min_size=1, max_size=4), _filler)
def test_no_email_or_card_number_survives(parts, tail):
    text = "".join(f"{filler} {pii} " for filler, pii in parts) + tail
    out, _ = redact(text)
    assert "@" not in out
    assert not re.search(r"\d(?:[ -]?\d){12,18}", out), out
