"""Topic 3: which LoRA settings matter on the ticket task, measured with a fixed budget over three seeds.

Every run: the embedded SmolLM2-135M-Instruct, fresh adapters, 60 AdamW steps of 8 training tickets (the
notebook's budget); then validation accuracy on 90 validation tickets and the training time. The seed draws
the adapters' initial weights and the batch order; every setting runs once per seed, so two settings of one
seed are paired (the same batches, McNemar on the same 90 tickets). One setting changes at a time around the
notebook's recipe (r=8, alpha 16, q_proj+v_proj, lr 1e-3):

- rank r in 1, 4, 8, 16, 64 with alpha = 2r (the common recipe, so alpha / r stays 2);
- learning rate 1e-4, 3e-4, 1e-3, 3e-3;
- alpha 8, 16, 32 at r = 8 (scaling 1, 2, 4).

Which layers get adapters (q/v vs every linear layer) is measured on the test split, on the FP32 and the NF4 base,
by ``scripts/measure/measure_quant.py targets``. Each entry of a sweep holds the setting, its per-seed runs, the mean
``validation_accuracy`` and ``train_seconds`` over the seeds, their spread (``metrics.seed_summary``) and, for
every setting but the recipe, the paired comparison with the recipe (``metrics.paired_over_seeds``).

    python scripts/measure/sweep_lora.py [--seeds 0 1 2]  -> course_lib/data/measurements/lora_sweep.json
    (ten runs per seed, about 25 minutes per seed on a 2-core CPU without bf16)
"""
from __future__ import annotations

import argparse
import json

import torch

from course_lib import classify, lora, metrics
from course_lib.data import held_out_tickets, load_tickets, write_measurement
from course_lib.device import use_cores
from course_lib.models import load_default_model
from course_lib.recipes import TICKET_LORA

BASE = {"r": TICKET_LORA.r, "alpha": TICKET_LORA.alpha, "targets": list(TICKET_LORA.target_modules),
        "lr": TICKET_LORA.train.lr, "steps": TICKET_LORA.train.steps, "batch_size": TICKET_LORA.train.batch_size}
SWEEPS = {
    "rank": [{"r": r, "alpha": 2 * r} for r in (1, 4, 8, 16, 64)],
    "lr": [{"lr": lr} for lr in (1e-4, 3e-4, 1e-3, 3e-3)],
    "alpha": [{"alpha": a} for a in (8, 16, 32)],
}


def run(settings: dict, seed: int, train: list[dict], held: list[dict]) -> dict:
    model, tokenizer = load_default_model(device="cpu")
    recipe = TICKET_LORA.replace(r=settings["r"], alpha=settings["alpha"], target_modules=tuple(settings["targets"]),
                                 lr=settings["lr"], steps=settings["steps"], batch_size=settings["batch_size"],
                                 seed=seed)
    history, seconds = recipe.fit(model, classify.examples(tokenizer, train), tokenizer.pad_token_id, progress=False)
    trainable, _ = lora.count_parameters(model)
    correct = classify.correct(model, tokenizer, held, progress=False)
    return {"seed": seed, "trainable": trainable, "train_seconds": round(seconds, 1),
            "final_loss": sum(history["loss"][-10:]) / 10, "validation_accuracy": sum(correct) / len(held),
            "correct": correct}


def entry(settings: dict, runs: list[dict], recipe_runs: list[dict]) -> dict:
    """One setting over the seeds: mean and spread of accuracy and time, and its paired test against the recipe."""
    out = {**settings, "runs": [{k: v for k, v in r.items() if k != "correct"} for r in runs]}
    for key in ("validation_accuracy", "train_seconds"):
        spread = metrics.seed_summary([r[key] for r in runs])
        out[key], out[f"{key}_spread"] = spread["mean"], spread
    if settings != BASE:
        out["vs_recipe"] = metrics.paired_over_seeds([r["correct"] for r in recipe_runs],
                                                     [r["correct"] for r in runs])
    return out


def write(seeds: list[int], done: dict[str, list[dict]], held: list[dict]) -> None:
    recipe = done[json.dumps(BASE, sort_keys=True)]
    sweeps = {sweep: [entry(settings, done[json.dumps(settings, sort_keys=True)], recipe)
                      for settings in ({**BASE, **change} for change in changes)]
              for sweep, changes in SWEEPS.items()}
    out = write_measurement("lora_sweep.json", {"base": BASE, "seeds": seeds, "validation_tickets": len(held),
                                                "sweeps": sweeps, "torch": torch.__version__})
    print(f"wrote {out} ({len(seeds)} seeds)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    seeds = parser.parse_args().seeds
    use_cores()
    train = load_tickets("train")
    held = held_out_tickets(90)
    settings_list = list({json.dumps({**BASE, **change}, sort_keys=True): {**BASE, **change}
                          for changes in SWEEPS.values() for change in changes}.values())
    done: dict[str, list[dict]] = {}
    for i, seed in enumerate(seeds):
        for settings in settings_list:
            result = run(settings, seed, train, held)
            done.setdefault(json.dumps(settings, sort_keys=True), []).append(result)
            print(seed, json.dumps({**settings, **{k: v for k, v in result.items() if k != "correct"}}), flush=True)
        if i >= 1:  # a spread needs two seeds; rewrite after every seed so a stopped run keeps what it measured
            write(seeds[:i + 1], done, held)


if __name__ == "__main__":
    main()
