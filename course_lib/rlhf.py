"""RLHF in small: the KL-regularised objective E_pi[r] - beta KL(pi || pi_ref) on a finite set of replies, its
closed-form optimum pi* ~ pi_ref exp(r / beta) (DPO eq. 4), REINFORCE with a KL penalty that converges to it,
and the KL cost of best-of-n sampling."""
from __future__ import annotations

import math

import torch


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
    """log n - (n - 1) / n nats: the commonly quoted KL(best-of-n || base) (Stiennon et al. 2020). It is an upper
    bound, not the exact value: for a finite set of outcomes the true KL is smaller, reaching the formula only as
    every outcome's probability goes to 0 (Beirami et al. 2024, "Theoretical guarantees on the best-of-n
    alignment policy")."""
    return math.log(n) - (n - 1) / n
