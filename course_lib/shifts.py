"""Distribution shift: the same inputs, written the way production traffic writes them.

A test split drawn from the training distribution says how a model does on data like its training data. In
production, inputs drift: typos, everything in capitals, no punctuation, phrasing no template had. Each shift
here maps a text to a shifted text deterministically (same text and seed, same result), so a clean and a
shifted evaluation compare the *same items*, and a paired test (McNemar) says whether the drop is real.
"""
from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Sequence

# Neighbouring keys on a QWERTY keyboard: what a slipped finger types instead.
_NEIGHBOURS = {
    "a": "qwsz", "b": "vghn", "c": "xdfv", "d": "serfcx", "e": "wsdr", "f": "drtgvc", "g": "ftyhbv", "h": "gyujnb",
    "i": "ujko", "j": "huikmn", "k": "jiolm", "l": "kop", "m": "njk", "n": "bhjm", "o": "iklp", "p": "ol",
    "q": "wa", "r": "edft", "s": "awedxz", "t": "rfgy", "u": "yhji", "v": "cfgb", "w": "qase", "x": "zsdc",
    "y": "tghu", "z": "asx",
}
TYPO_KINDS = ("drop", "double", "swap", "neighbour")


def typos(text: str, rate: float = 0.05, seed: int = 0) -> str:
    """``text`` with keyboard typos: each letter, with probability ``rate``, is dropped, doubled, swapped with
    the next character, or replaced by a neighbouring key (case kept). Deterministic in (text, seed)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be between 0 and 1, got {rate}")
    rng = random.Random(zlib.crc32(text.encode("utf-8")) ^ seed)
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if not c.isalpha() or c.lower() not in _NEIGHBOURS or rng.random() >= rate:
            out.append(c)
            i += 1
            continue
        kind = rng.choice(TYPO_KINDS)
        if kind == "double":
            out += [c, c]
        elif kind == "swap" and i + 1 < len(chars):
            out += [chars[i + 1], c]
            i += 1
        elif kind == "neighbour":
            key = rng.choice(_NEIGHBOURS[c.lower()])
            out.append(key.upper() if c.isupper() else key)
        elif kind == "swap":  # the last character has nothing to swap with: keep it
            out.append(c)
        i += 1  # "drop" appends nothing
    return "".join(out)


def no_punctuation(text: str) -> str:
    """Lower case, punctuation removed, spaces collapsed: how many people type into a chat box."""
    return " ".join(re.sub(r"[^\w\s#$]", " ", text.lower()).split())


SHIFTS: dict[str, Callable[[str], str]] = {
    "typos (5% of letters)": typos,
    "UPPER CASE": str.upper,
    "lower case, no punctuation": no_punctuation,
}


def shift_rows(rows: Sequence[dict], shift: Callable[[str], str]) -> list[dict]:
    """Copies of ticket ``rows`` whose ``text`` went through ``shift``; ids and labels unchanged."""
    return [{**row, "text": shift(row["text"])} for row in rows]
