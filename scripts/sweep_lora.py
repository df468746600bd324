"""Topic 3: which LoRA settings matter on the ticket task, measured with a fixed budget.

Every run: the embedded SmolLM2-135M-Instruct, fresh adapters (seed 0), 60 AdamW steps of 8 training tickets
(the notebook's budget), the same batches; then validation accuracy on 90 validation tickets and the training
time. One setting changes at a time around the notebook's recipe (r=8, alpha 16, q_proj+v_proj, lr 1e-3):

- rank r in 1, 4, 8, 16, 64 with alpha = 2r (the common recipe, so alpha / r stays 2);
- learning rate 1e-4, 3e-4, 1e-3, 3e-3;
- alpha 8, 16, 32 at r = 8 (scaling 1, 2, 4);
- target modules: q_proj+v_proj vs every linear layer of the blocks.

    python scripts/sweep_lora.py      -> course_lib/data/measurements/lora_sweep.json   (about 20 minutes)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_lib import classify, lora  # noqa: E402
from course_lib.data import load_tickets  # noqa: E402
from course_lib.models import load_default_model, use_cores  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "course_lib" / "data" / "measurements" / "lora_sweep.json"
BASE = {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"], "lr": 1e-3, "steps": 60, "batch_size": 8, "seed": 0}
ALL_LINEAR = list(lora.ALL_LINEAR)
SWEEPS = {
    "rank": [{"r": r, "alpha": 2 * r} for r in (1, 4, 8, 16, 64)],
    "lr": [{"lr": lr} for lr in (1e-4, 3e-4, 1e-3, 3e-3)],
    "alpha": [{"alpha": a} for a in (8, 16, 32)],
    "targets": [{"targets": ["q_proj", "v_proj"]}, {"targets": ALL_LINEAR}],
}


def run(settings: dict, train: list[dict], held: list[dict]) -> dict:
    model, tokenizer = load_default_model(device="cpu")
    torch.manual_seed(settings["seed"])
    lora.inject_lora(model, r=settings["r"], alpha=settings["alpha"], target_modules=tuple(settings["targets"]))
    trainable, _ = lora.count_parameters(model)
    start = time.perf_counter()
    history = classify.train_classifier(model, tokenizer, train, steps=settings["steps"],
                                        batch_size=settings["batch_size"], lr=settings["lr"], seed=settings["seed"],
                                        progress=False)
    seconds = time.perf_counter() - start
    return {**settings, "trainable": trainable, "train_seconds": round(seconds, 1),
            "final_loss": sum(history["loss"][-10:]) / 10,
            "validation_accuracy": classify.evaluate(model, tokenizer, held, progress=False)}


def main() -> None:
    use_cores()
    train = load_tickets("train")
    held = load_tickets("validation")[::2][:90]
    done: dict[str, dict] = {}
    result = {"base": BASE, "validation_tickets": len(held), "sweeps": {}}
    for sweep, changes in SWEEPS.items():
        result["sweeps"][sweep] = []
        for change in changes:
            settings = {**BASE, **change}
            key = json.dumps(settings, sort_keys=True)
            if key not in done:
                done[key] = run(settings, train, held)
                print(sweep, json.dumps(done[key]), flush=True)
            result["sweeps"][sweep].append(done[key])
    result["torch"] = torch.__version__
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    OUT.chmod(0o644)


if __name__ == "__main__":
    main()
