"""The knowledge task: questions about a fictional shop's policies, answered from memory, from retrieved
documents (RAG), or by a model fine-tuned on question/answer pairs.

An answer counts as right when it states the fact's value as a whole number (``37``, not ``370``). Editing a
document (:func:`edit_documents`) changes a fact's value: a RAG system reads the new value at once, a fine-tune
keeps the value it was trained on until it is trained again.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .align import generate_replies, sft_example
from .retrieval import Retriever

SHOP = "Brightmoor Home Supplies"
PLAIN_SYSTEM = f"You answer customer questions for {SHOP} in one short sentence."
RAG_SYSTEM = (f"You answer customer questions for {SHOP} in one short sentence, using only these policies:"
              "\n\n{documents}")


def states_value(reply: str, value: str) -> bool:
    """True when ``reply`` contains ``value`` as a whole number (not as part of a longer one)."""
    return re.search(rf"(?<![\d.]){re.escape(value)}(?![\d]|\.\d)", reply) is not None


def edit_documents(documents: Sequence[dict], questions: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Documents and questions with every fact that has an ``edited_value`` changed to it."""
    documents = [dict(d) for d in documents]
    edited = []
    for q in questions:
        q = dict(q)
        if q.get("edited_value"):
            old, new = q["sentence"].format(v=q["value"]), q["sentence"].format(v=q["edited_value"])
            for d in documents:
                if d["id"] == q["document"]:
                    if old not in d["text"]:
                        raise ValueError(f"fact {q['fact']!r}: its sentence is not in document {d['id']!r}")
                    d["text"] = d["text"].replace(old, new)
            q["value"] = q["edited_value"]
        edited.append(q)
    return documents, edited


def plain_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PLAIN_SYSTEM}, {"role": "user", "content": question}]


def rag_messages(question: str, documents: Sequence[str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": RAG_SYSTEM.format(documents="\n\n".join(documents))},
            {"role": "user", "content": question}]


def training_examples(tokenizer, questions: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
    """SFT examples (loss on the answer only) from every fact's training questions, without documents: what a
    fine-tune on the shop's FAQ learns from."""
    return [sft_example(tokenizer, plain_messages(text) + [{"role": "assistant",
                                                             "content": q["answer"].format(v=q["value"])}])
            for q in questions for text in q["train_questions"]]


def answer(model: nn.Module, tokenizer, questions: Sequence[str], retriever: Retriever | None = None, k: int = 1,
           progress: bool = True) -> list[str]:
    """The model's replies (greedy), from memory or, with a :class:`Retriever` over the documents, with the
    ``k`` nearest documents in the system prompt."""
    if retriever is None:
        prompts = [plain_messages(q) for q in questions]
    else:
        nearest = retriever.search(questions, k).tolist()
        prompts = [rag_messages(q, [retriever.texts[i] for i in row]) for q, row in zip(questions, nearest)]
    return generate_replies(model, tokenizer, prompts, max_new_tokens=32, progress=progress)


def fact_accuracy(replies: Sequence[str], questions: Sequence[dict]) -> float:
    """Share of replies that state their fact's value."""
    if len(replies) != len(questions) or not questions:
        raise ValueError(f"need one reply per question, got {len(replies)} and {len(questions)}")
    return sum(states_value(r, q["value"]) for r, q in zip(replies, questions)) / len(questions)
