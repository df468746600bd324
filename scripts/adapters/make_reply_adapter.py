"""Train topic 6's reply adapter once and ship it in PEFT format inside course_lib's data.

The generation task of topic 6: answer a support ticket in Acme's house style. Supervised fine-tuning of the
embedded SmolLM2-135M-Instruct on the 400 training tickets of the preference data with their *chosen* replies (no
DPO, no rejected replies), ``course_lib.recipes.REPLY_LORA``: LoRA r=8, alpha 16 on q_proj and v_proj, AdamW lr
1e-3, batch 8, 100 steps (2 epochs), seed 0, loss on the assistant's tokens only. Topic 6 loads it
(``course_lib.data.reply_adapter_path()``); ``scripts/measure/measure_evaluation.py`` measures it against the base model.
The recipe and loss go to ``training.json``.

    python scripts/adapters/make_reply_adapter.py       -> course_lib/data/adapters/replies-lora-r8/
"""
from __future__ import annotations

import argparse

import torch

from course_lib import align, sft
from course_lib.data import load_preferences, reply_adapter_path
from course_lib.device import use_cores
from course_lib.models import load_default_model
from course_lib.recipes import REPLY_LORA, ship_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    model, tokenizer = load_default_model(device="cpu")
    examples = [sft.sft_example(tokenizer, align.chat(p["prompt"], p["chosen"])) for p in load_preferences("train")]
    history, seconds = REPLY_LORA.fit(model, examples, tokenizer.pad_token_id)
    ship_adapter(model, reply_adapter_path(), {
        "recipe": REPLY_LORA.record(), "train_examples": len(examples), "train_seconds": round(seconds, 1),
        "first_loss": history["loss"][0], "final_loss": history["loss"][-1], "torch": torch.__version__})


if __name__ == "__main__":
    main()
