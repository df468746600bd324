"""Topic 3: what training too long does, measured. The notebook's recipe (``course_lib.recipes.TICKET_LORA``: LoRA
r=8, alpha 16 on q_proj and v_proj of the embedded SmolLM2-135M-Instruct, batch 8, AdamW lr 1e-3, seed 0) run for 300 steps (about 2.3
epochs of the 1,050 training tickets) instead of 60, with the validation loss and accuracy on 90 validation
tickets every 25 steps and no early stopping, so the whole curve is seen; the best checkpoint is reported.

    python scripts/measure/measure_overfitting.py      -> course_lib/data/measurements/overfitting_tickets.json
"""
from __future__ import annotations

import argparse
import json

import torch

from course_lib import classify
from course_lib.data import held_out_tickets, load_tickets, write_measurement
from course_lib.device import use_cores
from course_lib.models import load_default_model
from course_lib.recipes import TICKET_LORA

LONG = TICKET_LORA.replace(steps=300, eval_every=25)
VALIDATION_TICKETS = 90


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    model, tokenizer = load_default_model(device="cpu")
    train, held = load_tickets("train"), held_out_tickets(VALIDATION_TICKETS)
    history, seconds = LONG.fit(model, classify.examples(tokenizer, train), tokenizer.pad_token_id,
                                validation=classify.examples(tokenizer, held),
                                metric=lambda: {"accuracy": classify.evaluate(model, tokenizer, held, progress=False)})
    recipe = {**LONG.record(), "eval_every": LONG.train.eval_every, "validation_tickets": VALIDATION_TICKETS}
    record = {"recipe": recipe, "epochs": LONG.train.steps * LONG.train.batch_size / len(train),
              "train_loss": history["loss"], "eval_step": history["eval_step"], "eval_loss": history["eval_loss"],
              "eval_accuracy": history["eval_accuracy"], "best_step": history["best_step"],
              "seconds": round(seconds, 1), "torch": torch.__version__}
    write_measurement("overfitting_tickets.json", record)
    print(json.dumps({k: v for k, v in record.items() if k != "train_loss"}, indent=1))


if __name__ == "__main__":
    main()
