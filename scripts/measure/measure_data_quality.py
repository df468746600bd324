"""Measure topic 2's claims on the embedded SmolLM2-135M-Instruct and write them as JSON.

Is it the quality or the quantity? Four training sets, built per seed from one pool of 5,000 fresh tickets
(the generator of the shipped tickets; none has a near duplicate, shingle Jaccard >= 0.7 by
``splits.leaks``, in the shipped validation or test split):

* ``clean 5000``: the pool, every label right. Templated, so not free of near duplicates among themselves (the
  JSON records how many distinct texts and near-duplicate groups each seed's pool holds), no more than the
  shipped tickets are;
* ``clean 500``: 500 of the pool (100 per label), so clean 500 vs clean 5000 changes only the quantity;
* ``noisy 5000``: 3,500 of the pool with 20% wrong labels, plus 1,500 repeats of them (half exact copies, half
  with another greeting or shouted; none a near copy of a held-out ticket either), so noisy 5000 vs clean 5000
  changes only the quality;
* ``leaky 500``: the clean 500 with 150 of them replaced by near copies of test tickets (another greeting or
  shouted): the test items leaked into training. Its accuracy is also reported on the leaked items and the rest.

Every run uses topic 3's recipe (LoRA r=8 on q/v, 60 steps of 8, AdamW lr 1e-3) from a fresh base model: the
same step budget, so every run sees 480 examples (about one epoch of the 500s, a tenth of the 5000s). Each
seed draws the pool, the subsets, the noise, the adapter's initial weights and the batch order. Each run is
scored on the shipped test split and on the validation split, which no run saw near copies of (the same kind
of unseen tickets the test split stands for): a leaked test split shows as a test score above it.

With ``--epochs E`` every set (but the leaky one) trains for E epochs instead: ceil(E x size / 8) steps, so the
5000s see ten times the steps of the 500 (63 vs 625 steps for one epoch, about 25 minutes per 5000 on a 2-core
CPU without bf16). That separates quantity from the step budget: does ten times the data win when the model may
also see all of it?

    python scripts/measure/measure_data_quality.py [--seeds 0 1 2]  -> course_lib/data/measurements/data_quality.json
    python scripts/measure/measure_data_quality.py --epochs 1 --seeds 0
                                                      -> course_lib/data/measurements/data_quality_epochs.json
"""
from __future__ import annotations

import argparse
import json
import math
import random

from course_lib import classify, metrics
from course_lib.data import MEASUREMENTS, TICKET_LABELS, load_tickets, write_measurement
from course_lib.data.ticket_generator import OPENERS, make_ticket
from course_lib.dedup import near_duplicate_groups
from course_lib.device import use_cores
from course_lib.models import load_default_model
from course_lib.recipes import TICKET_LORA
from course_lib.splits import leaks

RECIPE = {k: v for k, v in TICKET_LORA.record().items() if k != "seed"}  # each run's seed is its seed's
NOISE = {"wrong_label": 0.20, "repeats": 1500, "leaked": 150}
POOL = 5000
MEASURES = ("test_accuracy", "validation_accuracy", "accuracy_on_those", "accuracy_on_the_rest")


def _variant(text: str, rng: random.Random) -> str:
    """The same ticket as another customer would paste it: another greeting, or shouted."""
    if rng.random() < 0.5:
        return rng.choice([o for o in OPENERS if o]) + text[0].lower() + text[1:]
    return text.upper()


def fresh_pool(per_label: int, held_out: list[str], rng: random.Random) -> list[dict]:
    """``per_label`` new tickets of each label, labelled right, none a near duplicate of a held-out ticket."""
    pool: list[dict] = []
    while missing := [label for label in TICKET_LABELS
                      for _ in range(per_label - sum(r["label"] == label for r in pool))]:
        batch = [{"text": make_ticket(label, rng), "label": label} for label in missing]
        near = {i for i, _, _ in leaks(held_out, [r["text"] for r in batch], threshold=0.7)}
        pool += [r for i, r in enumerate(batch) if i not in near]
    rng.shuffle(pool)
    return pool


def datasets(seed: int, test: list[dict], validation: list[dict]) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    held_out = [r["text"] for r in test + validation]
    pool = fresh_pool(POOL // len(TICKET_LABELS), held_out, rng)
    clean = [r for label in TICKET_LABELS for r in rng.sample([r for r in pool if r["label"] == label], 100)]
    rng.shuffle(clean)
    unique = [dict(r) for r in rng.sample(pool, POOL - NOISE["repeats"])]
    for row in rng.sample(unique, round(NOISE["wrong_label"] * len(unique))):
        row["label"] = rng.choice([x for x in TICKET_LABELS if x != row["label"]])
    repeats: list[dict] = []
    while len(repeats) < NOISE["repeats"]:  # a greeting can make a repeat a near copy of a held-out ticket
        batch = [dict(r) if rng.random() < 0.5 else {**r, "text": _variant(r["text"], rng)}
                 for r in rng.choices(unique, k=NOISE["repeats"] - len(repeats))]
        near = {i for i, _, _ in leaks(held_out, [r["text"] for r in batch], threshold=0.7)}
        repeats += [r for i, r in enumerate(batch) if i not in near]
    noisy = unique + repeats
    rng.shuffle(noisy)
    leaked = [{"text": _variant(test[i]["text"], rng), "label": test[i]["label"]}
              for i in rng.sample(range(len(test)), NOISE["leaked"])]
    leaky = rng.sample(clean, len(clean) - NOISE["leaked"]) + leaked
    rng.shuffle(leaky)
    return {"clean 500": clean, "clean 5000": pool, "noisy 5000": noisy, "leaky 500": leaky}


def train_and_test(rows: list[dict], test: list[dict], validation: list[dict], seed: int, steps: int) -> dict:
    model, tokenizer = load_default_model(device="cpu")
    history, seconds = TICKET_LORA.replace(steps=steps, seed=seed).fit(model, classify.examples(tokenizer, rows),
                                                                       tokenizer.pad_token_id)
    correct = classify.correct(model, tokenizer, test)
    found = {i for i, _, _ in leaks([r["text"] for r in rows], [r["text"] for r in test], threshold=0.7)}
    return {"seed": seed, "examples": len(rows), "steps": steps, "train_seconds": round(seconds, 1),
            "final_loss": history["loss"][-1],
            "test_accuracy": sum(correct) / len(test),
            "validation_accuracy": classify.evaluate(model, tokenizer, validation),
            "test_items_with_a_near_duplicate_in_train": len(found),
            "accuracy_on_those": sum(correct[i] for i in found) / len(found) if found else None,
            "accuracy_on_the_rest": sum(c for i, c in enumerate(correct) if i not in found) / (len(test) - len(found)),
            "correct": correct}


def summarise(runs: list[dict]) -> dict:
    """Per-seed runs of one training set, with the mean and spread of each accuracy over two or more seeds."""
    summary = {key: metrics.seed_summary([r[key] for r in runs])
               for key in MEASURES if len(runs) > 1 and all(r[key] is not None for r in runs)}
    return {"runs": [{k: v for k, v in r.items() if k != "correct"} for r in runs], **summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="train every set but the leaky one for this many epochs")
    args = parser.parse_args()
    seeds, epochs = args.seeds, args.epochs
    out_name = "data_quality_epochs.json" if epochs else "data_quality.json"
    if out_name not in MEASUREMENTS:  # checked before hours of training, not after
        parser.error(f"{out_name} is not in course_lib.data.MEASUREMENTS: map it to this command first")
    use_cores()
    test, validation = load_tickets("test"), load_tickets("validation")
    runs: dict[str, list[dict]] = {}
    pools = []
    for seed in seeds:
        sets = datasets(seed, test, validation)
        texts = [r["text"] for r in sets["clean 5000"]]
        pools.append({"seed": seed, "distinct_texts": len(set(texts)),
                      "near_duplicate_groups": len(set(near_duplicate_groups(texts, 0.7)))})
        for name, rows in sets.items():
            if epochs and name == "leaky 500":
                continue
            steps = math.ceil(epochs * len(rows) / RECIPE["batch_size"]) if epochs else RECIPE["steps"]
            run = train_and_test(rows, test, validation, seed, steps)
            runs.setdefault(name, []).append(run)
            print(name, json.dumps({k: v for k, v in run.items() if k != "correct"}), flush=True)
    comparisons = {f"{b} vs {a}": metrics.paired_over_seeds([r["correct"] for r in runs[a]],
                                                            [r["correct"] for r in runs[b]]) for a, b in
                   [("clean 500", "clean 5000"), ("clean 5000", "noisy 5000"), ("clean 500", "noisy 5000"),
                    ("clean 500", "leaky 500")] if b in runs}
    recipe = {**RECIPE, "steps": f"ceil({epochs} x examples / batch_size)"} if epochs else RECIPE
    out = write_measurement(out_name, {
        "recipe": recipe, "noise": NOISE, "pool": POOL, "seeds": seeds, "pools": pools,
        "test_size": len(test), "validation_size": len(validation),
        "results": {name: summarise(r) for name, r in runs.items()}, "comparisons": comparisons})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
