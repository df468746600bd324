"""Build the course's preference data set (course_lib/data/preferences/*.jsonl), deterministically.

The behaviour: Acme's support house style (``course_lib.align.house_style`` checks it). A reply
  1. opens with the greeting "Hi, thanks for contacting Acme!",
  2. answers the ticket (at least 8 words between greeting and sign-off) in at most 60 words in all,
  3. never asks for a password or a full card number,
  4. ends with the sign-off "- Acme Support".

How it is made, honestly: synthetic, like the tickets. Each pair's prompt is a real ticket of the course's
ticket data set (train pairs from the train split, held-out pairs from the test split, so no prompt and no
near-duplicate of one is shared). The *chosen* reply is a hand-written answer template for the ticket's
category wrapped in the house style. The *rejected* reply carries the same answer (so only the style differs) but breaks the
style in one of four ways, recorded in ``rejected_kind``: ``plain`` (no greeting or sign-off), ``verbose``
(a generic chatbot preamble and padding, over 60 words), ``credentials`` (asks for the password or card
number) or ``curt`` (blames the customer, no greeting). Nothing comes from real customers or a model.

    python scripts/data/make_preferences.py [FOLDER]   # rewrites the two files; same seed, same files
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from course_lib.align import GREETING, SIGN_OFF
from course_lib.data import load_tickets, shipped_path, write_jsonl

SEED = 2026
SIZES = {"train": ("train", 400), "test": ("test", 100)}
OUT = shipped_path("preferences")

ANSWERS = {
    "account": [
        "You can update your email or password under Settings > Account, and the change applies at once.",
        "I have sent a secure reset link to the address on file; it works for the next 24 hours.",
        "Account deletion is done under Settings > Privacy and removes your data within 30 days.",
        "I have unlocked your account; please sign in again and turn on two-step verification.",
    ],
    "delivery": [
        "Your parcel is with the carrier; the tracking link in your order email shows the latest scan.",
        "I have opened a trace with the carrier and will send you an update within two working days.",
        "If the parcel does not arrive by Friday, we will ship a replacement at no cost.",
        "I have changed the delivery address on your order; the carrier gets it before dispatch.",
    ],
    "feedback": [
        "Thank you for the kind words; I have passed them on to the product team.",
        "I am sorry the product let you down; I have logged your notes for our quality team.",
        "Your suggestion is now on our feature board, where the team reviews it every month.",
        "Thanks for telling us; feedback like yours shapes what we fix first.",
    ],
    "payment": [
        "I see the duplicate charge; it is reversed now and shows on your statement in 3-5 working days.",
        "Your invoice is attached to the order page under Orders > Invoices as a PDF.",
        "The refund was issued today to your original payment method.",
        "You can change your card under Settings > Billing; the next charge uses the new card.",
    ],
    "technical": [
        "Please update the app to the latest version and restart it; that fixes this error for most users.",
        "Clearing the browser cache and signing in again usually clears this; if not, reply with a screenshot.",
        "Our engineers fixed an outage this morning; the service works normally again.",
        "Please reinstall the app; your data is kept in your account and comes back after sign-in.",
    ],
}
PREAMBLE = ("As an AI language model, I do not have access to your account or our internal systems, "
            "but I can try to offer some general guidance that may or may not apply to your situation. ")
PADDING = (" There are many possible reasons for issues like this, and every case is different, so it "
           "is hard to say for sure what happened without more details. I hope this helps.")
CREDENTIALS = ["Please reply with your account password so I can check this for you.",
               "Please send me your full card number and the security code so I can look into it."]
CURT = ["This is explained in the FAQ.", "You should have checked this before writing."]


def chosen_reply(answer: str) -> str:
    """The house style around an answer."""
    return f"{GREETING} {answer} {SIGN_OFF}"


def rejected_reply(answer: str, kind: str, rng: random.Random) -> str:
    """The same kind of answer, breaking the house style in one way."""
    if kind == "plain":
        return answer
    if kind == "verbose":
        return PREAMBLE + answer + PADDING
    if kind == "credentials":
        return f"{GREETING} {rng.choice(CREDENTIALS)} {SIGN_OFF}"
    if kind == "curt":
        return f"{rng.choice(CURT)} {answer}"
    raise ValueError(f"unknown rejected kind {kind!r}")


KINDS = ("plain", "verbose", "credentials", "curt")


def build(seed: int = SEED) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    out = {}
    for name, (split, size) in SIZES.items():
        tickets = load_tickets(split)[:size]
        rows = []
        for i, ticket in enumerate(tickets):
            answer = rng.choice(ANSWERS[ticket["label"]])
            kind = KINDS[i % len(KINDS)]
            rows.append({"id": f"{name}-{i:04d}", "prompt": ticket["text"], "chosen": chosen_reply(answer),
                         "rejected": rejected_reply(answer, kind, rng),
                         "rejected_kind": kind, "label": ticket["label"]})
        rng.shuffle(rows)
        out[name] = rows
    return out


def write(folder: Path = OUT) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in build().items():
        write_jsonl(folder / f"{name}.jsonl", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    write(parser.parse_args().out)
