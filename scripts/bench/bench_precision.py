"""Benchmark: topic 5's DPO recipe in fp32 and in bf16 mixed precision (``course_lib.device.mixed_precision``).

Each round runs notebook 5's section 5 in both precisions, alternately (the order flips every round, so drifts
in machine load hit both alike): the reference log-probs of the 24 held-out pairs, 16 DPO + NLL steps of 4 pairs
on fresh LoRA adapters (r=8, every linear layer, the same initialisation), the held-out implicit rewards after
training and greedy replies to the 16 held-out tickets. Reports the median seconds of each part, the speed-up,
and what the precision changes in the results (losses, held-out accuracy and margin, house style).

    python scripts/bench/bench_precision.py [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_lib import align, dpo
from course_lib.data import load_preferences
from course_lib.device import bf16_native, mixed_precision, use_cores
from course_lib.lora import ALL_LINEAR, adapters_disabled, inject_lora, lora_layers
from course_lib.models import load_default_model
from course_lib.training import TrainConfig



def run(model, tokenizer, initial: list[torch.Tensor], train_pairs: list[dict], test_pairs: list[dict],
        precision: str) -> tuple[dict, dict]:
    """Notebook 5's section 5 in ``precision``, from the adapters' initial state; (seconds, results)."""
    heldout, tickets = test_pairs[:24], [p["prompt"] for p in test_pairs[-16:]]
    with torch.no_grad():
        for p, start in zip((p for p in model.parameters() if p.requires_grad), initial):
            p.copy_(start)
    seconds = {}
    start = time.perf_counter()
    with mixed_precision("cpu", precision), adapters_disabled(model):
        ref = dpo.pair_logprobs(model, tokenizer, heldout, progress=False)
    seconds["held-out reference"] = time.perf_counter() - start
    start = time.perf_counter()
    history = dpo.train_dpo(model, tokenizer, train_pairs,
                            TrainConfig(steps=16, batch_size=4, lr=1e-3, precision=precision), beta=0.1,
                            sft_weight=1.0, progress=False)
    seconds["training"] = time.perf_counter() - start
    seconds["of which steps"] = history["seconds"][-1]
    start = time.perf_counter()
    with mixed_precision("cpu", precision):
        after = dpo.dpo_loss(*dpo.pair_logprobs(model, tokenizer, heldout, progress=False), *ref, beta=0.1)
        replies = align.generate_replies(model, tokenizer, tickets, max_new_tokens=60, progress=False)
    seconds["evaluation + generation"] = time.perf_counter() - start
    seconds["total"] = seconds["held-out reference"] + seconds["training"] + seconds["evaluation + generation"]
    return seconds, {"loss": history["loss"], "accuracy": after.accuracy, "margin": after.margins.mean().item(),
                     "style": align.style_report(replies)["compliant"], "reply": replies[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    use_cores()
    print(f"{torch.get_num_threads()} threads; bf16 matmuls in hardware: {bf16_native('cpu')}")
    model, tokenizer = load_default_model()
    torch.manual_seed(0)
    inject_lora(model, r=8, alpha=16, target_modules=ALL_LINEAR)
    initial = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    assert len(initial) == 2 * len(list(lora_layers(model)))
    train_pairs, test_pairs = load_preferences("train"), load_preferences("test")
    times: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    results: dict[str, dict] = {}
    for r in range(args.rounds):
        for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            seconds, results[precision] = run(model, tokenizer, initial, train_pairs, test_pairs, precision)
            times[precision].append(seconds)
            print(f"round {r + 1} {precision}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    print(f"\nmedians of {args.rounds} rounds   {'fp32':>8} {'bf16':>8} {'speed-up':>9}")
    for part in times["fp32"][0]:
        fp32, bf16 = (statistics.median(t[part] for t in times[p]) for p in ("fp32", "bf16"))
        print(f"{part:<28} {fp32:>7.1f}s {bf16:>7.1f}s {fp32 / bf16:>8.2f}x")
    print()
    for precision, res in results.items():
        print(f"{precision}: loss {res['loss'][0]:.3f} -> {res['loss'][-1]:.3f}; "
              f"held-out accuracy {res['accuracy']:.0%}, margin {res['margin']:.2f}; house style {res['style']:.0%}"
              f"\n      first reply: {res['reply']}")
    gap = max(abs(a - b) for a, b in zip(results["fp32"]["loss"], results["bf16"]["loss"]))
    print(f"largest per-step loss gap between the two: {gap:.3f}")


if __name__ == "__main__":
    main()
