"""Text classification with a chat LM: prompt, fine-tune on the answer tokens only, score by label logits.

Each example becomes a chat (system instruction, user ticket) whose assistant answer is the label word.
Training is supervised fine-tuning with the loss on the answer tokens alone (prompt tokens get label -100).
Prediction reads the next-token logits after the prompt and picks the label whose (single) token scores
highest, so the prediction is always a valid label and costs one forward pass per ticket.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import IGNORE_INDEX, length_batches, pad
from .chat_format import messages
from .data import TICKET_LABELS
from .metrics import accuracy
from .sft import render_chat, sft_example, train_sft
from .training import TrainConfig

SYSTEM_PROMPT = f"Classify this support ticket as {', '.join(TICKET_LABELS[:-1])} or {TICKET_LABELS[-1]}."


def prompt_ids(tokenizer, text: str, system: str = SYSTEM_PROMPT) -> list[int]:
    """Token ids of the chat prompt for one ticket, ending where the assistant's answer starts."""
    return render_chat(tokenizer, messages(text, system=system), add_generation_prompt=True)


def label_token_ids(tokenizer, labels: Sequence[str] = TICKET_LABELS) -> list[int]:
    """The single token id of each label as the first word of the answer; raises if a label needs more."""
    ids = []
    for label in labels:
        tokens = tokenizer.encode(label, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"label {label!r} is {len(tokens)} tokens; scoring needs one-token labels")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"labels {labels} share a token; they must be distinguishable by their first token")
    return ids


def encode_example(tokenizer, text: str, label: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for SFT: the answer (the label and the end-of-turn token the chat template closes an
    assistant turn with) is trained, the prompt is masked (:func:`course_lib.sft.sft_example`). Whatever the
    template writes after the end-of-turn is dropped: the ids end where the answer does."""
    ids, labels = sft_example(tokenizer, messages(text, label, SYSTEM_PROMPT))
    end = max(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX) + 1
    return ids[:end], labels[:end]


@torch.inference_mode()
def score_prompts(model: nn.Module, tokenizer, prompts: Sequence[list[int]], labels: Sequence[str] = TICKET_LABELS,
                  batch_size: int = 16, progress: bool = True, prefix_cache: bool = True) -> torch.Tensor:
    """(len(prompts), len(labels)) next-token logits of each label's token right after each prompt (token ids).

    - **Prefix caching**: the tokens every prompt starts with (the chat template and system prompt, about half
      of a ticket's prompt) run through the model once; their keys and values are reused by every batch, as
      serving engines do (vLLM's automatic prefix caching). A lone prompt is scored in one pass, and so is
      every prompt with ``prefix_cache=False`` (``scripts/bench/bench_scoring.py`` compares the two).
    - The rest of each prompt is left-padded, so the last position is the prompt's end in every row; positions
      continue from the prefix, counted over real tokens only, so padding does not shift them.
    - Batches are cut from the prompts sorted by length, so little compute goes to padding; rows come back in
      the prompts' order.
    """
    device = next(model.parameters()).device
    wanted = torch.tensor(label_token_ids(tokenizer, labels), device=device)
    prompts = [list(p) for p in prompts]
    shared = 0
    if prefix_cache and len(prompts) > 1:  # the longest common prefix, leaving each prompt at least one token
        shared = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1)
    prefix, key = None, "cache"
    if shared > 0:
        out = model(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True)
        key = "cache" if "cache" in out else "past_key_values"  # transformers 5.24 renamed past_key_values
        prefix = out.get(key)
        shared = shared if prefix is not None else 0  # a model without a key/value cache scores whole prompts
    scores = torch.empty(len(prompts), len(labels))
    for rows in tqdm(length_batches(list(map(len, prompts)), batch_size), desc="scoring", disable=not progress,
                     leave=False):
        rest = [prompts[i][shared:] for i in rows]
        input_ids = pad(rest, tokenizer.pad_token_id, left=True).to(device)
        mask = pad([[1] * len(p) for p in rest], 0, left=True).to(device)
        positions = shared + (mask.cumsum(-1) - 1).clamp_min(0)
        cached = {}
        if prefix is not None:
            cache = copy.deepcopy(prefix)  # each batch appends its own keys and values to its copy
            cache.batch_repeat_interleave(len(rows))
            cached = {key: cache}
            mask = torch.cat([mask.new_ones(len(rows), shared), mask], dim=1)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **cached)
        scores[rows] = out.logits[:, -1, wanted].float().cpu()
    return scores


def label_logits(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[str] = TICKET_LABELS,
                 batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """(len(texts), len(labels)) label logits of each ticket under the classification prompt."""
    return score_prompts(model, tokenizer, [prompt_ids(tokenizer, t) for t in texts], labels, batch_size, progress)


def predict(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[str] = TICKET_LABELS,
            batch_size: int = 16, progress: bool = True) -> list[str]:
    """The highest-scoring label for each text."""
    scores = label_logits(model, tokenizer, texts, labels, batch_size, progress)
    return [labels[i] for i in scores.argmax(-1).tolist()]


def correct(model: nn.Module, tokenizer, rows: Sequence[dict], batch_size: int = 16,
            progress: bool = True) -> list[bool]:
    """Per ticket row (a dict with ``text`` and ``label``), whether ``model`` labels it right: what a paired test
    of two models on the same rows (``metrics.mcnemar``) compares."""
    preds = predict(model, tokenizer, [r["text"] for r in rows], batch_size=batch_size, progress=progress)
    return [p == r["label"] for p, r in zip(preds, rows)]


def evaluate(model: nn.Module, tokenizer, rows: Sequence[dict], batch_size: int = 16,
             progress: bool = True) -> float:
    """Accuracy of ``model`` on ticket rows (dicts with ``text`` and ``label``)."""
    preds = predict(model, tokenizer, [r["text"] for r in rows], batch_size=batch_size, progress=progress)
    return accuracy(preds, [r["label"] for r in rows])


def examples(tokenizer, rows: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
    """The (input_ids, labels) training example of each ticket row (:func:`encode_example`)."""
    return [encode_example(tokenizer, r["text"], r["label"]) for r in rows]


def train_classifier(model: nn.Module, tokenizer, rows: Sequence[dict], config: TrainConfig = TrainConfig(steps=60),
                     **options) -> dict:
    """Fine-tune the trainable parameters of ``model`` (e.g. LoRA adapters) on ticket rows:
    :func:`course_lib.sft.train_sft` on each ticket's prompt and label, with the ``config`` and ``options``
    (validation, metric, progress, accelerator) as there."""
    return train_sft(model, examples(tokenizer, rows), tokenizer.pad_token_id, config, **options)


