"""Topic 3, the library way at the notebook's full budget: the ticket classifier trained with course_lib's LoRA
and loop, and with PEFT (`LoraConfig` + `get_peft_model`) and transformers' `Trainer`, each its own way.

Same recipe in both (r=8, alpha 16 on q_proj/v_proj of the embedded SmolLM2-135M-Instruct, 60 steps of 8
tickets, AdamW at a constant 1e-3, no clipping, no weight decay, seed 0), but each run draws its own adapter
initialisation and the Trainer shuffles the tickets its own way, so the two runs are two samples of the same
recipe, not one run twice (the notebook shows that with the same start and batches the steps are identical).
Measured: test accuracy (225 tickets), final training loss (mean of the last 10 steps), seconds per step.

    python scripts/measure/lora_peft_vs_ours.py      -> course_lib/data/measurements/lora_peft_vs_ours.json (~8 min here)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from course_lib import classify, sft
from course_lib.data import load_tickets, write_measurement
from course_lib.device import use_cores
from course_lib.models import load_default_model
from course_lib.recipes import TICKET_LORA


def run_ours(train: list[dict], test: list[dict]) -> dict:
    model, tokenizer = load_default_model(device="cpu")
    history, seconds = TICKET_LORA.fit(model, classify.examples(tokenizer, train), tokenizer.pad_token_id)
    return {"test_accuracy": classify.evaluate(model, tokenizer, test, batch_size=32),
            "final_loss": sum(history["loss"][-10:]) / 10, "seconds_per_step": seconds / TICKET_LORA.train.steps}


def run_peft_trainer(train: list[dict], test: list[dict]) -> dict:
    from peft import get_peft_model
    from transformers import Trainer

    torch.manual_seed(TICKET_LORA.train.seed)
    base, tokenizer = load_default_model(device="cpu")
    model = get_peft_model(base, TICKET_LORA.peft_config())
    examples = classify.examples(tokenizer, train)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=model, args=TICKET_LORA.training_arguments(tmp), train_dataset=sft.as_dataset(examples),
                          data_collator=sft.data_collator(tokenizer.pad_token_id))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"test_accuracy": classify.evaluate(model, tokenizer, test, batch_size=32),
            "final_loss": sum(losses[-10:]) / 10, "seconds_per_step": seconds / TICKET_LORA.train.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    train, test = load_tickets("train"), load_tickets("test")
    record = {"recipe": TICKET_LORA.record(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "torch": torch.__version__, "ours": run_ours(train, test), "peft_trainer": run_peft_trainer(train, test)}
    write_measurement("lora_peft_vs_ours.json", record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
