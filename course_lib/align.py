"""What alignment aims at and how to read a model's replies: the support house style (a deterministic checker of
the behaviour topic 5 aligns SmolLM2 to), support chats, log-probabilities of replies, greedy or sampled replies.
The methods live beside it: SFT in :mod:`course_lib.sft`, reward models in :mod:`course_lib.reward`, DPO in
:mod:`course_lib.dpo`, the KL-regularised RLHF objective in :mod:`course_lib.rlhf`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import IGNORE_INDEX
from .chat_format import messages
from .sft import labelled_logprobs

SYSTEM_PROMPT = "You are the support assistant of Acme, an online shop."
GREETING = "Hi, thanks for contacting Acme!"
SIGN_OFF = "- Acme Support"
MAX_WORDS = 60
MIN_ANSWER_WORDS = 8
_ASKS_FOR_CREDENTIALS = re.compile(r"\b(send|share|give|tell|reply with|provide|type|enter)\b[^.!?]*"
                                   r"\b(password|card number|security code|cvv|pin)\b", re.IGNORECASE)


# --- the behaviour we align to -------------------------------------------------------------------------------

def house_style(reply: str) -> dict[str, bool]:
    """The deterministic checker of Acme's support style: each rule -> whether ``reply`` keeps it."""
    text = reply.strip()
    body = text.removeprefix(GREETING).removesuffix(SIGN_OFF)
    return {"greeting": text.startswith(GREETING),
            "answers": len(body.split()) >= MIN_ANSWER_WORDS,
            "concise": len(text.split()) <= MAX_WORDS,
            "no_credentials": _ASKS_FOR_CREDENTIALS.search(text) is None,
            "sign_off": text.endswith(SIGN_OFF)}


def follows_house_style(reply: str) -> bool:
    """True when ``reply`` keeps every rule of :func:`house_style`."""
    return all(house_style(reply).values())


def chat(prompt: str, reply: str | None = None, system: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """A support chat: system message, the customer's ticket, and (optionally) the assistant's reply."""
    return messages(prompt, reply, system)


# --- log-probabilities of responses --------------------------------------------------------------------------

def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """log p(response | prompt) per sequence: the sum (or, with ``average``, the mean) over labelled positions
    of log softmax(logits[t])[labels[t+1]]. logits: (B, T, V); labels: (B, T), -100 where not scored."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = logps.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
    total = token.sum(-1)
    return total / mask.sum(-1).clamp_min(1) if average else total


def sequence_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], average: bool = False) -> torch.Tensor:
    """:func:`logprobs_from_logits` of a causal LM on a batch, from :func:`course_lib.sft.labelled_logprobs` (the
    vocabulary projection only at the labelled positions)."""
    token, keep = labelled_logprobs(model, batch)
    total = token.sum(-1)
    return total / keep.sum(-1).clamp_min(1) if average else total


# --- generation ----------------------------------------------------------------------------------------------

@torch.inference_mode()
def generate_replies(model: nn.Module, tokenizer, prompts: Sequence[str | list[dict]], max_new_tokens: int = 80,
                     do_sample: bool = False, temperature: float = 1.0, seed: int = 0, batch_size: int = 16,
                     progress: bool = True) -> list[str]:
    """The model's replies (greedy unless ``do_sample``), decoded without special tokens, to support tickets
    (under the house-style system prompt) or to whole chats (lists of messages)."""
    device = next(model.parameters()).device
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    replies = []
    try:
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not progress, leave=False):
            texts = [tokenizer.apply_chat_template(chat(p) if isinstance(p, str) else p, add_generation_prompt=True,
                                                   tokenize=False)
                     for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return [r.strip() for r in replies]


def style_report(replies: Sequence[str]) -> dict[str, float]:
    """Fraction of replies keeping each house-style rule, and all of them (``compliant``)."""
    checks = [house_style(r) for r in replies]
    report = {rule: sum(c[rule] for c in checks) / len(checks) for rule in checks[0]}
    report["compliant"] = sum(all(c.values()) for c in checks) / len(checks)
    return report


