"""Build the course's support-ticket data set (course_lib/data/tickets/*.jsonl), deterministically.

How it is made, honestly: the tickets are synthetic. Each category has hand-written sentence templates
with slots (products, amounts, dates, devices, error messages...), combined with optional greetings,
context and sign-offs, then lightly perturbed (lower-casing, a dropped final period). Nothing comes from
real customers. Two tickets whose text is equal once lower-cased, stripped of punctuation and with every number
replaced by '#' count as one and only one is kept.

That key is not enough to keep the splits apart. The course's *first* split cut each label's tickets at random
after it, and 56 of its 225 test tickets still had a training ticket at shingle Jaccard >= 0.7 (two templates
filled with the same slots differ in a word or two). That split is kept in ``first_split/`` for topic 2's case
study. The shipped split is group-aware (``course_lib.splits.group_split``): near duplicates are clustered and
every cluster goes to one split, stratified by label, so ``course_lib.splits.leaks`` finds no validation or test
ticket with a training near duplicate. Both splits hold the same 1,500 tickets.

    python scripts/data/make_tickets.py [FOLDER]   # rewrites FOLDER's three files and FOLDER/first_split's; same seed, same files
"""
from __future__ import annotations

import argparse
from pathlib import Path

from course_lib.data import shipped_path, write_jsonl
from course_lib.data.ticket_generator import build

OUT = shipped_path("tickets")


def write(folder: Path = OUT) -> None:
    """Write the train/validation/test JSONL files into ``folder``, and the first split's into ``folder/first_split``."""
    for first_split, out in ((False, folder), (True, folder / "first_split")):
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in build(first_split=first_split).items():
            write_jsonl(out / f"{name}.jsonl", [{"id": r["id"], "text": r["text"], "label": r["label"]} for r in rows])
            print(f"{name}: {len(rows)} tickets -> {out / (name + '.jsonl')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    write(parser.parse_args().out)
