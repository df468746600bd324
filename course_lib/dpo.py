"""Direct preference optimisation (Rafailov et al. 2023). RLHF's optimum pi*(y|x) ~ pi_ref(y|x) exp(r / beta)
(DPO eq. 4) turned around: the implicit reward is beta * log(pi / pi_ref), and the Bradley-Terry loss on it,
-log sigmoid(beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]), trains the policy directly from
preference pairs (DPO eq. 7), with no reward model and no sampling. Also cDPO and IPO."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .align import chat, sequence_logprobs
from .lora import adapters_disabled
from .models import mixed_precision
from .sft import IGNORE_INDEX, batch_indices, collate, length_batches, sft_example
from .training import TrainConfig, train


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
      1/(2 beta) instead of driving it to infinity. TRL feeds it per-token mean log-probs (as
      :func:`train_dpo` does for IPO), so the target is a per-token margin.
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


def preference_examples(tokenizer, pairs: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of the chosen chats of ``pairs`` followed by their rejected chats (TRL's layout), with
    labels on the reply tokens only."""
    return ([sft_example(tokenizer, chat(p["prompt"], p["chosen"])) for p in pairs]
            + [sft_example(tokenizer, chat(p["prompt"], p["rejected"])) for p in pairs])


def preference_batch(tokenizer, pairs: Sequence[dict]) -> dict[str, torch.Tensor]:
    """:func:`preference_examples` as one padded batch."""
    return collate(preference_examples(tokenizer, pairs), tokenizer.pad_token_id)


@torch.inference_mode()
def pair_logprobs(model: nn.Module, tokenizer, pairs: Sequence[dict], batch_size: int = 8,
                  progress: bool = True, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(chosen | prompt) and log p(rejected | prompt) under ``model`` for every pair (with ``average``,
    per reply token). Batches of ``2 * batch_size`` replies are cut from all the replies sorted by length, so
    little compute goes to padding; the results keep the pairs' order."""
    device = next(model.parameters()).device
    examples = preference_examples(tokenizer, pairs)
    out = torch.empty(len(examples))
    for rows in tqdm(length_batches([len(ids) for ids, _ in examples], 2 * batch_size), desc="log-probs",
                     disable=not progress, leave=False):
        batch = collate([examples[i] for i in rows], tokenizer.pad_token_id)
        out[rows] = sequence_logprobs(model, {k: v.to(device) for k, v in batch.items()}, average).float().cpu()
    return out[:len(pairs)], out[len(pairs):]


def train_dpo(model: nn.Module, tokenizer, pairs: Sequence[dict], steps: int = 20, batch_size: int = 4,
              lr: float = 5e-4, beta: float = 0.1, sft_weight: float = 0.0, seed: int = 0, progress: bool = True,
              precision: str = "fp32", **loss_kwargs) -> dict[str, list[float]]:
    """Preference-tune the trainable parameters of ``model`` (LoRA adapters on a frozen base) with
    :func:`dpo_loss` and AdamW. The reference is the frozen base: the model with its adapters switched off
    (:func:`course_lib.lora.adapters_disabled`), whatever earlier training did to them, so a second call goes
    on from where the first stopped against the same reference. Its log-probabilities on the pairs to be seen
    are computed once, before training (TRL's ``precompute_ref_log_probs``). With ``loss_type="ipo"`` the
    log-probabilities are per-token means, as TRL computes them for IPO (its 1/(2 beta) target is then a
    per-token margin). ``sft_weight`` > 0 adds that multiple of the mean negative log-likelihood of the chosen
    replies' tokens (TRL's ``loss_type=["sigmoid", "sft"]``, the RPO recipe of Pang et al. 2024): it keeps DPO
    from lowering the chosen replies' likelihood along with the rejected ones'.
    ``precision`` (as in :class:`~course_lib.training.TrainConfig`) applies to the reference log-probabilities
    too, so that before the first update the policy's equal them.

    Returns per-step ``loss``, ``margin``, ``accuracy``, ``chosen_reward``, ``rejected_reward``, ``seconds``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: inject LoRA adapters first")
    device = params[0].device
    average = loss_kwargs.get("loss_type") == "ipo"
    batches = [[pairs[i] for i in idx] for idx in batch_indices(len(pairs), steps, batch_size, seed)]
    seen = {id(p): p for b in batches for p in b}
    model.eval()
    with adapters_disabled(model), mixed_precision(device, precision):
        ref_c, ref_r = pair_logprobs(model, tokenizer, list(seen.values()), progress=progress, average=average)
    ref = {key: (c, r) for key, c, r in zip(seen, ref_c, ref_r)}

    def step_loss(rows: list[dict]) -> tuple[torch.Tensor, dict]:
        batch = {k: v.to(device) for k, v in preference_batch(tokenizer, rows).items()}
        summed = sequence_logprobs(model, batch)
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
        chosen, rejected = (summed / tokens.clamp_min(1) if average else summed).chunk(2)
        rc = torch.stack([ref[id(p)][0] for p in rows]).to(device)
        rr = torch.stack([ref[id(p)][1] for p in rows]).to(device)
        out = dpo_loss(chosen, rejected, rc, rr, beta=beta, **loss_kwargs)
        loss = out.loss
        if sft_weight:
            loss = loss - sft_weight * summed[:len(rows)].sum() / tokens[:len(rows)].sum()
        return loss, {"margin": out.margins.mean().item(), "accuracy": out.accuracy,
                      "chosen_reward": out.chosen_rewards.mean().item(),
                      "rejected_reward": out.rejected_rewards.mean().item()}

    return train(model, batches, step_loss, TrainConfig(steps=steps, lr=lr, precision=precision), progress=progress,
                 desc="DPO")
