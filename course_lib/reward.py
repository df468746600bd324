"""Reward models: a scalar score r(prompt, reply) trained on preference pairs with the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected) (Ouyang et al. 2022, InstructGPT, eq. 1): the first stage of RLHF."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .training import TrainConfig, train


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


def train_reward_model(model: RewardModel, pairs: Sequence[dict],
                       config: TrainConfig = TrainConfig(steps=60, batch_size=16), *,
                       metric: Callable[[], dict[str, float]] | None = None, progress: bool = True,
                       accelerator=None) -> dict[str, list[float]]:
    """Train on preference pairs (dicts with prompt/chosen/rejected) with the Bradley-Terry loss and
    :func:`course_lib.training.train` under ``config`` (with ``metric``, e.g. held-out :func:`pairwise_accuracy`,
    every ``config.eval_every`` steps, the best checkpoint and early stopping). Returns per-step ``loss`` and
    ``accuracy`` (fraction of pairs in the batch ranked correctly)."""
    def step_loss(idx: list[int]) -> tuple[torch.Tensor, dict]:
        rows = [pairs[i] for i in idx]
        prompts = [r["prompt"] for r in rows]
        rewards = model(prompts + prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
        chosen, rejected = rewards.chunk(2)
        return bradley_terry_loss(chosen, rejected), {"accuracy": (chosen > rejected).float().mean().item()}

    return train(model, config.micro_batches(len(pairs)), step_loss, config, metric, progress, desc="reward model",
                 accelerator=accelerator)


def pairwise_accuracy(model: RewardModel, pairs: Sequence[dict]) -> float:
    """Fraction of pairs whose chosen reply gets the higher reward."""
    prompts = [r["prompt"] for r in pairs]
    chosen = model.score(prompts, [r["chosen"] for r in pairs])
    rejected = model.score(prompts, [r["rejected"] for r in pairs])
    return (chosen > rejected).float().mean().item()
