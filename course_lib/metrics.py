"""Evaluation metrics. Perplexity: exp of the mean next-token negative log-likelihood (nats per token)."""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.inference_mode()
def perplexity(model: nn.Module, tokenizer, text: str, max_length: int = 512, max_tokens: int | None = None,
               progress: bool = False) -> float:
    """Perplexity of ``text`` under ``model``: the text is tokenized once, cut into consecutive windows
    of ``max_length`` tokens, and every token but each window's first is predicted from the ones before
    it in its window. ``max_tokens`` truncates the text's tokens first (for a fixed, comparable budget)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    device = next(model.parameters()).device
    total_nll, count = 0.0, 0
    for start in tqdm(range(0, ids.numel(), max_length), desc="perplexity", disable=not progress, leave=False):
        window = ids[start:start + max_length].unsqueeze(0).to(device)
        if window.shape[1] < 2:
            break
        logits = model(input_ids=window).logits[0, :-1].float()
        total_nll += nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return math.exp(total_nll / count)
