"""The course's named fine-tuning recipes: which LoRA adapters (rank, alpha, target modules) and how to train them
(one :class:`~course_lib.training.TrainConfig`). The scripts that build the shipped adapters and measurements, the
notebooks, and the frameworks' configs (PEFT's ``LoraConfig``, transformers' ``TrainingArguments``) all read a
recipe from here, so that a number changes in one place.

- :data:`TICKET_LORA`: topic 3's ticket classifier (r 8 on q/v, 60 steps of 8, lr 1e-3), the recipe of
  ``scripts/adapters/make_ticket_adapter.py``, the LoRA sweep's centre, the data-quality and QLoRA measurements;
- :data:`REPLY_LORA`: topic 5's reply SFT on the chosen replies (the same adapters, 100 steps),
  ``scripts/adapters/make_reply_adapter.py``;
- :data:`KNOWLEDGE_LORA`: topic 1's fine-tune on facts (r 16 on every linear layer), ``scripts/measure/measure_approaches.py``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .lora import ALL_LINEAR, inject_lora, save_adapter
from .models import DEFAULT_MODEL_ID
from .sft import train_sft
from .training import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """LoRA adapters of rank ``r`` and scaling ``alpha / r`` on ``target_modules``, trained by ``train``; its seed
    draws both the adapters' start and the batch order."""
    r: int
    alpha: float
    target_modules: tuple[str, ...]
    train: TrainConfig

    def replace(self, **changes) -> Recipe:
        """The recipe with some of its fields, or of its TrainConfig's (``steps``, ``lr``, ``seed``...), changed."""
        train = {k: changes.pop(k) for k in list(changes) if k in {f.name for f in dataclasses.fields(TrainConfig)}}
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **train), **changes)

    def inject(self, model: nn.Module) -> nn.Module:
        """Seed torch with the recipe's seed and inject its adapters into ``model`` (:func:`course_lib.lora.inject_lora`)."""
        torch.manual_seed(self.train.seed)
        return inject_lora(model, r=self.r, alpha=self.alpha, target_modules=self.target_modules)

    def fit(self, model: nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad_id: int,
            **options) -> tuple[dict, float]:
        """Inject the recipe's adapters into ``model`` and train them on (input_ids, labels) examples with
        :func:`course_lib.sft.train_sft` (``options`` as there): (history, seconds)."""
        self.inject(model)
        start = time.perf_counter()
        history = train_sft(model, examples, pad_id, self.train, **options)
        return history, time.perf_counter() - start

    def record(self) -> dict:
        """The recipe as the shipped measurements record it: the adapters, then steps, batch_size, lr, seed."""
        return {"r": self.r, "alpha": self.alpha, "target_modules": list(self.target_modules),
                "steps": self.train.steps, "batch_size": self.train.batch_size, "lr": self.train.lr,
                "seed": self.train.seed}

    def peft_config(self):
        """The same adapters as PEFT's ``LoraConfig`` (no dropout, a causal LM)."""
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.target_modules), lora_dropout=0.0,
                          task_type="CAUSAL_LM")

    def training_arguments(self, output_dir: str, **overrides):
        """The same training as transformers' ``TrainingArguments`` (its schedule, weight decay and clipping; a loss
        logged every step, nothing saved; on the CPU unless a GPU is present), ``overrides`` on top. transformers'
        warmup starts from 0, ours from lr / warmup_steps."""
        from transformers import TrainingArguments
        train = self.train
        schedule = "constant_with_warmup" if train.schedule == "constant" and train.warmup_steps else train.schedule
        options = dict(output_dir=output_dir, max_steps=train.steps,
                       per_device_train_batch_size=train.batch_size // train.accumulation,
                       gradient_accumulation_steps=train.accumulation, learning_rate=train.lr,
                       lr_scheduler_type=schedule, warmup_steps=train.warmup_steps,
                       weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm or 0.0, logging_steps=1,
                       report_to=[], save_strategy="no", use_cpu=not torch.cuda.is_available(), seed=train.seed)
        return TrainingArguments(**{**options, **overrides})


TICKET_LORA = Recipe(r=8, alpha=16, target_modules=("q_proj", "v_proj"),
                     train=TrainConfig(steps=60, batch_size=8, lr=1e-3, seed=0))
REPLY_LORA = TICKET_LORA.replace(steps=100)
KNOWLEDGE_LORA = Recipe(r=16, alpha=32, target_modules=ALL_LINEAR, train=TrainConfig(steps=60, batch_size=8, lr=1e-3))


def ship_adapter(model, folder: Path, record: dict) -> None:
    """Save ``model``'s adapters in PEFT format to ``folder``, readable by all, with ``record`` (the recipe, what
    training measured) as training.json: the last step of the scripts that make the shipped adapters."""
    folder = save_adapter(model, folder, base_model_name_or_path=DEFAULT_MODEL_ID)
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    for path in folder.iterdir():
        path.chmod(0o644)
    print(json.dumps(record, indent=1))
