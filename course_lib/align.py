"""Alignment: SFT on assistant turns, Bradley-Terry reward models, DPO, and the KL-regularised RLHF objective.

- SFT trains next-token prediction on the assistant's tokens only (every other label is -100).
- A reward model scores (prompt, reply); trained on preference pairs with the Bradley-Terry loss
  -log sigmoid(r_chosen - r_rejected) (Ouyang et al. 2022, InstructGPT, eq. 1).
- RLHF maximises E[r(x, y)] - beta * KL(pi || pi_ref); its optimum is pi*(y|x) ~ pi_ref(y|x) exp(r/beta)
  (Rafailov et al. 2023, DPO, eq. 4).
- DPO turns that optimum around: the implicit reward is beta * log(pi/pi_ref), and the Bradley-Terry loss on
  it, -log sigmoid(beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]), trains the policy directly
  from preference pairs (DPO eq. 7), with no reward model and no sampling.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .classify import IGNORE_INDEX, batch_indices
from .training import TrainConfig, train
from .classify import collate as sft_batch  # right-pad (input_ids, labels) pairs; padding: label -100, mask 0

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
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    return messages + ([{"role": "assistant", "content": reply}] if reply is not None else [])


# --- SFT: labels on the assistant turns only -----------------------------------------------------------------

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
    """:func:`logprobs_from_logits` of a causal LM on a batch, computing the vocabulary projection only at the
    labelled positions (the replies are a fraction of each sequence, the projection a fifth of the model)."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token = torch.zeros(targets.shape, dtype=logits.dtype, device=logits.device)
    token[keep] = torch.log_softmax(logits, -1).gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    total = token.sum(-1)
    return total / keep.sum(-1).clamp_min(1) if average else total


# --- reward model --------------------------------------------------------------------------------------------

def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected): the Bradley-Terry negative log-likelihood that the
    chosen reply is preferred (InstructGPT eq. 1). Uses logsigmoid, stable for any margin."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


class RewardModel(nn.Module):
    """A scalar reward head on a small transformer encoder: r(prompt, reply) = w . meanpool(encoder(...)) + b.

    The encoder (all-MiniLM-L6-v2, 22M parameters) reads the ticket and the reply as a sentence pair; the head
    is one linear layer. Only the head and the encoder's last ``train_layers`` layers are trained.
    """

    def __init__(self, encoder: nn.Module, tokenizer, train_layers: int = 1, max_length: int = 160):
        super().__init__()
        self.encoder, self.tokenizer, self.max_length = encoder, tokenizer, max_length
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.02)
        encoder.requires_grad_(False)
        if train_layers:
            encoder.encoder.layer[-train_layers:].requires_grad_(True)

    def forward(self, prompts: Sequence[str], replies: Sequence[str]) -> torch.Tensor:
        device = self.head.weight.device
        enc = self.tokenizer(list(prompts), list(replies), truncation="only_first", max_length=self.max_length,
                             padding=True, return_tensors="pt").to(device)
        hidden = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return self.head(pooled).squeeze(-1)

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Rewards of many (prompt, reply) pairs, in batches, without gradients."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(prompts[i:i + batch_size], replies[i:i + batch_size]).float().cpu()
                         for i in range(0, len(prompts), batch_size)])
        self.train(was_training)
        return out


def load_reward_model(seed: int = 0, train_layers: int = 1) -> RewardModel:
    """A fresh reward model on the embedded all-MiniLM-L6-v2 encoder (head initialised with ``seed``)."""
    from .models import load_minilm

    encoder, tokenizer = load_minilm()
    torch.manual_seed(seed)
    return RewardModel(encoder, tokenizer, train_layers=train_layers)


def train_reward_model(model: RewardModel, pairs: Sequence[dict], steps: int = 60, batch_size: int = 16,
                       lr: float = 1e-3, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Train on preference pairs (dicts with prompt/chosen/rejected) with the Bradley-Terry loss and AdamW
(:func:`course_lib.training.train`). Returns per-step ``loss`` and ``accuracy`` (fraction of pairs in the batch
ranked correctly)."""
    def step_loss(idx: list[int]) -> tuple[torch.Tensor, dict]:
        rows = [pairs[i] for i in idx]
        prompts = [r["prompt"] for r in rows]
        rewards = model(prompts + prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
        chosen, rejected = rewards.chunk(2)
        return bradley_terry_loss(chosen, rejected), {"accuracy": (chosen > rejected).float().mean().item()}

    return train(model, batch_indices(len(pairs), steps, batch_size, seed), step_loss, TrainConfig(steps=steps, lr=lr),
                 progress=progress, desc="reward model")


def pairwise_accuracy(model: RewardModel, pairs: Sequence[dict]) -> float:
    """Fraction of pairs whose chosen reply gets the higher reward."""
    prompts = [r["prompt"] for r in pairs]
    chosen = model.score(prompts, [r["chosen"] for r in pairs])
    rejected = model.score(prompts, [r["rejected"] for r in pairs])
    return (chosen > rejected).float().mean().item()


# --- DPO -----------------------------------------------------------------------------------------------------

@dataclass
class DPOOutput:
    """The DPO loss (mean over pairs) and, per pair, the implicit rewards beta * log(pi / pi_ref)."""
    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        """Fraction of pairs whose chosen reply has the higher implicit reward (ties count as wrong)."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean().item()


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> DPOOutput:
    """The DPO loss from per-sequence log-probabilities of the chosen and rejected replies.

    h = (log pi_c - log ref_c) - (log pi_r - log ref_r)
    - ``sigmoid`` (DPO, Rafailov et al. 2023, eq. 7): -log sigmoid(beta h); with ``label_smoothing`` eps the
      conservative DPO of Mitchell (2023): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), which
      assumes a fraction eps of the preference labels are flipped.
    - ``ipo`` (Azar et al. 2023, eq. 17): (h - 1/(2 beta))^2, which stops pushing once the margin reaches
      1/(2 beta) instead of driving it to infinity. (TRL feeds it per-token mean log-probs.)
    The implicit rewards are beta * (log pi - log ref), detached: they are reported, not optimised.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach()  # the reference is frozen
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach()
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose 'sigmoid' or 'ipo'")
    return DPOOutput(losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def preference_batch(tokenizer, pairs: Sequence[dict]) -> dict[str, torch.Tensor]:
    """One batch holding the chosen chats of ``pairs`` followed by their rejected chats (TRL's layout), with
    labels on the reply tokens only."""
    examples = [sft_example(tokenizer, chat(p["prompt"], p["chosen"])) for p in pairs]
    examples += [sft_example(tokenizer, chat(p["prompt"], p["rejected"])) for p in pairs]
    return sft_batch(examples, tokenizer.pad_token_id)


@torch.inference_mode()
def pair_logprobs(model: nn.Module, tokenizer, pairs: Sequence[dict], batch_size: int = 8,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(chosen | prompt) and log p(rejected | prompt) under ``model`` for every pair."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="log-probs", disable=not progress, leave=False):
        batch = preference_batch(tokenizer, pairs[start:start + batch_size])
        c, r = sequence_logprobs(model, {k: v.to(device) for k, v in batch.items()}).float().cpu().chunk(2)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def train_dpo(model: nn.Module, tokenizer, pairs: Sequence[dict], steps: int = 20, batch_size: int = 4,
              lr: float = 5e-4, beta: float = 0.1, sft_weight: float = 0.0, seed: int = 0, progress: bool = True,
              **loss_kwargs) -> dict[str, list[float]]:
    """Preference-tune the trainable parameters of ``model`` (LoRA adapters on a frozen base) with
    :func:`dpo_loss` and AdamW. The reference is the model as it is now: its log-probabilities on the pairs
    to be seen are computed once before training (TRL's ``precompute_ref_log_probs``), which is exact because
    freshly injected LoRA adapters (B = 0) leave the model unchanged. ``sft_weight`` > 0 adds that multiple of
    the mean negative log-likelihood of the chosen replies' tokens (TRL's ``loss_type=["sigmoid", "sft"]``, the
    RPO recipe of Pang et al. 2024): it keeps DPO from lowering the chosen replies' likelihood along with the
    rejected ones'.

    Returns per-step ``loss``, ``margin``, ``accuracy``, ``chosen_reward``, ``rejected_reward``, ``seconds``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: inject LoRA adapters first")
    device = params[0].device
    batches = [[pairs[i] for i in idx] for idx in batch_indices(len(pairs), steps, batch_size, seed)]
    seen = {id(p): p for b in batches for p in b}
    model.eval()
    ref_c, ref_r = pair_logprobs(model, tokenizer, list(seen.values()), progress=progress)
    ref = {key: (c, r) for key, c, r in zip(seen, ref_c, ref_r)}

    def step_loss(rows: list[dict]) -> tuple[torch.Tensor, dict]:
        batch = {k: v.to(device) for k, v in preference_batch(tokenizer, rows).items()}
        chosen, rejected = sequence_logprobs(model, batch).chunk(2)
        rc = torch.stack([ref[id(p)][0] for p in rows]).to(device)
        rr = torch.stack([ref[id(p)][1] for p in rows]).to(device)
        out = dpo_loss(chosen, rejected, rc, rr, beta=beta, **loss_kwargs)
        loss = out.loss
        if sft_weight:
            chosen_tokens = (batch["labels"][:len(rows), 1:] != IGNORE_INDEX).sum()
            loss = loss - sft_weight * chosen.sum() / chosen_tokens
        return loss, {"margin": out.margins.mean().item(), "accuracy": out.accuracy,
                      "chosen_reward": out.chosen_rewards.mean().item(),
                      "rejected_reward": out.rejected_rewards.mean().item()}

    return train(model, batches, step_loss, TrainConfig(steps=steps, lr=lr), progress=progress, desc="DPO")


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


# --- RLHF in small: the KL-regularised objective -------------------------------------------------------------

def kl_regularized_optimum(ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """The policy maximising E_pi[r] - beta KL(pi || pi_ref) over a finite set of replies (last dimension):
    pi* = softmax(log pi_ref + r / beta) (DPO eq. 4). beta -> 0 puts all mass on the best-rewarded reply;
    beta -> infinity returns pi_ref. ``ref_logps`` need not be normalised over the set."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return torch.softmax(torch.log_softmax(ref_logps, -1) + rewards / beta, dim=-1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum p log(p/q) over the last dimension (0 log 0 = 0)."""
    return torch.where(p > 0, p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log()), 0.0).sum(-1)


def rlhf_objective(policy: torch.Tensor, ref: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """E_pi[r] - beta KL(pi || pi_ref), per prompt (distributions over the last dimension)."""
    return (policy * rewards).sum(-1) - beta * kl_divergence(policy, ref)


def policy_gradient(ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, steps: int = 500,
                    samples: int = 16, lr: float = 0.1, seed: int = 0) -> dict[str, torch.Tensor | list[float]]:
    """REINFORCE with a KL penalty on a categorical policy over a finite set of replies per prompt.

    The policy starts at pi_ref (logits = normalised ``ref_logps``). Each step samples ``samples`` replies per
    prompt and follows the score-function gradient of the KL-shaped reward r - beta (log pi - log pi_ref)
    with a mean baseline, as PPO-style RLHF does per sequence. Returns the final ``policy`` and, per step,
    the expected ``reward`` and ``kl``.
    """
    generator = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(ref_logps.float(), -1)
    logits = ref.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    history: dict[str, list[float]] = {"reward": [], "kl": []}
    for _ in range(steps):
        logp = torch.log_softmax(logits, -1)
        idx = torch.multinomial(logp.exp().detach(), samples, replacement=True, generator=generator)
        sample_logp = logp.gather(-1, idx)
        shaped = rewards.gather(-1, idx) - beta * (sample_logp.detach() - ref.gather(-1, idx))
        advantage = shaped - shaped.mean(-1, keepdim=True)
        loss = -(advantage * sample_logp).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pi = torch.softmax(logits, -1)
            history["reward"].append((pi * rewards).sum(-1).mean().item())
            history["kl"].append(kl_divergence(pi, ref.exp()).mean().item())
    return {"policy": torch.softmax(logits.detach(), -1), **history}


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon et al. 2020; exact for distinct samples)."""
    return math.log(n) - (n - 1) / n
