"""Train topic 6's reply adapter once and ship it in PEFT format inside course_lib's data.

The generation task of topic 6: answer a support ticket in Acme's house style. Supervised fine-tuning of the
embedded SmolLM2-135M-Instruct on the 400 training tickets of the preference data with their *chosen* replies
(no DPO, no rejected replies): LoRA r=8, alpha 16 on q_proj and v_proj, AdamW lr 1e-3, batch 8, 100 steps
(2 epochs), seed 0, loss on the assistant's tokens only. Topic 6 loads it (``course_lib.data.reply_adapter_path()``);
``scripts/measure_evaluation.py`` measures it against the base model. The recipe and loss go to ``training.json``.

    python scripts/make_reply_adapter.py       -> course_lib/data/adapters/replies-lora-r8/
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from course_lib import align, lora, sft
from course_lib.data import load_preferences, reply_adapter_path
from course_lib.device import use_cores
from course_lib.models import DEFAULT_MODEL_ID, load_default_model

RECIPE = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "steps": 100, "batch_size": 8, "lr": 1e-3,
          "seed": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    torch.manual_seed(RECIPE["seed"])
    model, tokenizer = load_default_model(device="cpu")
    lora.inject_lora(model, r=RECIPE["r"], alpha=RECIPE["alpha"], target_modules=tuple(RECIPE["target_modules"]))
    pairs = load_preferences("train")
    examples = [sft.sft_example(tokenizer, align.chat(p["prompt"], p["chosen"])) for p in pairs]
    start = time.perf_counter()
    history = sft.train_sft(model, examples, tokenizer.pad_token_id, steps=RECIPE["steps"],
                                 batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], seed=RECIPE["seed"])
    seconds = time.perf_counter() - start
    folder = lora.save_adapter(model, reply_adapter_path(), base_model_name_or_path=DEFAULT_MODEL_ID)
    for path in folder.iterdir():
        path.chmod(0o644)
    record = {"recipe": RECIPE, "train_examples": len(examples), "train_seconds": round(seconds, 1),
              "first_loss": history["loss"][0], "final_loss": history["loss"][-1], "torch": torch.__version__}
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
