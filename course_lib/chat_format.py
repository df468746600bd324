"""The chat format for fine-tuning data, and a validator that reports every problem with its place.

One training example is ``{"messages": [{"role": ..., "content": ...}, ...]}`` (OpenAI's and TRL's
conversational format): an optional ``system`` message first, then ``user`` and ``assistant`` turns
alternating, starting with ``user`` and ending with ``assistant`` (the turn the model learns). The validator
never skips silently: each problem names the file, line, field and what is wrong, and a record with any
problem is left out of the valid ones.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROLES = ("system", "user", "assistant")


def messages(user: str, assistant: str | None = None, system: str | None = None) -> list[dict[str, str]]:
    """One exchange in the chat format: the ``system`` message if given, the ``user`` turn, and the ``assistant``
    turn if given (a training example ends with it; a prompt ends with the user turn)."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}] + (
        [{"role": "assistant", "content": assistant}] if assistant is not None else [])


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record: ``where`` is ``file:line``, ``field`` a path such as
    ``messages[2].role``."""
    where: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}"


def chat_problems(record: object, where: str = "<record>", tokenizer=None, max_tokens: int | None = None) -> list[Problem]:
    """Every problem of one record (empty when it is a valid chat). With a ``tokenizer`` and ``max_tokens``, a
    chat longer than ``max_tokens`` tokens once rendered with the tokenizer's chat template is a problem too."""
    def problem(field: str, message: str) -> Problem:
        return Problem(where, field, message)

    if not isinstance(record, dict):
        return [problem("<record>", f"expected a JSON object, got {type(record).__name__}")]
    if "messages" not in record:
        return [problem("messages", "missing key")]
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return [problem("messages", "expected a non-empty list of messages")]
    problems: list[Problem] = []
    roles = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(problem(field, f"expected an object with 'role' and 'content', got {type(message).__name__}"))
            roles.append(None)
            continue
        for key in sorted(set(message) - {"role", "content"}):
            problems.append(problem(f"{field}.{key}", "unknown key (only 'role' and 'content' are allowed)"))
        role = message.get("role")
        if "role" not in message:
            problems.append(problem(f"{field}.role", "missing key"))
        elif role not in ROLES:
            problems.append(problem(f"{field}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})"))
        roles.append(role if role in ROLES else None)
        if "content" not in message:
            problems.append(problem(f"{field}.content", "missing key"))
        elif not isinstance(message["content"], str):
            problems.append(problem(f"{field}.content", f"expected a string, got {type(message['content']).__name__}"))
        elif not message["content"].strip():
            problems.append(problem(f"{field}.content", "empty"))
    problems += _order_problems(roles, problem)
    if not problems and tokenizer is not None and max_tokens is not None:
        length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        if length > max_tokens:
            problems.append(problem("messages", f"{length} tokens with the chat template, more than {max_tokens}"))
    return problems


def _order_problems(roles: Sequence[str | None], problem) -> list[Problem]:
    """Turn order: optional system first; then user, assistant, user, ... ; the last turn is the assistant's."""
    out = []
    turns = list(enumerate(roles))
    if turns and turns[0][1] == "system":
        turns = turns[1:]
    for position, (i, role) in enumerate(turns):
        if role is None:
            continue  # already reported
        expected = "user" if position % 2 == 0 else "assistant"
        if role == "system":
            out.append(problem(f"messages[{i}].role", "a system message may only come first"))
        elif role != expected:
            out.append(problem(f"messages[{i}].role", f"expected {expected!r} here (turns alternate user, "
                                                      f"assistant), got {role!r}"))
    if not turns:
        out.append(problem("messages", "no user or assistant turn"))
    elif turns[-1][1] != "assistant":
        out.append(problem("messages", f"the last turn must be the assistant's (what the model learns), "
                                       f"got {turns[-1][1]!r}"))
    return out


def validate_lines(lines: Iterable[str], source: str = "<lines>", tokenizer=None,
                   max_tokens: int | None = None) -> tuple[list[dict], list[Problem]]:
    """The valid chats among JSON lines, and every problem of the others (``source:line``); blank lines are
    skipped, a line that is not JSON is a problem."""
    valid, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(Problem(where, "<line>", f"invalid JSON ({err.msg}, column {err.colno})"))
            continue
        found = chat_problems(record, where, tokenizer, max_tokens)
        if found:
            problems += found
        else:
            valid.append(record)
    return valid, problems


def validate_file(path: str | Path, tokenizer=None, max_tokens: int | None = None) -> tuple[list[dict], list[Problem]]:
    """:func:`validate_lines` over a JSONL file (invalid UTF-8 is a problem of the whole file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return [], [Problem(str(path), "<file>", f"not valid UTF-8 ({err.reason} at byte {err.start})")]
    return validate_lines(text.splitlines(), str(path), tokenizer, max_tokens)
