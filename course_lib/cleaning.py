"""A cleaning pipeline for raw labelled tickets: every stage says what it removed or changed, and why.

Stages, in order (each sees what the previous kept):

1. ``parse``: lines that are not JSON objects are dropped (their ``file:line`` kept in the report);
2. ``fields``: the known shapes (``text``/``label``, ``ticket``/``category``, a chat whose user turn is the ticket
   and whose assistant turn the label) become ``{"text", "label", "line"}``; a chat with a problem
   (:mod:`course_lib.chat_format`) or any other shape is dropped;
3. ``markup``: HTML tags and entities removed, whitespace collapsed;
4. ``pii``: personal data replaced by placeholders (:func:`course_lib.pii.redact`);
5. ``labels``: records whose label is not one of the task's (empty, truncated, misspelt) are dropped;
6. ``exact duplicates``: equal normalised text, the first kept;
7. ``near duplicates``: shingle Jaccard at or above ``near_threshold`` (MinHash LSH), the first kept;
8. ``length``: chats longer than ``max_tokens`` with the tokenizer's chat template are dropped.

Wrong labels that are valid label words cannot be seen by rules; topic 2 measures what they cost.
"""
from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .chat_format import chat_problems, messages
from .dedup import near_duplicate_pairs, normalise
from .pii import redact


@dataclass
class Stage:
    """What one stage did: records in and out, and the count of each reason for a drop or a change."""
    name: str
    records_in: int = 0
    records_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    changed: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # a few "file:line: reason" for the report

    def note(self, where: str, reason: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")


def _fields(record: object) -> tuple[str, str] | str:
    """(text, label) of a known record shape, or the reason it has none."""
    if not isinstance(record, dict):
        return "not an object"
    for text_key, label_key in (("text", "label"), ("ticket", "category")):
        if text_key in record and label_key in record:
            text, label = record[text_key], record[label_key]
            if isinstance(text, str) and isinstance(label, str):
                return text, label
            return f"'{text_key}' or '{label_key}' is not a string"
    if "messages" in record:
        problems = chat_problems(record)
        if problems:
            return f"chat: {problems[0].field}: {problems[0].message}"
        turns = [m for m in record["messages"] if m["role"] != "system"]
        if len(turns) != 2:
            return "chat: expected one user and one assistant turn"
        return turns[0]["content"], turns[1]["content"]
    return f"unknown fields {sorted(record)[:4]}"


def strip_markup(text: str) -> str:
    """Text without HTML tags and entities, whitespace collapsed to single spaces."""
    return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", text)).split())


def clean(lines: Sequence[str], labels: Sequence[str], source: str = "<lines>", near_threshold: float = 0.8,
          tokenizer=None, max_tokens: int | None = None, system: str | None = None) -> tuple[list[dict], list[Stage]]:
    """Clean raw JSON lines into ``{"text", "label", "line"}`` records; returns them and the report of every
    stage. With a ``tokenizer`` and ``max_tokens``, the length stage renders each record as the chat it will be
    trained as (``system`` message, ticket, label)."""
    stages = []

    def stage(name: str, n_in: int) -> Stage:
        stages.append(Stage(name, n_in))
        return stages[-1]

    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    s = stage("parse", len(numbered))
    parsed = []
    for number, line in numbered:
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError:
            s.dropped["not JSON"] += 1
            s.note(f"{source}:{number}", "not JSON")

    s = stage("fields", len(parsed))
    records = []
    for number, record in parsed:
        got = _fields(record)
        if isinstance(got, str):
            reason = "chat with a problem" if got.startswith("chat") else got
            s.dropped[reason if not reason.startswith("unknown fields") else "unknown fields"] += 1
            s.note(f"{source}:{number}", got)
        else:
            shape = "ticket/category renamed" if "ticket" in record else ("chat unpacked" if "messages" in record else "")
            if shape:
                s.changed[shape] += 1
            records.append({"text": got[0], "label": got[1], "line": number})

    s = stage("markup", len(records))
    for r in records:
        stripped = strip_markup(r["text"])
        if stripped != r["text"]:
            s.changed["markup or whitespace"] += 1
            r["text"] = stripped

    s = stage("pii", len(records))
    for r in records:
        r["text"], counts = redact(r["text"])
        s.changed.update(counts)

    s = stage("labels", len(records))
    known = set(labels)
    kept = []
    for r in records:
        label = r["label"].strip().lower()
        if label in known:
            r["label"] = label
            kept.append(r)
        else:
            s.dropped["empty label" if not label else "unknown label"] += 1
            s.note(f"{source}:{r['line']}", f"label {r['label']!r}")
    records = kept

    s = stage("exact duplicates", len(records))
    seen, kept = set(), []
    for r in records:
        key = normalise(r["text"])
        if key in seen:
            s.dropped["exact duplicate"] += 1
        else:
            seen.add(key)
            kept.append(r)
    records = kept

    s = stage("near duplicates", len(records))
    later = {j for _, j, _ in near_duplicate_pairs([r["text"] for r in records], near_threshold)}
    s.dropped["near duplicate"] += len(later)
    records = [r for i, r in enumerate(records) if i not in later]

    s = stage("length", len(records))
    if tokenizer is not None and max_tokens is not None:
        kept = []
        for r in records:
            chat = messages(r["text"], r["label"], system)
            if chat_problems({"messages": chat}, tokenizer=tokenizer, max_tokens=max_tokens):
                s.dropped[f"over {max_tokens} tokens"] += 1
            else:
                kept.append(r)
        records = kept
    for st, after in zip(stages, stages[1:] + [None]):
        st.records_out = after.records_in if after else len(records)
    return records, stages


def report(stages: Sequence[Stage]) -> str:
    """The stages as a text table: records in and out, and each reason with its count."""
    rows = []
    for s in stages:
        reasons = ", ".join(f"-{n} {k}" for k, n in s.dropped.most_common()) or ""
        changes = ", ".join(f"~{n} {k}" for k, n in s.changed.most_common()) or ""
        rows.append(f"{s.name:>17}: {s.records_in:>5} -> {s.records_out:>5}  {'; '.join(x for x in (reasons, changes) if x)}")
    return "\n".join(rows)
