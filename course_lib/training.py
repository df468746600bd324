"""The course's one training loop: what every real fine-tune needs, in one readable function (as nanoGPT's).

- **Gradient accumulation**: each optimizer step averages the gradients of ``accumulation`` micro-batches
  (each micro-batch's loss is divided by ``accumulation``), so a small machine trains with a large batch.
- **Learning-rate schedule**: linear warmup from lr / warmup_steps to lr over ``warmup_steps``, then constant,
  linear decay or cosine decay to 0 at the last step (Loshchilov & Hutter, 2017, SGDR, without restarts).
- **Gradient clipping** of the global norm (``max_grad_norm``).
- **Several processes** (CPUs or GPUs, one machine or many, started by ``torchrun`` or ``accelerate launch``):
  with an ``accelerate.Accelerator``, each process computes its share of every micro-batch (every N-th item) and
  the gradients are averaged over the processes before the step (what DistributedDataParallel does), so the
  update equals one process's on the whole batch.
- **Mixed precision** (``precision="bf16"``, or ``"auto"`` where the hardware multiplies bf16 matrices): each
  micro-batch's forward pass runs under ``torch.autocast`` (:func:`course_lib.device.mixed_precision`), the
  weights, gradients and optimizer state stay fp32.
- **Validation** every ``eval_every`` optimizer steps (and after the last): ``evaluate()`` returns metrics, one
  of which (``monitor``) picks the **best checkpoint**: the trainable parameters (e.g. LoRA adapters) are kept
  in memory whenever it improves and restored at the end. **Early stopping** after ``patience`` evaluations
  without improvement.

One :class:`TrainConfig` (as transformers' ``TrainingArguments``) says how: every loop of the course (SFT, the
classifier, the reward model, DPO) takes it and passes it here. The caller gives the loss of one micro-batch
(``step_loss``) and the micro-batches (:meth:`TrainConfig.micro_batches` draws them); everything else is here, so
all of them train the same way.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import batch_indices
from .device import PRECISIONS, mixed_precision, resolve_precision

SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train; ``steps`` counts optimizer steps, each of ``batch_size`` examples in ``accumulation``
    micro-batches; ``seed`` draws the batch order."""
    steps: int
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    accumulation: int = 1
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    eval_every: int = 0          # 0: evaluate only if an evaluate function is given, after the last step
    monitor: str = "loss"        # the metric of evaluate() that picks the best checkpoint
    mode: str = "min"            # "min" (a loss) or "max" (an accuracy)
    patience: int = 0            # evaluations without improvement before stopping early; 0: never
    precision: str = "fp32"      # "bf16" mixed precision, or "auto": bf16 where the hardware has it

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.accumulation) < 1 or min(self.warmup_steps, self.eval_every,
                                                                          self.patience) < 0:
            raise ValueError(f"steps, batch_size and accumulation must be >= 1, warmup_steps, eval_every and patience "
                             f">= 0: {self}")
        if self.batch_size % self.accumulation:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of accumulation {self.accumulation}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def micro_batches(self, count: int) -> list[list[int]]:
        """Indices of the ``steps x accumulation`` micro-batches into ``count`` examples, in training order (one
        seeded shuffle read cyclically, :func:`course_lib.batching.batch_indices`)."""
        return batch_indices(count, self.steps * self.accumulation, self.batch_size // self.accumulation, self.seed)


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based): warmup, then the schedule."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps)
    progress = (step - config.warmup_steps) / span
    if config.schedule == "linear":
        return config.lr * (1 - progress)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(model: nn.Module, micro_batches: Sequence, step_loss: Callable[[object], tuple[torch.Tensor, dict]],
          config: TrainConfig, evaluate: Callable[[], dict[str, float]] | None = None,
          progress: bool = True, desc: str = "training", accelerator=None) -> dict:
    """Train the trainable parameters of ``model`` with AdamW on ``micro_batches`` (at least ``config.steps *
    config.accumulation`` of them, used in order). ``step_loss(batch)`` returns the batch's loss and a dict of
    numbers to log. Returns the history: per optimizer step ``loss``, ``lr``, ``seconds`` and each logged number
    (averaged over the step's micro-batches); per evaluation ``eval_step`` and each metric as ``eval_<name>``;
    ``best_step`` (the step whose weights the model ends with) and ``stopped_early``. With several processes
    (``accelerator``), every process passes the same micro-batches (sequences) and computes on its share, every
    N-th item of each; gradients and the logged loss are averaged over the processes."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: inject LoRA adapters (or unfreeze) first")
    needed = config.steps * config.accumulation
    if len(micro_batches) < needed:
        raise ValueError(f"{config.steps} steps of {config.accumulation} micro-batches need {needed} batches, "
                         f"got {len(micro_batches)}")
    if accelerator is not None and accelerator.num_processes > 1:
        rank, world = accelerator.process_index, accelerator.num_processes
        uneven = [len(micro) for micro in micro_batches[:needed] if len(micro) % world]
        if uneven:
            raise ValueError(f"micro-batches of {uneven[0]} items do not split over {world} processes")
        micro_batches = [micro[rank::world] for micro in micro_batches[:needed]]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    history: dict = {"loss": [], "lr": [], "seconds": [], "eval_step": [], "best_step": None, "stopped_early": False}
    best, best_state, waited = None, None, 0
    sign = 1 if config.mode == "min" else -1
    device = params[0].device
    precision = resolve_precision(device, config.precision)  # "auto" becomes fp32 or bf16 once, here
    bar = tqdm(range(config.steps), desc=desc, disable=not progress)
    start = time.perf_counter()
    model.train()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        logged: dict[str, float] = {}
        total = 0.0
        for micro in micro_batches[step * config.accumulation:(step + 1) * config.accumulation]:
            with mixed_precision(device, precision):
                loss, numbers = step_loss(micro)
            (loss / config.accumulation).backward()
            total += loss.item() / config.accumulation
            for key, value in numbers.items():
                logged[key] = logged.get(key, 0.0) + float(value) / config.accumulation
        if accelerator is not None and accelerator.num_processes > 1:
            for p in params:
                p.grad = accelerator.reduce(p.grad, reduction="mean")
            total = accelerator.reduce(torch.tensor([total], device=device), reduction="mean").item()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for key, value in (("loss", total), ("lr", optimizer.param_groups[0]["lr"]),
                           ("seconds", time.perf_counter() - start), *logged.items()):
            history.setdefault(key, []).append(value)
        bar.set_postfix(loss=f"{total:.3f}")
        last = step == config.steps - 1
        if evaluate is not None and ((config.eval_every and (step + 1) % config.eval_every == 0) or last):
            model.eval()
            with torch.no_grad(), mixed_precision(device, precision):
                metrics = evaluate()
            model.train()
            history["eval_step"].append(step + 1)
            for key, value in metrics.items():
                history.setdefault(f"eval_{key}", []).append(float(value))
            score = sign * float(metrics[config.monitor])
            if best is None or score < best:
                best, waited = score, 0
                best_state = [p.detach().clone() for p in params]
                history["best_step"] = step + 1
            else:
                waited += 1
                if config.patience and waited >= config.patience:
                    history["stopped_early"] = True
                    break
    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(params, best_state):
                p.copy_(saved)
    model.eval()
    return history
