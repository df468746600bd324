"""Measure topic 2's claims on the embedded SmolLM2-135M-Instruct and write them as JSON.

Every run uses topic 3's recipe (LoRA r=8 on q/v, 60 steps of 8, AdamW lr 1e-3, seed 0) from a fresh base model
and is scored on the shipped, clean test split (225 tickets):

* ``clean 500``: 500 tickets of the shipped, curated train split (100 per label);
* ``noisy 5000``: 5,000 fresh tickets from the same templates, none a near duplicate of a test ticket, with
  20% wrong labels and 30% duplicates (half exact copies, half with another greeting or case);
* ``leaky 500``: the clean 500 with 150 of them replaced by near duplicates of test tickets (another greeting,
  case or sign-off), i.e. the test items leaked into training; its accuracy is also reported on the leaked
  test items and on the rest.

Each run is also scored on the shipped validation split, which no run saw near copies of (the same kind of
unseen tickets the test split stands for): a leaked test split shows as a test score above it.

    python scripts/measure_data_quality.py      -> course_lib/data/measurements/data_quality.json
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from make_tickets import OPENERS, make_ticket  # noqa: E402

from course_lib import classify, lora, metrics  # noqa: E402
from course_lib.data import TICKET_LABELS, load_tickets, near_duplicate_key  # noqa: E402
from course_lib.models import load_default_model, use_cores  # noqa: E402
from course_lib.splits import leaks, stratified_split  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "course_lib" / "data" / "measurements" / "data_quality.json"
RECIPE = {"r": 8, "alpha": 16, "steps": 60, "batch_size": 8, "lr": 1e-3, "seed": 0}
NOISE = {"wrong_label": 0.20, "duplicate": 0.30, "leaked": 150}


def _variant(text: str, rng: random.Random) -> str:
    """The same ticket as another customer would paste it: another greeting, or shouted."""
    if rng.random() < 0.5:
        return rng.choice([o for o in OPENERS if o]) + text[0].lower() + text[1:]
    return text.upper()


def datasets(seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    train, test = load_tickets("train"), load_tickets("test")
    clean = stratified_split(train, {"keep": 500 / len(train), "rest": 1 - 500 / len(train)}, seed=seed)["keep"]
    held_out = {near_duplicate_key(r["text"]) for split in ("validation", "test") for r in load_tickets(split)}
    noisy: list[dict] = []
    while len(noisy) < 5000:
        if noisy and rng.random() < NOISE["duplicate"]:
            source = rng.choice(noisy)
            noisy.append(dict(source) if rng.random() < 0.5 else {**source, "text": _variant(source["text"], rng)})
            continue
        label = rng.choice(TICKET_LABELS)
        text = make_ticket(label, rng)
        if near_duplicate_key(text) in held_out:
            continue
        if rng.random() < NOISE["wrong_label"]:
            label = rng.choice([x for x in TICKET_LABELS if x != label])
        noisy.append({"text": text, "label": label})
    leaked_items = rng.sample(range(len(test)), NOISE["leaked"])
    leaky = clean[:len(clean) - NOISE["leaked"]] + [{"text": _variant(test[i]["text"], rng), "label": test[i]["label"]}
                                                     for i in leaked_items]
    rng.shuffle(leaky)
    return {"clean 500": clean, "noisy 5000": noisy, "leaky 500": leaky}


def train_and_test(rows: list[dict], test: list[dict], validation: list[dict]) -> dict:
    torch.manual_seed(RECIPE["seed"])
    model, tokenizer = load_default_model(device="cpu")
    lora.inject_lora(model, r=RECIPE["r"], alpha=RECIPE["alpha"], target_modules=("q_proj", "v_proj"))
    start = time.perf_counter()
    history = classify.train_classifier(model, tokenizer, rows, steps=RECIPE["steps"], batch_size=RECIPE["batch_size"],
                                        lr=RECIPE["lr"], seed=RECIPE["seed"])
    seconds = time.perf_counter() - start
    predictions = classify.predict(model, tokenizer, [r["text"] for r in test])
    return {"train_seconds": round(seconds, 1), "final_loss": history["loss"][-1], "predictions": predictions,
            "test_accuracy": metrics.accuracy(predictions, [r["label"] for r in test]),
            "validation_accuracy": classify.evaluate(model, tokenizer, validation)}


def main() -> None:
    use_cores()
    test, validation = load_tickets("test"), load_tickets("validation")
    sets = datasets()
    results = {}
    for name, rows in sets.items():
        found = leaks([r["text"] for r in rows], [r["text"] for r in test], threshold=0.7)
        run = train_and_test(rows, test, validation)
        leaked = {i for i, _, _ in found}
        correct = [p == r["label"] for p, r in zip(run.pop("predictions"), test)]
        run.update(examples=len(rows), test_items_with_a_near_duplicate_in_train=len(leaked),
                   accuracy_on_those=sum(correct[i] for i in leaked) / len(leaked) if leaked else None,
                   accuracy_on_the_rest=sum(c for i, c in enumerate(correct) if i not in leaked) / (len(test) - len(leaked)))
        results[name] = run
        print(name, json.dumps(run))
    OUT.write_text(json.dumps({"recipe": RECIPE, "noise": NOISE, "test_size": len(test), "results": results},
                              indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
