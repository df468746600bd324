"""Text classification with a chat LM: prompt, fine-tune on the answer tokens only, score by label logits.

Each example becomes a chat (system instruction, user ticket) whose assistant answer is the label word.
Training is supervised fine-tuning with the loss on the answer tokens alone (prompt tokens get label -100).
Prediction reads the next-token logits after the prompt and picks the label whose (single) token scores
highest, so the prediction is always a valid label and costs one forward pass per ticket.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import TICKET_LABELS
from .metrics import accuracy
from .training import TrainConfig, train

IGNORE_INDEX = -100
SYSTEM_PROMPT = ("Classify this support ticket as "
                 "account, delivery, feedback, payment or technical.")


def prompt_ids(tokenizer, text: str, system: str = SYSTEM_PROMPT) -> list[int]:
    """Token ids of the chat prompt for one ticket, ending where the assistant's answer starts."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


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
    """(input_ids, labels) for SFT: the answer (label + end-of-turn) is trained, the prompt is masked."""
    prompt = prompt_ids(tokenizer, text)
    answer = tokenizer.encode(label, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def _pad(sequences: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([([value] * (width - len(s)) + s) if left else (s + [value] * (width - len(s)))
                         for s in sequences])


def batch_indices(count: int, steps: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Indices of each step's batch: one seeded shuffle of ``range(count)``, read cyclically (an epoch boundary
    falls inside a batch when ``count`` is not a multiple of ``batch_size``)."""
    order = random.Random(seed).sample(range(count), count)
    return [[order[(step * batch_size + i) % count] for i in range(batch_size)] for step in range(steps)]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) into a batch; padding gets label -100 and mask 0."""
    ids, labels = zip(*examples)
    input_ids = _pad(list(ids), pad_id, left=False)
    return {"input_ids": input_ids, "labels": _pad(list(labels), IGNORE_INDEX, left=False),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0, left=False)}


@torch.inference_mode()
def score_prompts(model: nn.Module, tokenizer, prompts: Sequence[list[int]], labels: Sequence[str] = TICKET_LABELS,
                  batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """(len(prompts), len(labels)) next-token logits of each label's token right after each prompt (token ids).

    Prompts are left-padded so the last position is the prompt's end for every row; positions are
    counted from each row's first real token, so padding does not shift them.
    """
    device = next(model.parameters()).device
    wanted = torch.tensor(label_token_ids(tokenizer, labels), device=device)
    rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="scoring", disable=not progress, leave=False):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        input_ids = _pad(chunk, tokenizer.pad_token_id, left=True).to(device)
        mask = _pad([[1] * len(p) for p in chunk], 0, left=True).to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        rows.append(out.logits[:, -1, wanted].float().cpu())
    return torch.cat(rows) if rows else torch.empty(0, len(labels))


def label_logits(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[str] = TICKET_LABELS,
                 batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """(len(texts), len(labels)) label logits of each ticket under the classification prompt."""
    return score_prompts(model, tokenizer, [prompt_ids(tokenizer, t) for t in texts], labels, batch_size, progress)


def predict(model: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[str] = TICKET_LABELS,
            batch_size: int = 16, progress: bool = True) -> list[str]:
    """The highest-scoring label for each text."""
    scores = label_logits(model, tokenizer, texts, labels, batch_size, progress)
    return [labels[i] for i in scores.argmax(-1).tolist()]


def evaluate(model: nn.Module, tokenizer, rows: Sequence[dict], batch_size: int = 16,
             progress: bool = True) -> float:
    """Accuracy of ``model`` on ticket rows (dicts with ``text`` and ``label``)."""
    preds = predict(model, tokenizer, [r["text"] for r in rows], batch_size=batch_size, progress=progress)
    return accuracy(preds, [r["label"] for r in rows])


def answer_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels != -100): the same value as
    ``model(**batch).loss``, but the vocabulary projection runs only at the few answer positions
    instead of at every position, which saves about a fifth of a training step here."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return nn.functional.cross_entropy(logits.float(), targets[keep])


def train_classifier(model: nn.Module, tokenizer, rows: Sequence[dict], steps: int = 60, batch_size: int = 8,
                     lr: float = 1e-3, seed: int = 0, progress: bool = True, **options) -> dict:
    """Fine-tune the trainable parameters of ``model`` (e.g. LoRA adapters) on ticket rows: :func:`train_sft`
    on each ticket's prompt and label (``options`` as there)."""
    examples = [encode_example(tokenizer, r["text"], r["label"]) for r in rows]
    return train_sft(model, examples, tokenizer.pad_token_id, steps, batch_size, lr, seed, progress, **options)


@torch.no_grad()
def eval_loss(model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad_id: int,
              batch_size: int = 16) -> float:
    """Mean answer-token cross-entropy of ``model`` over (input_ids, labels) examples: the validation loss."""
    total = count = 0.0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(list(examples[start:start + batch_size]), pad_id).items()}
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
        total += answer_loss(model, batch).item() * tokens
        count += tokens
    return total / count


def train_sft(model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad_id: int, steps: int = 60,
              batch_size: int = 8, lr: float = 1e-3, seed: int = 0, progress: bool = True, *,
              accumulation: int = 1, warmup_steps: int = 0, schedule: str = "constant",
              validation: Sequence[tuple[list[int], list[int]]] | None = None, eval_every: int = 0,
              patience: int = 0, metric: Callable[[], dict[str, float]] | None = None, monitor: str = "loss",
              mode: str = "min", accelerator=None) -> dict:
    """Supervised fine-tuning of the trainable parameters of ``model`` on (input_ids, labels) examples (labels
    -100 where no loss is wanted) with :func:`course_lib.training.train`: ``steps`` optimizer steps of
    ``batch_size`` examples (from one seeded shuffle, :func:`batch_indices`), each made of ``accumulation``
    micro-batches. With ``validation`` examples, the validation loss (and ``metric()``'s numbers, e.g. accuracy)
    every ``eval_every`` steps picks the best checkpoint, restored at the end (``monitor``, ``mode``,
    ``patience`` as in :class:`~course_lib.training.TrainConfig`). With an ``accelerate.Accelerator`` over N
    processes, each trains on every N-th example of each micro-batch (``scripts/train_distributed.py``).

    Returns the history: per step ``loss``, ``lr``, ``seconds``; per evaluation ``eval_step`` and ``eval_*``.
    """
    if batch_size % accumulation:
        raise ValueError(f"batch_size {batch_size} is not a multiple of accumulation {accumulation}")
    config = TrainConfig(steps=steps, lr=lr, accumulation=accumulation, warmup_steps=warmup_steps,
                         schedule=schedule, eval_every=eval_every, patience=patience, monitor=monitor, mode=mode)
    device = next(p for p in model.parameters()).device
    micro = batch_indices(len(examples), steps * accumulation, batch_size // accumulation, seed)
    if accelerator is not None and accelerator.num_processes > 1:
        rank, world = accelerator.process_index, accelerator.num_processes
        if (batch_size // accumulation) % world:
            raise ValueError(f"micro-batches of {batch_size // accumulation} do not split over {world} processes")
        micro = [idx[rank::world] for idx in micro]

    def step_loss(idx: list[int]) -> tuple[torch.Tensor, dict]:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        return answer_loss(model, batch), {}

    def evaluate() -> dict[str, float]:
        scores = {"loss": eval_loss(model, validation, pad_id)} if validation is not None else {}
        return {**scores, **(metric() if metric else {})}

    return train(model, micro, step_loss, config, evaluate if validation is not None or metric else None, progress,
                 accelerator=accelerator)
