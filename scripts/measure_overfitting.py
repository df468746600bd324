"""Topic 3: what training too long does, measured. The notebook's recipe (LoRA r=8, alpha 16 on q_proj and
v_proj of the embedded SmolLM2-135M-Instruct, batch 8, AdamW lr 1e-3, seed 0) run for 300 steps (about 2.3
epochs of the 1,050 training tickets) instead of 60, with the validation loss and accuracy on 90 validation
tickets every 25 steps and no early stopping, so the whole curve is seen; the best checkpoint is reported.

    python scripts/measure_overfitting.py      -> course_lib/data/measurements/overfitting_tickets.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from course_lib import classify, lora
from course_lib.data import load_tickets, write_measurement
from course_lib.device import use_cores
from course_lib.models import load_default_model

RECIPE = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "steps": 300, "batch_size": 8, "lr": 1e-3,
          "seed": 0, "eval_every": 25, "validation_tickets": 90}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    torch.manual_seed(RECIPE["seed"])
    model, tokenizer = load_default_model(device="cpu")
    lora.inject_lora(model, r=RECIPE["r"], alpha=RECIPE["alpha"], target_modules=tuple(RECIPE["target_modules"]))
    train = load_tickets("train")
    held = load_tickets("validation")[::225 // RECIPE["validation_tickets"]][:RECIPE["validation_tickets"]]
    examples = [classify.encode_example(tokenizer, r["text"], r["label"]) for r in held]
    start = time.perf_counter()
    history = classify.train_classifier(
        model, tokenizer, train, steps=RECIPE["steps"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
        seed=RECIPE["seed"], validation=examples, eval_every=RECIPE["eval_every"],
        metric=lambda: {"accuracy": classify.evaluate(model, tokenizer, held, progress=False)})
    record = {"recipe": RECIPE, "epochs": RECIPE["steps"] * RECIPE["batch_size"] / len(train),
              "train_loss": history["loss"], "eval_step": history["eval_step"], "eval_loss": history["eval_loss"],
              "eval_accuracy": history["eval_accuracy"], "best_step": history["best_step"],
              "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    write_measurement("overfitting_tickets.json", record)
    print(json.dumps({k: v for k, v in record.items() if k != "train_loss"}, indent=1))


if __name__ == "__main__":
    main()
