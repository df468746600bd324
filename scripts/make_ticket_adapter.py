"""Train topic 3's ticket classifier adapter once and ship it in PEFT format inside course_lib's data.

Same recipe as solutions/03_lora_basics.ipynb: LoRA r=8, alpha 16 on q_proj and v_proj of the embedded
SmolLM2-135M-Instruct, 60 steps of 8 training tickets, AdamW lr 1e-3, seed 0, loss on the answer tokens only.
Topics 1 and 6 load it (``course_lib.data.ticket_adapter_path()``) instead of training again; the test accuracy
measured here is written next to it (``training.json``) and checked by tests/test_data.py.

    python scripts/make_ticket_adapter.py       -> course_lib/data/adapters/tickets-lora-r8/
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from course_lib import classify, lora
from course_lib.data import load_tickets, ticket_adapter_path
from course_lib.device import use_cores
from course_lib.models import DEFAULT_MODEL_ID, load_default_model

RECIPE = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "steps": 60, "batch_size": 8, "lr": 1e-3,
          "seed": 0}


def train_adapter(model, tokenizer, rows: list[dict]) -> tuple[dict, float]:
    """Inject LoRA into ``model`` by RECIPE and train it on ``rows``: (history, seconds)."""
    torch.manual_seed(RECIPE["seed"])
    lora.inject_lora(model, r=RECIPE["r"], alpha=RECIPE["alpha"], target_modules=tuple(RECIPE["target_modules"]))
    start = time.perf_counter()
    history = classify.train_classifier(model, tokenizer, rows, steps=RECIPE["steps"],
                                        batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], seed=RECIPE["seed"])
    return history, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    model, tokenizer = load_default_model(device="cpu")
    history, seconds = train_adapter(model, tokenizer, load_tickets("train"))
    test = load_tickets("test")
    accuracy = classify.evaluate(model, tokenizer, test)
    folder = lora.save_adapter(model, ticket_adapter_path(), base_model_name_or_path=DEFAULT_MODEL_ID)
    record = {"recipe": RECIPE, "train_seconds": round(seconds, 1), "final_loss": history["loss"][-1],
              "test_accuracy": accuracy, "test_size": len(test), "torch": torch.__version__}
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
