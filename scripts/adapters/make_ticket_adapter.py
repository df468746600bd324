"""Train topic 3's ticket classifier adapter once and ship it in PEFT format inside course_lib's data.

The recipe of solutions/03_lora_basics.ipynb, ``course_lib.recipes.TICKET_LORA``: LoRA r=8, alpha 16 on q_proj and
v_proj of the embedded SmolLM2-135M-Instruct, 60 steps of 8 training tickets, AdamW lr 1e-3, seed 0, loss on the
answer tokens only.
Topics 1 and 6 load it (``course_lib.data.ticket_adapter_path()``) instead of training again; the test accuracy
measured here is written next to it (``training.json``) and checked by tests/test_data.py.

    python scripts/adapters/make_ticket_adapter.py       -> course_lib/data/adapters/tickets-lora-r8/
"""
from __future__ import annotations

import argparse

import torch

from course_lib import classify
from course_lib.data import load_tickets, ticket_adapter_path
from course_lib.device import use_cores
from course_lib.models import load_default_model
from course_lib.recipes import TICKET_LORA, ship_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    model, tokenizer = load_default_model(device="cpu")
    history, seconds = TICKET_LORA.fit(model, classify.examples(tokenizer, load_tickets("train")),
                                       tokenizer.pad_token_id)
    test = load_tickets("test")
    accuracy = classify.evaluate(model, tokenizer, test)
    ship_adapter(model, ticket_adapter_path(), {
        "recipe": TICKET_LORA.record(), "train_seconds": round(seconds, 1), "final_loss": history["loss"][-1],
        "test_accuracy": accuracy, "test_size": len(test), "torch": torch.__version__})


if __name__ == "__main__":
    main()
