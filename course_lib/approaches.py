"""The support-ticket task solved four ways, measured the same way: zero-shot prompt, few-shot prompt, few-shot
with retrieved examples (RAG), and the fine-tuned adapter of topic 3.

Every way ends in the same scorer (:func:`course_lib.classify.score_prompts`: the label whose token the model
rates highest right after the prompt), so the four differ only in the prompt and the weights. Measured per
way: accuracy, prompt tokens per request, seconds per ticket (one ticket at a time, as a service answers
them), and dollars per million requests under a :class:`~course_lib.decision.CostModel`.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from . import classify, metrics
from .data import TICKET_LABELS
from .decision import CostModel
from .retrieval import Retriever, few_shot_messages
from .sft import render_chat

APPROACHES = ("zero-shot", "few-shot", "RAG few-shot", "fine-tuned")


def balanced_examples(rows: Sequence[dict], k: int) -> list[tuple[str, str]]:
    """``k`` (text, label) examples taken in turn from each label, in data order: the fixed few-shot set."""
    by_label = {label: [r for r in rows if r["label"] == label] for label in TICKET_LABELS}
    picked = []
    for i in range(k):
        label = TICKET_LABELS[i % len(TICKET_LABELS)]
        row = by_label[label][i // len(TICKET_LABELS)]
        picked.append((row["text"], row["label"]))
    return picked


def ticket_prompts(approach: str, texts: Sequence[str], train: Sequence[dict], k: int = 5,
                   retriever: Retriever | None = None) -> list[list[dict[str, str]]]:
    """The chat prompt of each ticket under one approach (the fine-tuned model gets the zero-shot prompt it
    was trained on). RAG few-shot needs a :class:`Retriever` over the training tickets' texts."""
    if approach in ("zero-shot", "fine-tuned"):
        return [few_shot_messages(classify.SYSTEM_PROMPT, [], t) for t in texts]
    if approach == "few-shot":
        examples = balanced_examples(train, k)
        return [few_shot_messages(classify.SYSTEM_PROMPT, examples, t) for t in texts]
    if approach == "RAG few-shot":
        if retriever is None:
            raise ValueError("RAG few-shot needs a Retriever over the training tickets")
        nearest = retriever.search(texts, k).tolist()
        # nearest last: the closest example sits right before the query
        return [few_shot_messages(classify.SYSTEM_PROMPT, [(train[i]["text"], train[i]["label"]) for i in reversed(row)], t)
                for t, row in zip(texts, nearest)]
    raise ValueError(f"unknown approach {approach!r}; choose one of {APPROACHES}")


def measure(model: nn.Module, tokenizer, approach: str, rows: Sequence[dict], train: Sequence[dict], k: int = 5,
            retriever: Retriever | None = None, cost: CostModel = CostModel(), latency_tickets: int = 8,
            progress: bool = True) -> dict:
    """Accuracy, mean prompt tokens, median seconds per ticket (batch of one; retrieval included), dollars
    per million requests and the predicted label of each row, of one approach on ticket ``rows``."""
    texts = [r["text"] for r in rows]
    prompts = [render_chat(tokenizer, m, add_generation_prompt=True)
               for m in ticket_prompts(approach, texts, train, k, retriever)]
    scores = classify.score_prompts(model, tokenizer, prompts, progress=progress)
    predictions = [TICKET_LABELS[i] for i in scores.argmax(-1).tolist()]
    seconds = []
    with torch.inference_mode():
        for text in texts[:latency_tickets]:
            start = time.perf_counter()
            (messages,) = ticket_prompts(approach, [text], train, k, retriever)
            classify.score_prompts(model, tokenizer, [render_chat(tokenizer, messages, add_generation_prompt=True)],
                                   progress=False)
            seconds.append(time.perf_counter() - start)
    tokens = statistics.fmean(len(p) for p in prompts)
    return {"approach": approach, "accuracy": metrics.accuracy(predictions, [r["label"] for r in rows]),
            "n": len(rows), "prompt_tokens": tokens, "seconds_per_ticket": statistics.median(seconds),
            "dollars_per_million": 1e6 * cost.per_request(tokens, finetuned=approach == "fine-tuned"),
            "predictions": predictions}
