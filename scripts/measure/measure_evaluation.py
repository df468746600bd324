"""Topic 6's measurements: base vs fine-tuned, with intervals and paired tests, for the README and the notebook.

1. Classification: the embedded SmolLM2-135M-Instruct with and without topic 3's ticket adapter on the 225 test
   tickets: accuracy and macro-F1 with 95% bootstrap intervals, McNemar's exact test.
2. Robustness: the fine-tuned classifier on the same test tickets with typos, in upper case, and lower case
   without punctuation, and on 60 hand-written free-form tickets (paired with the clean run by McNemar).
3. Generation: house-style replies to the 100 test tickets of the preference data, greedy, by the base model
   and by the reply adapter (``scripts/adapters/make_reply_adapter.py``), ROUGE-L F1 against the chosen reply, with
   95% bootstrap intervals and a paired bootstrap test; also a task metric: is the reply one of the training
   replies written for the ticket's category (the right answer), not only in the house style? The replies
   themselves ship, so the notebook's statistics and its blind human-evaluation panel use exactly these.
4. Forgetting: perplexity on general English prose (``data.reference_prose``) with no adapter and with each.

    python scripts/measure/measure_evaluation.py      -> course_lib/data/measurements/evaluation.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from course_lib import align, classify, lora, metrics, shifts
from course_lib.data import (TICKET_LABELS, load_freeform_tickets, load_preferences, load_tickets,
                             reference_prose, reply_adapter_path, ticket_adapter_path)
from course_lib.data import write_measurement
from course_lib.device import use_cores
from course_lib.models import load_default_model

MAX_NEW_TOKENS = 72
PROSE_TOKENS = 1024


def interval(values: list[float]) -> dict[str, float]:
    estimate, low, high = metrics.bootstrap_ci(values)
    return {"estimate": estimate, "low": low, "high": high}


def macro_f1(predictions: list[str], targets: list[str]) -> float:
    return metrics.precision_recall_f1(metrics.confusion_matrix(predictions, targets, TICKET_LABELS))["f1"]


def classification(predictions: list[str], rows: list[dict]) -> dict:
    targets = [r["label"] for r in rows]
    correct = [float(p == t) for p, t in zip(predictions, targets)]
    matrix = metrics.confusion_matrix(predictions, targets, TICKET_LABELS)
    per_class = metrics.precision_recall_f1(matrix, average=None)["f1"].tolist()
    macro = metrics.bootstrap_metric(macro_f1, predictions, targets)
    return {"accuracy": interval(correct), "macro_f1": {"estimate": macro[0], "low": macro[1], "high": macro[2]},
            "f1_per_class": dict(zip(TICKET_LABELS, per_class)), "predictions": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    use_cores()
    start = time.perf_counter()
    model, tokenizer = load_default_model(device="cpu")
    prose = reference_prose()
    test, freeform = load_tickets("test"), load_freeform_tickets()
    pairs = load_preferences("test")
    prompts = [p["prompt"] for p in pairs]

    result: dict = {"forgetting": {}}
    result["forgetting"]["base"] = metrics.perplexity(model, tokenizer, prose, max_tokens=PROSE_TOKENS)
    base_predictions = classify.predict(model, tokenizer, [r["text"] for r in test])
    base_replies = align.generate_replies(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS)

    lora.load_adapter(model, ticket_adapter_path())
    result["forgetting"]["tickets adapter"] = metrics.perplexity(model, tokenizer, prose, max_tokens=PROSE_TOKENS)
    tuned_predictions = classify.predict(model, tokenizer, [r["text"] for r in test])
    targets = [r["label"] for r in test]
    result["classification"] = {
        "test_size": len(test),
        "base": classification(base_predictions, test),
        "fine-tuned": classification(tuned_predictions, test),
        "mcnemar": metrics.mcnemar([p == t for p, t in zip(base_predictions, targets)],
                                   [p == t for p, t in zip(tuned_predictions, targets)])}
    robustness = {"clean": {"accuracy": result["classification"]["fine-tuned"]["accuracy"]}}
    for name, shift in shifts.SHIFTS.items():
        predictions = classify.predict(model, tokenizer, [r["text"] for r in shifts.shift_rows(test, shift)])
        robustness[name] = {"accuracy": interval([float(p == t) for p, t in zip(predictions, targets)]),
                            "mcnemar_vs_clean": metrics.mcnemar([p == t for p, t in zip(tuned_predictions, targets)],
                                                                [p == t for p, t in zip(predictions, targets)])}
    free_predictions = classify.predict(model, tokenizer, [r["text"] for r in freeform])
    robustness["free-form (hand-written)"] = {
        "accuracy": interval([float(p == r["label"]) for p, r in zip(free_predictions, freeform)]),
        "size": len(freeform), "predictions": free_predictions}
    result["robustness"] = robustness

    lora.load_adapter(lora.unload_lora(model), reply_adapter_path())
    result["forgetting"]["replies adapter"] = metrics.perplexity(model, tokenizer, prose, max_tokens=PROSE_TOKENS)
    tuned_replies = align.generate_replies(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS)
    answers: dict[str, set[str]] = {}
    for pair in load_preferences("train"):
        answers.setdefault(pair["label"], set()).add(pair["chosen"])
    base_rouge = [metrics.rouge_l(r, p["chosen"])["f1"] for r, p in zip(base_replies, pairs)]
    tuned_rouge = [metrics.rouge_l(r, p["chosen"])["f1"] for r, p in zip(tuned_replies, pairs)]
    result["generation"] = {
        "max_new_tokens": MAX_NEW_TOKENS,
        "rouge_l": {"base": interval(base_rouge), "fine-tuned": interval(tuned_rouge)},
        "paired_bootstrap": metrics.paired_bootstrap(base_rouge, tuned_rouge),
        "house_style": {"base": align.style_report(base_replies), "fine-tuned": align.style_report(tuned_replies)},
        "right_answer": {name: interval([float(r in answers[p["label"]]) for r, p in zip(replies, pairs)])
                         for name, replies in (("base", base_replies), ("fine-tuned", tuned_replies))},
        "exact_match": {"base": metrics.exact_match(base_replies, [p["chosen"] for p in pairs]),
                        "fine-tuned": metrics.exact_match(tuned_replies, [p["chosen"] for p in pairs])},
        "items": [{"id": p["id"], "prompt": p["prompt"], "reference": p["chosen"], "label": p["label"],
                   "base": b, "fine-tuned": t} for p, b, t in zip(pairs, base_replies, tuned_replies)]}
    result["prose_tokens"] = PROSE_TOKENS
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["torch"] = torch.__version__
    write_measurement("evaluation.json", result)
    summary = {k: v for k, v in result.items() if k not in ("generation", "classification", "robustness")}
    summary["rouge_l"] = result["generation"]["rouge_l"]
    summary["right_answer"] = result["generation"]["right_answer"]
    summary["accuracy"] = {k: result["classification"][k]["accuracy"] for k in ("base", "fine-tuned")}
    summary["robustness"] = {k: v["accuracy"] for k, v in robustness.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
