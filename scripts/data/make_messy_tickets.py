"""Build topic 2's deliberately messy raw data set (course_lib/data/messy/raw.jsonl), deterministically.

Clearly synthetic: fresh tickets from the same templates as the course's ticket set (scripts/data/make_tickets.py),
none a near duplicate of a validation or test ticket (same key as there), exported the way real data arrives.
The damage, at these rates (each drawn independently per record, seeded):

* three shapes of record: ``{"text", "label"}`` (60%), ``{"ticket", "category"}`` (20%), and chats
  ``{"messages": [system, user, assistant]}`` (20%), a few of them with their turns out of order (2% of chats);
* HTML remnants and broken whitespace (8%): tags, entities, tabs, doubled spaces;
* personal data (10%): an e-mail address, a phone number, a card-like number or a name in a sign-off;
* wrong labels (10%): another category than the ticket's;
* empty (2%) or truncated (2%) labels;
* exact duplicates (8%) and near duplicates (7%: another greeting, case, punctuation) of earlier records;
* 12 lines that are not JSON at all (a cut-off export, log lines).

``truth.jsonl`` (same folder) records, per line of raw.jsonl, what was done to it: the answer key a cleaning
pipeline is measured against.

    python scripts/data/make_messy_tickets.py [FOLDER]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from course_lib.classify import SYSTEM_PROMPT
from course_lib.data import TICKET_LABELS, load_tickets, near_duplicate_key, shipped_path
from course_lib.data.ticket_generator import OPENERS, make_ticket

SEED, RECORDS = 7, 3000
OUT = shipped_path("messy")
RATES = {"html": 0.08, "pii": 0.10, "wrong_label": 0.10, "empty_label": 0.02, "truncated_label": 0.02,
         "duplicate": 0.08, "near_duplicate": 0.07, "turn_order": 0.02}
NOT_JSON = ['{"text": "My order #55102 still has not arr', "ERROR export batch 7 failed: timeout", "<html><body>502 Bad Gateway",
            '{"ticket": "The app crashes", "category": technical}', "text,label", "---", "null null",
            '{"text": "Please help"', "Traceback (most recent call last):", "}", "{{}}", "EOF"]
NAMES = ["Sam Lee", "Maria Garcia", "Tom", "Aisha Khan", "Jonas", "Priya Patel"]


def _pii(rng: random.Random) -> str:
    kind = rng.choice(["email", "phone", "card", "name"])
    if kind == "email":
        user, host = rng.choice(['sam.lee', 'maria_g', 'tk1984', 'a.khan']), rng.choice(['mail.com', 'example.org', 'post.co.uk'])
        return f" You can reach me at {user}@{host}."
    if kind == "phone":
        return f" Call me on {rng.choice(['+44 20 7946 0958', '(555) 123-4567', '+1 415 555 0132', '030 1234567'])}."
    if kind == "card":
        return f" My card is {rng.choice(['4111 1111 1111 1111', '5500-0000-0000-0004', '340000000000009'])}."
    return f" Regards, {rng.choice(NAMES)}"


def _html(text: str, rng: random.Random) -> str:
    text = text.replace(" and ", " &amp; ").replace(", ", ",  ")
    return rng.choice(["<p>{}</p>", "<div>{}<br/></div>", "\t{}  ", "<b></b>{}\n\n"]).format(text)


def _record(text: str, label: str, rng: random.Random, truth: dict) -> dict:
    shape = rng.random()
    if shape < 0.6:
        return {"text": text, "label": label}
    if shape < 0.8:
        return {"ticket": text, "category": label}
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text},
                {"role": "assistant", "content": label}]
    if rng.random() < RATES["turn_order"]:
        messages[1], messages[2] = messages[2], messages[1]
        truth["damage"].append("turn_order")
    return {"messages": messages}


def build(seed: int = SEED, records: int = RECORDS) -> tuple[list[str], list[dict]]:
    """The raw lines and, per line, the truth about it."""
    rng = random.Random(seed)
    held_out = {near_duplicate_key(r["text"]) for split in ("validation", "test") for r in load_tickets(split)}
    lines, truths, made = [], [], []
    while len(lines) < records - len(NOT_JSON):
        roll = rng.random()
        if made and roll < RATES["duplicate"]:
            source = rng.randrange(len(made))
            lines.append(lines[made[source]])
            truths.append({"label": truths[made[source]]["label"], "damage": ["duplicate"]})
            continue
        label = rng.choice(TICKET_LABELS)
        text = make_ticket(label, rng)
        if near_duplicate_key(text) in held_out:
            continue
        truth = {"label": label, "damage": []}
        if made and roll < RATES["duplicate"] + RATES["near_duplicate"]:
            source = truths[made[rng.randrange(len(made))]]
            text, label = source["text"], source["label"]
            opener = rng.choice([o for o in OPENERS if o])
            text = (opener + text[0].lower() + text[1:]) if rng.random() < 0.5 else text.upper().rstrip(".") + "!!"
            truth.update(label=label, damage=["near_duplicate"])
        truth["text"] = text
        if rng.random() < RATES["pii"]:
            text += _pii(rng)
            truth["damage"].append("pii")
        if rng.random() < RATES["html"]:
            text = _html(text, rng)
            truth["damage"].append("html")
        written = label
        roll = rng.random()
        if roll < RATES["wrong_label"]:
            written = rng.choice([x for x in TICKET_LABELS if x != label])
            truth["damage"].append("wrong_label")
        elif roll < RATES["wrong_label"] + RATES["empty_label"]:
            written = ""
            truth["damage"].append("empty_label")
        elif roll < RATES["wrong_label"] + RATES["empty_label"] + RATES["truncated_label"]:
            written = label[:rng.randint(2, len(label) - 2)]
            truth["damage"].append("truncated_label")
        lines.append(json.dumps(_record(text, written, rng, truth), ensure_ascii=False))
        truths.append(truth)
        made.append(len(lines) - 1)
    for bad in NOT_JSON:
        at = rng.randrange(len(lines) + 1)
        lines.insert(at, bad)
        truths.insert(at, {"damage": ["not_json"]})
    for number, truth in enumerate(truths, start=1):
        truth["line"] = number
    return lines, truths


def write(folder: Path = OUT) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines, truths = build()
    (folder / "raw.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "truth.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truths),
                                        encoding="utf-8")
    print(f"{len(lines)} raw lines -> {folder / 'raw.jsonl'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    write(parser.parse_args().out)
