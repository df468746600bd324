"""Data sets that ship with the course, and a JSONL reader that names the file, line and field of bad input.

A package: this module's code and the files it reads (``tickets/``, ``preferences/``, ``policies/``, ``messy/``,
``adapters/``, ``measurements/``) live in one folder.

The support-ticket data set (``load_tickets``) has five categories and train/validation/test splits with
no near-duplicates across them; ``scripts/data/make_tickets.py`` says how it was made. Sixty more tickets
(``load_freeform_tickets``) were written by hand, unlike those templates, to test robustness.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

TICKET_LABELS = ("account", "delivery", "feedback", "payment", "technical")
TICKET_SPLITS = ("train", "validation", "test")
PREFERENCE_SPLITS = ("train", "test")
PREFERENCE_FIELDS = {"id": str, "prompt": str, "chosen": str, "rejected": str, "rejected_kind": str, "label": str}


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def read_jsonl(path: str | Path, fields: dict[str, type] | None = None) -> list[dict]:
    """Read a JSON-lines file: one JSON object per non-blank line.

    ``fields`` maps required field names to their types; a missing field, a wrong type, a line that is
    not a JSON object, or invalid UTF-8 raises :class:`DataError` naming ``path:line`` and the field.
    """
    path = Path(path)
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg}, column {err.colno})") from err
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        for field, kind in (fields or {}).items():
            if field not in row:
                raise DataError(f"{path}:{number}: missing field '{field}'")
            if not isinstance(row[field], kind):
                raise DataError(f"{path}:{number}: field '{field}' should be {kind.__name__}, "
                                f"got {type(row[field]).__name__}")
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON lines (UTF-8, one object per line, non-ASCII kept as is): what
    :func:`read_jsonl` reads."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def near_duplicate_key(text: str) -> str:
    """Lower-case, every number -> '#', punctuation dropped, spaces collapsed: texts with equal keys are
    near-duplicates ("Order #123 is late!" ~ "order #456 is late")."""
    text = re.sub(r"\d+", "#", text.lower())
    return " ".join(re.sub(r"[^\w#\s]", " ", text).split())


def reference_prose(max_chars: int | None = None) -> str:
    """Plain English prose that ships with Python itself: the prose paragraphs (no grammar rules, code or
    lists) of the Python Language Reference topics in ``pydoc_data.topics``, in a fixed order. Real text,
    not written for this course; used to measure perplexity."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            if block.startswith((" ", "*", '"')) or "::=" in block:
                continue
            text = " ".join(block.split())
            letters = sum(c.isalpha() or c == " " for c in text)
            if len(text) >= 250 and letters / len(text) > 0.93 and not text.startswith("Note"):
                paragraphs.append(text)
    prose = "\n\n".join(paragraphs)
    return prose if max_chars is None else prose[:max_chars]


def shipped_path(*parts: str) -> Path:
    """A path inside this package's folder of shipped data."""
    return Path(str(resources.files(__name__).joinpath(*parts)))


# Every shipped measurement and the command that writes it: what a notebook prints from one of these files, the
# learner's run did not compute (it reruns with that command).
MEASUREMENTS = {
    "approaches_tickets.json": "scripts/measure/measure_approaches.py tickets",
    "approaches_first_split.json": "scripts/measure/measure_approaches.py first_split",
    "approaches_knowledge.json": "scripts/measure/measure_approaches.py knowledge",
    "data_quality.json": "scripts/measure/measure_data_quality.py",
    "data_quality_epochs.json": "scripts/measure/measure_data_quality.py --epochs 1 --seeds 0",
    "lora_sweep.json": "scripts/measure/sweep_lora.py",
    "overfitting_tickets.json": "scripts/measure/measure_overfitting.py",
    "lora_peft_vs_ours.json": "scripts/measure/lora_peft_vs_ours.py",
    "quant_smollm2.json": "scripts/measure/measure_quant.py table",
    "qlora_tickets.json": "scripts/measure/measure_quant.py finetune",
    "qlora_targets.json": "scripts/measure/measure_quant.py targets",
    "dpo_trl_vs_ours.json": "scripts/measure/dpo_trl_vs_ours.py",
    "dpo_ablation.json": "scripts/measure/measure_dpo_ablation.py",
    "evaluation.json": "scripts/measure/measure_evaluation.py",
    "notebook_times.json": "scripts/measure/time_notebooks.py",
}


def load_measurement(name: str, announce: bool = True) -> dict:
    """A shipped measurement (``course_lib/data/measurements/<name>``). With ``announce``, first prints that it is
    one and which command made it, so that a notebook's reader can tell its numbers from those the run computes."""
    if name not in MEASUREMENTS:
        raise DataError(f"unknown measurement {name!r}; the shipped ones are {sorted(MEASUREMENTS)}")
    if announce:
        print(f"[shipped measurement, not computed by this run: {name}, made by `python {MEASUREMENTS[name]}`]")
    return json.loads(shipped_path("measurements", name).read_text())


def write_measurement(name: str, record: dict, folder: Path | None = None) -> Path:
    """Write a measurement the way every script writes one (JSON, indent 1, a final newline, readable by all) to
    the shipped folder (or ``folder``), where :func:`load_measurement` reads it; returns the path."""
    if name not in MEASUREMENTS:
        raise DataError(f"unknown measurement {name!r}: add it to data.MEASUREMENTS with the command that makes it")
    path = (folder or shipped_path("measurements")) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    path.chmod(0o644)
    return path


def tickets_path(split: str, first_split: bool = False) -> Path:
    """Path of one split of the packaged support-ticket data set (of the course's first, leaky split with
    ``first_split``)."""
    if split not in TICKET_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {TICKET_SPLITS}")
    return shipped_path("tickets", *(["first_split"] if first_split else []), f"{split}.jsonl")


def load_tickets(split: str, first_split: bool = False) -> list[dict]:
    """The support tickets of one split: dicts with ``id``, ``text`` and ``label`` (one of TICKET_LABELS). The
    splits are group-aware: no validation or test ticket has a near duplicate in train. ``first_split`` gives the
    course's first split of the same tickets instead (a random cut per label), whose test and validation tickets
    have training near duplicates: topic 2's case study, nothing else."""
    return _read_tickets(tickets_path(split, first_split))


def held_out_tickets(n: int) -> list[dict]:
    """``n`` validation tickets spread evenly over the split (every (225 // n)-th, the first n): the held-out set a
    measurement scores while it trains (the LoRA sweep's and the overfitting run's 90)."""
    validation = load_tickets("validation")
    if not 1 <= n <= len(validation):
        raise ValueError(f"n must be between 1 and {len(validation)}, got {n}")
    return validation[::len(validation) // n][:n]


def load_freeform_tickets() -> list[dict]:
    """Sixty support tickets written by hand for the course (12 per label), phrased unlike the templates of the
    data set: colloquial, indirect, no slot values ("so my bank statement has you guys on it twice"). Topic 6
    uses them as production-like inputs the classifier never saw the like of. Same fields as :func:`load_tickets`."""
    return _read_tickets(shipped_path("tickets", "freeform.jsonl"))


def _read_tickets(path: Path) -> list[dict]:
    rows = read_jsonl(path, {"id": str, "text": str, "label": str})
    for number, row in enumerate(rows, start=1):
        if row["label"] not in TICKET_LABELS:
            raise DataError(f"{path}:{number}: field 'label' is {row['label']!r}, not one of {TICKET_LABELS}")
    return rows


def load_preferences(split: str) -> list[dict]:
    """Preference pairs of the support house style (``scripts/data/make_preferences.py`` says how they were made):
    dicts with ``id``, ``prompt`` (a ticket), ``chosen`` and ``rejected`` replies, ``rejected_kind`` (how the
    rejected reply breaks the style) and the ticket's ``label``."""
    if split not in PREFERENCE_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {PREFERENCE_SPLITS}")
    path = shipped_path("preferences", f"{split}.jsonl")
    return read_jsonl(path, PREFERENCE_FIELDS)


def ticket_adapter_path() -> Path:
    """Folder of topic 3's trained ticket adapter, shipped in PEFT format (``scripts/adapters/make_ticket_adapter.py``)."""
    return shipped_path("adapters", "tickets-lora-r8")


def reply_adapter_path() -> Path:
    """Folder of topic 6's house-style reply adapter (SFT on the chosen replies of the preference pairs), shipped in
    PEFT format (``scripts/adapters/make_reply_adapter.py``)."""
    return shipped_path("adapters", "replies-lora-r8")


def load_policies(folder: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """Topic 1's knowledge task (``scripts/data/make_policies.py``): the fictional shop's policy documents (``id``,
    ``title``, ``text``) and one record per fact (``fact``, ``document``, ``value``, ``sentence``,
    ``train_questions``, ``test_question``, ``answer``, ``edited_value``), from the shipped folder or ``folder``.
    A fact whose sentence is not in its document raises :class:`DataError`."""
    folder = Path(folder) if folder else shipped_path("policies")
    documents = read_jsonl(folder / "documents.jsonl", {"id": str, "title": str, "text": str})
    questions = read_jsonl(folder / "questions.jsonl", {"fact": str, "document": str, "value": str, "sentence": str,
                                                         "train_questions": list, "test_question": str, "answer": str})
    texts = {d["id"]: d["text"] for d in documents}
    for number, q in enumerate(questions, start=1):
        if q["sentence"].format(v=q["value"]) not in texts.get(q["document"], ""):
            raise DataError(f"{folder / 'questions.jsonl'}:{number}: fact {q['fact']!r} is not stated in "
                            f"document {q['document']!r}")
    return documents, questions


def messy_tickets_path() -> Path:
    """Topic 2's raw, deliberately messy ticket export (``scripts/data/make_messy_tickets.py`` lists the damage);
    ``truth.jsonl`` beside it says, per line, what was done to it."""
    return shipped_path("messy", "raw.jsonl")
