"""The knowledge task: questions about a fictional shop's policies, answered from memory, from retrieved
documents (RAG), or by a model fine-tuned on question/answer pairs.

Two readings of what a model knows: a generated reply counts as right when it states the fact's value as a
whole number (``37``, not ``370``), which also tests how well a small model writes; and a forced choice
(:func:`choose_values`) takes the candidate value whose answer sentence the model finds most likely, which
reads its belief without its writing. Editing a document (:func:`edit_documents`) changes a fact's value: a RAG
system can read the new value at once, a fine-tune keeps the value it was trained on until it is trained again.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .align import generate_replies, sequence_logprobs
from .batching import collate
from .chat_format import messages
from .metrics import accuracy
from .retrieval import Retriever
from .sft import sft_example

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
    return messages(question, system=PLAIN_SYSTEM)


def rag_messages(question: str, documents: Sequence[str]) -> list[dict[str, str]]:
    return messages(question, system=RAG_SYSTEM.format(documents="\n\n".join(documents)))


def training_examples(tokenizer, questions: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
    """SFT examples (loss on the answer only) from every fact's training questions, without documents: what a
    fine-tune on the shop's FAQ learns from."""
    return [sft_example(tokenizer, messages(text, q["answer"].format(v=q["value"]), PLAIN_SYSTEM))
            for q in questions for text in q["train_questions"]]


def prompts(questions: Sequence[str], retriever: Retriever | None = None, k: int = 1) -> list[list[dict[str, str]]]:
    """The chat prompt of each question: from memory or, with a :class:`Retriever` over the documents, with the
    ``k`` nearest documents in the system prompt."""
    if retriever is None:
        return [plain_messages(q) for q in questions]
    nearest = retriever.search(questions, k).tolist()
    return [rag_messages(q, [retriever.texts[i] for i in row]) for q, row in zip(questions, nearest)]


def answer(model: nn.Module, tokenizer, chats: Sequence[list[dict]], progress: bool = True) -> list[str]:
    """The model's greedy replies (at most 32 tokens) to chat prompts."""
    return generate_replies(model, tokenizer, list(chats), max_new_tokens=32, progress=progress)


def candidate_values(questions: Sequence[dict]) -> list[str]:
    """Every value any fact has or is edited to: the options of the forced choice."""
    values = {q["value"] for q in questions} | {q["edited_value"] for q in questions if q.get("edited_value")}
    return sorted(values, key=float)


@torch.inference_mode()
def choose_values(model: nn.Module, tokenizer, chats: Sequence[list[dict]], questions: Sequence[dict],
                  candidates: Sequence[str], batch_size: int = 16, progress: bool = True) -> list[str]:
    """For each chat prompt, the candidate whose answer sentence (the fact's ``answer`` with that value) has the
    highest log-probability under the model: log p(answer | prompt), summed over the answer's tokens."""
    device = next(model.parameters()).device
    examples = [sft_example(tokenizer, list(chat) + [{"role": "assistant", "content": q["answer"].format(v=c)}])
                for chat, q in zip(chats, questions) for c in candidates]
    scores = []
    for start in tqdm(range(0, len(examples), batch_size), desc="scoring", disable=not progress, leave=False):
        batch = collate(examples[start:start + batch_size], tokenizer.pad_token_id)
        scores.append(sequence_logprobs(model, {k: v.to(device) for k, v in batch.items()}).float().cpu())
    best = torch.cat(scores).view(len(chats), len(candidates)).argmax(-1)
    return [candidates[i] for i in best.tolist()]


def fact_accuracy(replies: Sequence[str], questions: Sequence[dict]) -> float:
    """Share of replies that state their fact's value."""
    if len(replies) != len(questions) or not questions:
        raise ValueError(f"need one reply per question, got {len(replies)} and {len(questions)}")
    return sum(states_value(r, q["value"]) for r, q in zip(replies, questions)) / len(questions)


def choice_accuracy(chosen: Sequence[str], questions: Sequence[dict]) -> float:
    """Share of forced choices equal to their fact's value."""
    if len(chosen) != len(questions):
        raise ValueError(f"need one choice per question, got {len(chosen)} and {len(questions)}")
    return accuracy(list(chosen), [q["value"] for q in questions])
