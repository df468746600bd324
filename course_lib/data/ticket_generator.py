"""The synthetic support tickets: hand-written templates per category with slots, optional greetings, context and
sign-offs, light perturbation (lower-casing, a dropped final period), and the split into train / validation /
test. Nothing comes from real customers. ``scripts/data/make_tickets.py`` writes the shipped files with
:func:`build`; ``scripts/data/make_messy_tickets.py`` and ``scripts/measure/measure_data_quality.py`` draw fresh
tickets with :func:`make_ticket`.

Not imported by :mod:`course_lib.data` itself (it needs :mod:`course_lib.splits`, which topic 2's grading removes).
"""
from __future__ import annotations

import random
import re

from ..splits import group_split
from . import near_duplicate_key

SEED = 2026
PER_LABEL = 300
SPLITS = {"train": 0.70, "validation": 0.15, "test": 0.15}

SLOTS = {
    "product": ["Aurora desk lamp", "Nimbus headphones", "Pixel Pro backpack", "Terra water bottle", "Orbit smart plug",
                "Cascade coffee maker", "Summit hiking boots", "Lumen e-reader", "Vega wireless mouse", "Atlas office chair",
                "Breeze air purifier", "Echo yoga mat", "Nova phone case", "Zephyr desk fan", "Quill notebook set"],
    "amount": ["$12.99", "$24.50", "$49.00", "$89.95", "$120", "$15.75", "$310.40", "$7.20", "$64.10", "$199"],
    "order": ["#48213", "#55102", "#60077", "#71934", "#83350", "#90412", "#10388", "#22751", "#39906", "#47185"],
    "date": ["Monday", "last Tuesday", "March 3rd", "yesterday", "two weeks ago", "the 14th", "last Friday", "June 9"],
    "device": ["iPhone", "Android phone", "Windows laptop", "MacBook", "Chromebook", "iPad", "Linux desktop"],
    "app": ["mobile app", "website", "desktop app", "browser extension", "checkout page", "dashboard"],
    "error": ["error 500", "a blank white screen", "'session expired'", "error code E42", "a spinning wheel forever",
              "'something went wrong'", "a timeout message", "error 403"],
    "carrier": ["the courier", "the post office", "UPS", "DHL", "the delivery driver", "FedEx"],
    "days": ["three days", "a week", "ten days", "two weeks", "five days", "over a month"],
}

TEMPLATES = {
    "payment": [
        "I was charged twice for order {order}, please refund one of the {amount} payments.",
        "My card was billed {amount} on {date} but I never placed that order.",
        "Why does my invoice show {amount} when the {product} was listed cheaper?",
        "The refund for my {product} has not reached my bank account yet.",
        "Can I get a copy of the invoice for order {order}? My accountant needs it.",
        "My payment keeps getting declined at checkout even though my card works elsewhere.",
        "You charged me {amount} for a subscription I cancelled on {date}.",
        "I see a pending charge of {amount} that never went away.",
        "How do I change the credit card used for my monthly plan?",
        "The discount code was not applied and I paid the full {amount}.",
        "I was promised a refund of {amount} {days} ago and still nothing.",
        "Please explain the extra {amount} fee on my last statement.",
        "Can I pay for order {order} with PayPal instead of a card?",
        "My bank says the transaction for {amount} was reversed but you still show it as paid.",
        "The price dropped to {amount} the day after I bought the {product}, can I get the difference back?",
        "I need a VAT receipt for my purchase of the {product}.",
    ],
    "delivery": [
        "My order {order} still has not arrived after {days}.",
        "The tracking number for my {product} has not updated since {date}.",
        "{carrier} left my package at the wrong address.",
        "The box arrived crushed and the {product} inside is damaged.",
        "I received someone else's order instead of my {product}.",
        "Can I change the delivery address for order {order}? It has not shipped yet.",
        "The website said delivery by {date} but nothing has come.",
        "Only half of my order {order} arrived, the {product} is missing.",
        "{carrier} says the parcel was delivered but I never got it.",
        "How long does shipping to Canada usually take?",
        "My {product} has been stuck in customs for {days}.",
        "Can I pick up my order from a store instead of having it shipped?",
        "The parcel with my {product} was returned to sender, why?",
        "Is express shipping available for order {order}?",
        "{carrier} tried to deliver while I was home and left a note saying nobody answered.",
        "The package for order {order} shows as lost in transit.",
    ],
    "technical": [
        "The {app} crashes every time I open it on my {device}.",
        "I get {error} when I try to upload a photo in the {app}.",
        "My {product} will not pair over Bluetooth with my {device}.",
        "The {app} is extremely slow since the update on {date}.",
        "Notifications stopped working in the {app} on my {device}.",
        "The {product} firmware update failed halfway and now it will not turn on.",
        "Search in the {app} returns {error} for every query.",
        "The {app} shows {error} after I press save.",
        "My {product} disconnects from wifi every few minutes.",
        "Pages in the {app} do not load on my {device}, I only see {error}.",
        "The {product} battery drains in an hour after the latest update.",
        "Dark mode makes the text invisible in the {app}.",
        "The export button in the {app} does nothing on my {device}.",
        "The {app} freezes when I scroll through my order history.",
        "Syncing between the {app} and my {device} has been broken since {date}.",
        "The {product} app keeps logging errors and the device restarts on its own.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives.",
        "How do I change the email address on my account?",
        "My account was locked after too many login attempts on {date}.",
        "Please delete my account and all my personal data.",
        "I think someone else logged into my account from a {device} I do not own.",
        "I cannot turn off two-factor authentication after losing my {device}.",
        "How can I merge my two accounts into one?",
        "The verification code for my login never comes by text message.",
        "I want to change the username on my profile.",
        "My account says it is suspended but I do not know why.",
        "How do I update my phone number in my profile settings?",
        "I signed up with the wrong email and now cannot log in.",
        "Can I add a second user to my family account?",
        "I keep getting logged out of my account every few minutes on the {app}.",
        "Please unsubscribe me from the marketing emails tied to my account.",
        "My profile shows someone else's name and address.",
    ],
    "feedback": [
        "I love the {product}, it is the best purchase I made this year.",
        "It would be great if the {app} had a dark mode option.",
        "Your support agent on {date} was incredibly helpful, thank you!",
        "The new design of the {app} is much easier to use.",
        "Please consider selling the {product} in more colours.",
        "Just wanted to say the {product} exceeded my expectations.",
        "I think the {app} would be better with a wishlist feature.",
        "The packaging of the {product} was beautiful and eco-friendly, well done.",
        "Suggestion: let us sort order history by price in the {app}.",
        "Five stars for the {product}, I have already recommended it to friends.",
        "The instructions for the {product} could be clearer, but it works well.",
        "I wish the {product} came with a longer cable.",
        "Great job on the recent update, the {app} feels faster.",
        "Would you ever make a larger version of the {product}?",
        "Thanks for the quick replies, your team is always friendly.",
        "It would help to have a size guide next to the {product}.",
    ],
}

OPENERS = ["", "", "", "Hi, ", "Hello, ", "Hi there. ", "Good morning, ", "Hey, ", "Dear support, "]
CONTEXT = ["", "", "", " This is the second time I am writing.", " I have been a customer for years.",
           " It is quite urgent.", " I already checked the FAQ.", " Order placed on {date}."]
CLOSERS = ["", "", "", " Thanks.", " Thank you!", " Please help.", " Regards, Sam", " Cheers, Alex",
           " Any update would be appreciated."]


def _fill(template: str, rng: random.Random) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(SLOTS[m.group(1)]), template)


def make_ticket(label: str, rng: random.Random) -> str:
    body = _fill(rng.choice(TEMPLATES[label]), rng)
    opener = rng.choice(OPENERS)
    if opener and body[0].isupper() and not body.startswith("I "):
        body = body[0].lower() + body[1:]
    text = opener + body + _fill(rng.choice(CONTEXT), rng) + rng.choice(CLOSERS)
    if rng.random() < 0.15:
        text = text.lower()
    if rng.random() < 0.2 and text.endswith("."):
        text = text[:-1]
    return text


def build(seed: int = SEED, per_label: int = PER_LABEL, first_split: bool = False) -> dict[str, list[dict]]:
    """``per_label`` distinct tickets per category (by near_duplicate_key), split by SPLITS per label: into
    groups of near duplicates that never straddle two splits, or, with ``first_split``, by the first split's
    random cut of each label's shuffled tickets, which leaks."""
    rng = random.Random(seed)
    pool: dict[str, list[str]] = {}
    seen: set[str] = set()
    for label in sorted(TEMPLATES):
        tickets = []
        for _ in range(per_label * 50):
            if len(tickets) == per_label:
                break
            text = make_ticket(label, rng)
            key = near_duplicate_key(text)
            if key not in seen:
                seen.add(key)
                tickets.append(text)
        if len(tickets) < per_label:
            raise RuntimeError(f"only {len(tickets)} distinct {label} tickets; add templates or slots")
        rng.shuffle(tickets)
        pool[label] = tickets
    if first_split:
        splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
        for label, tickets in pool.items():
            start = 0
            for i, (name, share) in enumerate(SPLITS.items()):
                stop = len(tickets) if i == len(SPLITS) - 1 else start + round(share * len(tickets))
                splits[name] += [{"text": t, "label": label} for t in tickets[start:stop]]
                start = stop
    else:
        rows = [{"text": t, "label": label} for label, tickets in pool.items() for t in tickets]
        splits = group_split(rows, SPLITS, seed=seed)
    for name, rows in splits.items():
        rng.shuffle(rows)
        for i, row in enumerate(rows):
            row["id"] = f"{name[:2]}-{i:04d}"
    return splits
