"""Retrieval for few-shot prompts and RAG: sentence embeddings, top-k cosine search, chat prompts with examples.

Embeddings are those of all-MiniLM-L6-v2 as sentence-transformers computes them (Reimers & Gurevych, 2019):
the encoder's last hidden states averaged over the real tokens (mean pooling), then scaled to unit length, so
the cosine similarity of two texts is the dot product of their embeddings.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.inference_mode()
def embed(texts: Sequence[str], encoder: nn.Module, tokenizer, batch_size: int = 64, max_length: int = 256,
          progress: bool = True) -> torch.Tensor:
    """(len(texts), hidden) unit-length sentence embeddings: mean of the last hidden states over the attention
    mask, L2-normalised."""
    if isinstance(texts, str):
        raise TypeError("embed takes a sequence of texts, not one string")
    device = next(encoder.parameters()).device
    rows = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding", disable=not progress, leave=False):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        rows.append(nn.functional.normalize(pooled, dim=-1).float().cpu())
    return torch.cat(rows) if rows else torch.empty(0, encoder.config.hidden_size)


def top_k_cosine(query: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` rows of ``corpus`` most cosine-similar to ``query`` (one vector or a batch of them):
    (similarities, indices), most similar first. Vectors need not be normalised."""
    if not 1 <= k <= corpus.shape[0]:
        raise ValueError(f"k must be between 1 and the corpus size {corpus.shape[0]}, got {k}")
    q = nn.functional.normalize(query.float(), dim=-1)
    c = nn.functional.normalize(corpus.float(), dim=-1)
    return torch.topk(q @ c.T, k, dim=-1)


def few_shot_messages(system: str, examples: Sequence[tuple[str, str]], query: str) -> list[dict[str, str]]:
    """A chat prompt that shows the model worked examples: the system message, then each (input, answer) as a
    user turn and an assistant turn, then the query as the last user turn."""
    messages = [{"role": "system", "content": system}]
    for text, answer in examples:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": query}]


class Retriever:
    """Embeds a fixed set of texts once; :meth:`search` returns the indices of the ``k`` nearest to a query."""

    def __init__(self, texts: Sequence[str], encoder: nn.Module, tokenizer, progress: bool = True):
        self.texts, self.encoder, self.tokenizer = list(texts), encoder, tokenizer
        self.embeddings = embed(self.texts, encoder, tokenizer, progress=progress)

    def search(self, queries: Sequence[str], k: int) -> torch.Tensor:
        """(len(queries), k) indices into ``texts``, nearest first."""
        return top_k_cosine(embed(queries, self.encoder, self.tokenizer, progress=False), self.embeddings, k)[1]
