"""Supervised fine-tuning, the pieces every SFT in the course shares: labels on the answer tokens only
(-100 elsewhere), the chat template, the answer-only loss, and the loop (batches come from :mod:`course_lib.batching`).

- :func:`sft_example` renders a chat with the tokenizer's chat template and labels each assistant turn, through
  its end-of-turn token, and nothing else: the model learns to answer (and to stop), not to write the prompts.
- :func:`answer_loss` is the mean cross-entropy on those tokens; :func:`train_sft` trains on (input_ids, labels)
  examples with :func:`course_lib.training.train` (classification in topic 3, replies in topics 5 and 6).
- :func:`as_dataset` and :func:`data_collator` hand the same examples to transformers' ``Trainer`` or TRL.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .batching import IGNORE_INDEX, collate, length_batches
from .training import TrainConfig, train

def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a chat rendered with the tokenizer's chat template (optionally + the assistant header)."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                              return_dict=True)["input_ids"])


def sft_example(tokenizer, messages: list[dict], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a chat for supervised fine-tuning on the assistant turns only.

    The chat is rendered with the tokenizer's chat template. Each assistant turn's tokens, from the end of
    its generation prompt (``<|im_start|>assistant\\n``) through its end-of-turn token (``<|im_end|>``, what
    the model must learn to emit to stop), keep their ids as labels; every other token gets -100: system and
    user turns, role headers, and the newline the template writes after the end-of-turn token. The turn
    boundaries come from rendering each prefix of the chat, so this works for any template that renders a
    chat's prefix as a prefix of the whole. ``max_length`` truncates ids and labels alike on the right.
    """
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the chat has no assistant turn: there would be nothing to train on")
    ids = render_chat(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(ids)
    eos = tokenizer.eos_token_id
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix, through = render_chat(tokenizer, messages[:k], True), render_chat(tokenizer, messages[:k + 1])
        if ids[:len(prefix)] != prefix or ids[:len(through)] != through:
            raise ValueError("the chat template does not render a chat's prefix as a prefix of the whole chat")
        start = len(prefix)
        turn = ids[start:len(through)]
        stop = len(turn) - turn[::-1].index(eos) if eos in turn else len(turn)
        labels[start:start + stop] = turn[:stop]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def as_dataset(examples: Sequence[tuple[list[int], list[int]]]):
    """(input_ids, labels) examples as a Hugging Face ``datasets.Dataset``: what transformers' ``Trainer`` and
    TRL's trainers read (the library way of the same training, topic 3)."""
    from datasets import Dataset
    return Dataset.from_list([{"input_ids": list(ids), "labels": list(labels)} for ids, labels in examples])


def data_collator(pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """A ``Trainer`` data collator for rows of :func:`as_dataset`: pads them with :func:`collate`."""
    return lambda rows: collate([(row["input_ids"], row["labels"]) for row in rows], pad_id)


def labelled_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(labels[t + 1] | tokens up to t) at every labelled position of a causal LM's batch, as (B, T - 1)
    (0 where unlabelled), and the mask of labelled positions. The vocabulary projection runs only at those
    positions: the answers are a fraction of each sequence, the projection a fifth of a small model's work."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token = torch.zeros(targets.shape, dtype=logits.dtype, device=logits.device)
    token[keep] = torch.log_softmax(logits, -1).gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    return token, keep


def answer_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (labels != -100): the value of
    ``model(**batch).loss``, from :func:`labelled_logprobs` (which saves about a fifth of a training step)."""
    token, keep = labelled_logprobs(model, batch)
    return -token.sum() / keep.sum()


@torch.no_grad()
def eval_loss(model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad_id: int,
              batch_size: int = 16) -> float:
    """Mean answer-token cross-entropy of ``model`` over (input_ids, labels) examples: the validation loss.
    Batches are cut from the examples sorted by length (:func:`length_batches`; the mean does not depend on the
    order), so little compute goes to padding."""
    total = count = 0.0
    device = next(model.parameters()).device
    for rows in length_batches([len(ids) for ids, _ in examples], batch_size):
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in rows], pad_id).items()}
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
        total += answer_loss(model, batch).item() * tokens
        count += tokens
    return total / count


def train_sft(model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad_id: int,
              config: TrainConfig = TrainConfig(steps=60), *,
              validation: Sequence[tuple[list[int], list[int]]] | None = None,
              metric: Callable[[], dict[str, float]] | None = None, progress: bool = True, accelerator=None) -> dict:
    """Supervised fine-tuning of the trainable parameters of ``model`` on (input_ids, labels) examples (labels
    -100 where no loss is wanted) with :func:`course_lib.training.train` and its ``config`` (steps, batch size,
    learning rate, seed, accumulation, schedule, precision). With ``validation`` examples, the validation loss
    (and ``metric()``'s numbers, e.g. accuracy) every ``config.eval_every`` steps picks the best checkpoint,
    restored at the end (``monitor``, ``mode`` and ``patience`` of the config). With an ``accelerate.Accelerator``
    over N processes, each trains on every N-th example of each micro-batch (``scripts/tools/train_distributed.py``).

    Returns the history: per step ``loss``, ``lr``, ``seconds``; per evaluation ``eval_step`` and ``eval_*``.
    """
    device = next(p for p in model.parameters()).device

    def step_loss(idx: list[int]) -> tuple[torch.Tensor, dict]:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        return answer_loss(model, batch), {}

    def evaluate() -> dict[str, float]:
        scores = {"loss": eval_loss(model, validation, pad_id)} if validation is not None else {}
        return {**scores, **(metric() if metric else {})}

    return train(model, config.micro_batches(len(examples)), step_loss, config,
                 evaluate if validation is not None or metric else None, progress, accelerator=accelerator)
