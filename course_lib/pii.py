"""Personal data out of training text: e-mail addresses, phone numbers, card-like numbers, names in sign-offs.

Each kind is replaced by a placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[NAME]``) so the text keeps its
shape and a model cannot memorise the data. Card-like numbers are 13-19 digits, optionally grouped by spaces or
dashes, whether or not their Luhn checksum holds (a mistyped card number is still personal data). Phone numbers
are 7-15 digits with the usual separators, a leading ``+`` or parentheses; they are matched after cards so a
card is never half-redacted as a phone. Names are only caught where a sign-off puts them ("Regards, Sam"): a
rule that finds every name needs a named-entity model.
"""
from __future__ import annotations

import re
from collections import Counter

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,14}(?!\w)")
SIGN_OFF = re.compile(r"\b((?:Regards|Best regards|Kind regards|Thanks|Thank you|Cheers|Best|Sincerely|Yours)"
                      r"[,!.]?\s+)([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)\b")
PLACEHOLDERS = {"email": "[EMAIL]", "card": "[CARD]", "phone": "[PHONE]", "name": "[NAME]"}


def redact(text: str) -> tuple[str, Counter]:
    """``text`` with personal data replaced by placeholders, and how many of each kind were replaced."""
    counts: Counter = Counter()

    def sub(pattern: re.Pattern, kind: str, value: str) -> str:
        def replace(match: re.Match) -> str:
            counts[kind] += 1
            return PLACEHOLDERS[kind]
        return pattern.sub(replace, value)

    text = sub(EMAIL, "email", text)
    text = sub(CARD, "card", text)
    text = sub(PHONE, "phone", text)

    def name(match: re.Match) -> str:
        counts["name"] += 1
        return match.group(1) + PLACEHOLDERS["name"]

    return SIGN_OFF.sub(name, text), counts
