"""Benchmark: one LoRA training step (forward + backward + AdamW) of course_lib.lora vs PEFT on SmolLM2.

Same model weights, same adapters (r=16, alpha=32, q_proj + v_proj), same batch of real ticket prompts
padded to 128 tokens, batch size 8. The two are timed alternately, round after round, so drifts in machine
load hit both alike; the median of each is reported with the ratio ours / PEFT.

    python scripts/bench/bench_lora.py [--rounds 6] [--batch 8] [--seq 128]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model

from course_lib import lora
from course_lib.data import load_tickets
from course_lib.models import load_default_model


def make_batch(tokenizer, batch: int, seq: int) -> dict[str, torch.Tensor]:
    texts = [" ".join(r["text"] for r in load_tickets("train")[i * 6:(i + 1) * 6]) for i in range(batch)]
    enc = tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=seq)
    return {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}


def step_time(model, optimizer, batch) -> float:
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    base, tokenizer = load_default_model()
    batch = {k: v.to(base.device) for k, v in make_batch(tokenizer, args.batch, args.seq).items()}
    ours = lora.inject_lora(copy.deepcopy(base), r=16, alpha=32)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    del base  # each side works on its own copy of the weights
    for m in (ours, theirs):
        m.train()
    opt = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
           for name, m in (("ours", ours), ("peft", theirs))}
    models = {"ours": ours, "peft": theirs}
    print(f"device {batch['input_ids'].device}, {torch.get_num_threads()} threads, batch {args.batch} x {args.seq} tokens, "
          f"trainable: ours {lora.count_parameters(ours)[0]:,}, peft {theirs.get_nb_trainable_parameters()[0]:,}")
    for name in models:  # warm-up: first steps allocate buffers
        step_time(models[name], opt[name], batch)
    times: dict[str, list[float]] = {"ours": [], "peft": []}
    for r in range(args.rounds):
        order = ("ours", "peft") if r % 2 == 0 else ("peft", "ours")
        for name in order:
            times[name].append(step_time(models[name], opt[name], batch))
        print(f"round {r + 1}: ours {times['ours'][-1]:.2f} s, peft {times['peft'][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median step: ours {med['ours']:.3f} s, peft {med['peft']:.3f} s, ratio ours/peft = "
          f"{med['ours'] / med['peft']:.3f}")


if __name__ == "__main__":
    main()
