"""Benchmark: a DPO training step with each pair as two sequences (prompt + chosen, prompt + rejected: TRL's layout,
``dpo.preference_batch``) or as one prefix-shared sequence (prompt + chosen + rejected: ``dpo.shared_prefix_batch``).

SmolLM2 with fresh LoRA adapters (r=8, every linear layer, B initialised at random so that the adapters matter)
computes the log-probs of topic 5's first 16 training batches of 4 pairs and backpropagates through them, both
ways, alternately (the order flips every round, so drifts in machine load hit both alike), in fp32 and, where the
hardware has it, in bf16 mixed precision. Reports the tokens per step, the median seconds per step of each layout,
the speed-up, and the largest differences between the two layouts' log-probs and gradients (fp32).

    python scripts/bench/bench_prefix_sharing.py [--rounds 2] [--steps 16]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_lib import align, dpo
from course_lib.batching import batch_indices
from course_lib.data import load_preferences
from course_lib.device import bf16_native, mixed_precision, use_cores
from course_lib.lora import ALL_LINEAR, inject_lora
from course_lib.models import load_default_model



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    use_cores()
    model, tokenizer = load_default_model()
    torch.manual_seed(0)
    inject_lora(model, r=8, alpha=16, target_modules=ALL_LINEAR)
    params = [p for p in model.parameters() if p.requires_grad]
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    pairs = load_preferences("train")
    batches = [[pairs[i] for i in idx] for idx in batch_indices(len(pairs), args.steps, 4, 0)]
    layouts = {
        "two sequences": lambda rows: dpo.preference_batch(tokenizer, rows),
        "prefix-shared": lambda rows: dpo.shared_prefix_batch([dpo.shared_prefix_example(tokenizer, p) for p in rows],
                                                              tokenizer.pad_token_id)}

    def logprobs(layout: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        if layout == "two sequences":
            return align.sequence_logprobs(model, batch).chunk(2)
        return dpo.shared_prefix_logprobs(model, batch)

    tokens = {name: sum(make(rows)["input_ids"].numel() for rows in batches) / len(batches)
              for name, make in layouts.items()}
    print(f"{len(batches)} steps of 4 pairs; tokens per step (with padding): " +
          ", ".join(f"{name} {n:.0f}" for name, n in tokens.items()) + f"; {torch.get_num_threads()} threads")

    rows = batches[0]  # the same values and gradients, to float32 rounding
    results = {}
    for name, make in layouts.items():
        chosen, rejected = logprobs(name, make(rows))
        results[name] = (chosen.detach(), rejected.detach(), torch.autograd.grad((chosen - rejected).sum(), params))
    (c1, r1, g1), (c2, r2, g2) = results.values()
    value_gap = max((c1 - c2).abs().max().item(), (r1 - r2).abs().max().item())
    grad_gap = max(((a - b).norm() / a.norm()).item() for a, b in zip(g1, g2))
    print(f"fp32: largest log-prob difference {value_gap:.1e} (log-probs about {c1.mean():.0f}); "
          f"largest relative gradient difference {grad_gap:.1e}")

    precisions = ["fp32"] + (["bf16"] if bf16_native(model.device) else [])
    for precision in precisions:
        times: dict[str, list[float]] = {name: [] for name in layouts}
        for r in range(args.rounds):
            for name in (list(layouts) if r % 2 == 0 else list(layouts)[::-1]):
                start = time.perf_counter()
                for rows in batches:
                    with mixed_precision(model.device, precision):
                        chosen, rejected = logprobs(name, layouts[name](rows))
                    (chosen - rejected).sum().backward()
                times[name].append((time.perf_counter() - start) / len(batches))
            print(f"{precision} round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s/step" for n, t in times.items()))
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"{precision} median s/step: two sequences {med['two sequences']:.2f}, prefix-shared "
              f"{med['prefix-shared']:.2f}, speed-up {med['two sequences'] / med['prefix-shared']:.2f}x")
    if not bf16_native(model.device):
        print("bf16: not native on this hardware, not measured")


if __name__ == "__main__":
    main()
