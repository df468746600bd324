"""Direct preference optimisation (Rafailov et al. 2023). RLHF's optimum pi*(y|x) ~ pi_ref(y|x) exp(r / beta)
(DPO eq. 4) turned around: the implicit reward is beta * log(pi / pi_ref), and the Bradley-Terry loss on it,
-log sigmoid(beta * [(log pi_c - log ref_c) - (log pi_r - log ref_r)]), trains the policy directly from
preference pairs (DPO eq. 7), with no reward model and no sampling. Also cDPO and IPO."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .align import chat
from .batching import IGNORE_INDEX, collate, length_batches
from .device import mixed_precision
from .lora import adapters_disabled
from .sft import sft_example
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


def shared_prefix_example(tokenizer, pair: dict) -> dict[str, list[int]]:
    """A pair as ONE sequence, prompt + chosen + rejected, so that the prompt the two replies share is computed
    once (prefix sharing, Wang & Hegde 2024): about a third fewer tokens per pair than the two sequences of
    :func:`preference_examples`, for the same log-probabilities (:func:`shared_prefix_logprobs`).

    ``position_ids`` restart at the prompt's end for the rejected reply, as if it followed the prompt directly;
    ``labels`` holds the reply tokens (-100 elsewhere); ``source`` is the position whose output predicts each token
    (the previous one, except for the rejected reply's first token, predicted from the prompt's last); ``segment``
    is 1 for chosen and 2 for rejected tokens, 0 for the prompt."""
    (ids_c, labels_c), (ids_r, labels_r) = (sft_example(tokenizer, chat(pair["prompt"], pair[key]))
                                            for key in ("chosen", "rejected"))
    first_reply_token = min(next(t for t, label in enumerate(labels) if label != IGNORE_INDEX)
                            for labels in (labels_c, labels_r))
    p = 0  # the prompt: the tokens both chats start with, up to the first reply token
    while p < first_reply_token and ids_c[p] == ids_r[p]:
        p += 1
    c, r = len(ids_c) - p, len(ids_r) - p
    return {"input_ids": ids_c + ids_r[p:], "labels": labels_c + labels_r[p:],
            "position_ids": [*range(p + c), *range(p, p + r)],
            "source": [0, *range(p + c - 1), p - 1, *range(p + c, p + c + r - 1)],
            "segment": [0] * p + [1] * c + [2] * r}


def shared_prefix_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad :func:`shared_prefix_example` rows into a batch with a 4-D ``attention_mask`` (B, 1, L, L), True
    where a token may attend: causal, except that the rejected reply's tokens skip the chosen reply's."""
    length = max(len(row["input_ids"]) for row in examples)
    pad_with = {"input_ids": pad_id, "labels": IGNORE_INDEX, "position_ids": 0, "source": 0, "segment": 0}
    batch = {key: torch.tensor([row[key] + [value] * (length - len(row[key])) for row in examples])
             for key, value in pad_with.items()}
    real = torch.arange(length) < torch.tensor([len(row["input_ids"]) for row in examples])[:, None]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    crossed = (batch["segment"][:, :, None] == 2) & (batch["segment"][:, None, :] == 1)  # rejected sees chosen
    batch["attention_mask"] = (causal & ~crossed & (real[:, None, :] | ~real[:, :, None]))[:, None]
    return batch  # (padding queries attend to anything before them: their outputs are never used)


def reply_lengths(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The number of chosen and of rejected reply tokens of each pair of a :func:`shared_prefix_batch`."""
    labelled = batch["labels"] != IGNORE_INDEX
    return (labelled & (batch["segment"] == 1)).sum(-1), (labelled & (batch["segment"] == 2)).sum(-1)


def shared_prefix_logprobs(model: nn.Module, batch: dict[str, torch.Tensor],
                           average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(chosen | prompt) and log p(rejected | prompt) (with ``average``, per reply token) of every pair of a
    :func:`shared_prefix_batch`: one forward pass over prompt + chosen + rejected, the vocabulary projection only
    at the positions that predict a reply token (as in :func:`course_lib.sft.labelled_logprobs`)."""
    implementation = model.config._attn_implementation
    mask = batch["attention_mask"]
    if implementation == "eager":  # eager attention adds the mask to its scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    elif implementation != "sdpa":
        raise ValueError(f"prefix sharing needs a custom attention mask, which {implementation!r} attention does "
                         "not take: load the model with attn_implementation='sdpa' or 'eager'")
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=mask,
                                 position_ids=batch["position_ids"])[0]
    rows, cols = (batch["labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, batch["source"][rows, cols]]).float()
    token = torch.log_softmax(logits, -1).gather(-1, batch["labels"][rows, cols, None]).squeeze(-1)
    segment = batch["segment"][rows, cols]
    sums = [torch.zeros(len(batch["input_ids"]), device=token.device).index_add(0, rows[segment == s],
                                                                                 token[segment == s])
            for s in (1, 2)]
    if average:
        sums = [total / n.clamp_min(1) for total, n in zip(sums, reply_lengths(batch))]
    return sums[0], sums[1]


def pair_logprobs(model: nn.Module, tokenizer, pairs: Sequence[dict], batch_size: int = 8,
                  progress: bool = True, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(chosen | prompt) and log p(rejected | prompt) under ``model`` for every pair (with ``average``,
    per reply token), by :func:`shared_prefix_logprobs`. Batches of ``batch_size`` pairs are cut from all the
    pairs sorted by length, so little compute goes to padding; the results keep the pairs' order."""
    return examples_logprobs(model, [shared_prefix_example(tokenizer, p) for p in pairs], tokenizer.pad_token_id,
                             batch_size, progress, average)


@torch.inference_mode()
def examples_logprobs(model: nn.Module, examples: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int = 8,
                      progress: bool = True, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_logprobs` of pairs already made into :func:`shared_prefix_example` rows."""
    device = next(model.parameters()).device
    chosen, rejected = torch.empty(len(examples)), torch.empty(len(examples))
    for rows in tqdm(length_batches([len(e["input_ids"]) for e in examples], batch_size), desc="log-probs",
                     disable=not progress, leave=False):
        batch = shared_prefix_batch([examples[i] for i in rows], pad_id)
        c, r = shared_prefix_logprobs(model, {k: v.to(device) for k, v in batch.items()}, average)
        chosen[rows], rejected[rows] = c.float().cpu(), r.float().cpu()
    return chosen, rejected


def train_dpo(model: nn.Module, tokenizer, pairs: Sequence[dict],
              config: TrainConfig = TrainConfig(steps=20, batch_size=4, lr=5e-4), *, beta: float = 0.1,
              sft_weight: float = 0.0, metric: Callable[[], dict[str, float]] | None = None, progress: bool = True,
              accelerator=None, **loss_kwargs) -> dict[str, list[float]]:
    """Preference-tune the trainable parameters of ``model`` (LoRA adapters on a frozen base) with :func:`dpo_loss`
    and :func:`course_lib.training.train` under ``config`` (batch size, learning rate, seed, accumulation, schedule,
    precision; with ``metric``, e.g. a held-out reward accuracy, every ``config.eval_every`` steps, the best
    checkpoint and early stopping). The reference is the frozen base: the model with its adapters switched off
    (:func:`course_lib.lora.adapters_disabled`), whatever earlier training did to them, so a second call goes on
    from where the first stopped against the same reference. Its log-probabilities on the pairs to be seen are
    computed once, before training (TRL's ``precompute_ref_log_probs``). With ``loss_type="ipo"`` the
    log-probabilities are per-token means, as TRL computes them for IPO (its 1/(2 beta) target is then a per-token
    margin). ``sft_weight`` > 0 adds that multiple of the mean negative log-likelihood of the chosen replies' tokens
    (TRL's ``loss_type=["sigmoid", "sft"]``, the RPO recipe of Pang et al. 2024): it keeps DPO from lowering the
    chosen replies' likelihood along with the rejected ones'. Each pair is one prefix-shared sequence
    (:func:`shared_prefix_example`), for policy and reference alike. The config's ``precision`` applies to the
    reference log-probabilities too, so that before the first update the policy's equal them.

    Returns per-step ``loss``, ``margin``, ``accuracy``, ``chosen_reward``, ``rejected_reward``, ``seconds``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: inject LoRA adapters first")
    device = params[0].device
    average = loss_kwargs.get("loss_type") == "ipo"
    batches = [[pairs[i] for i in idx] for idx in config.micro_batches(len(pairs))]
    seen = {id(p): p for b in batches for p in b}
    model.eval()
    examples = {key: shared_prefix_example(tokenizer, pair) for key, pair in seen.items()}
    with adapters_disabled(model), mixed_precision(device, config.precision):
        ref_c, ref_r = examples_logprobs(model, list(examples.values()), tokenizer.pad_token_id, progress=progress,
                                         average=average)
    ref = {key: (c, r) for key, c, r in zip(seen, ref_c, ref_r)}

    def step_loss(rows: list[dict]) -> tuple[torch.Tensor, dict]:
        batch = shared_prefix_batch([examples[id(p)] for p in rows], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        summed = shared_prefix_logprobs(model, batch)
        tokens = reply_lengths(batch)
        chosen, rejected = (s / n.clamp_min(1) for s, n in zip(summed, tokens)) if average else summed
        rc = torch.stack([ref[id(p)][0] for p in rows]).to(device)
        rr = torch.stack([ref[id(p)][1] for p in rows]).to(device)
        out = dpo_loss(chosen, rejected, rc, rr, beta=beta, **loss_kwargs)
        loss = out.loss
        if sft_weight:
            loss = loss - sft_weight * summed[0].sum() / tokens[0].sum()
        return loss, {"margin": out.margins.mean().item(), "accuracy": out.accuracy,
                      "chosen_reward": out.chosen_rewards.mean().item(),
                      "rejected_reward": out.rejected_rewards.mean().item()}

    return train(model, batches, step_loss, config, metric, progress, desc="DPO", accelerator=accelerator)
