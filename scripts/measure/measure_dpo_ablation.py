"""Topic 5: what did DPO add? The same budget and data, three ways.

Each run starts from the embedded SmolLM2-135M-Instruct with fresh LoRA adapters (r=8, alpha 16, every linear
layer of the blocks) and takes 16 AdamW steps (lr 1e-3) of the same 4 training pairs per step; each recipe runs
once per seed (0, 1, 2: the adapters' initial weights and the batch order, the same for the three recipes):

- **SFT on chosen**: supervised fine-tuning on the chosen replies only (the rejected ones are never seen);
- **DPO**: the DPO loss alone (beta 0.1);
- **DPO + NLL**: DPO plus the chosen replies' negative log-likelihood (the topic 5 notebook's recipe).

Measured for each: the house-style rate of greedy replies to 16 held-out tickets; the held-out implicit-reward
accuracy and mean margin on 24 held-out pairs (beta * log(pi / pi_ref), the reference being the base model);
how the chosen and rejected replies' log-likelihoods moved; and a fluency check, the perplexity of the
generated replies under the base model (low: the base model finds them ordinary text). Each measure is kept
per seed, with its mean and spread over the seeds.

    python scripts/measure/measure_dpo_ablation.py [--seeds 0 1 2]    -> course_lib/data/measurements/dpo_ablation.json
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from course_lib import align, batching, dpo, lora, metrics, sft
from course_lib.data import load_preferences, write_measurement
from course_lib.device import use_cores
from course_lib.models import load_default_model
from course_lib.training import TrainConfig

SETTINGS = {"r": 8, "alpha": 16, "steps": 16, "batch_size": 4, "lr": 1e-3, "beta": 0.1,
            "heldout_pairs": 24, "tickets": 16, "max_new_tokens": 60}
MEASURES = ("style", "reward_accuracy", "reward_margin", "chosen_logprob_change", "rejected_logprob_change",
            "reply_perplexity", "seconds")
VARIANTS = {"SFT on chosen": None, "DPO": 0.0, "DPO + NLL": 1.0}  # name -> sft_weight of the DPO loss


@torch.no_grad()
def perplexity_under(model, tokenizer, tickets: list[str], replies: list[str]) -> float:
    """exp of the mean negative log-likelihood per reply token, under ``model``, of each reply to its ticket."""
    total = tokens = 0.0
    for ticket, reply in zip(tickets, replies):
        if not reply.strip():
            continue
        batch = batching.collate([sft.sft_example(tokenizer, align.chat(ticket, reply))], tokenizer.pad_token_id)
        total += align.sequence_logprobs(model, batch).item()
        tokens += (batch["labels"][:, 1:] != batching.IGNORE_INDEX).sum().item()
    return math.exp(-total / tokens)


def run_recipe(sft_weight: float | None, seed: int, tokenizer, base, train_pairs, heldout, ref, tickets) -> dict:
    """One recipe from fresh adapters: SFT on the chosen replies (``sft_weight`` None) or DPO (+ weight x NLL)."""
    model, _ = load_default_model(device="cpu")
    torch.manual_seed(seed)
    lora.inject_lora(model, r=SETTINGS["r"], alpha=SETTINGS["alpha"], target_modules=lora.ALL_LINEAR)
    config = TrainConfig(steps=SETTINGS["steps"], batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"], seed=seed)
    start = time.perf_counter()
    if sft_weight is None:
        examples = [sft.sft_example(tokenizer, align.chat(p["prompt"], p["chosen"])) for p in train_pairs]
        history = sft.train_sft(model, examples, tokenizer.pad_token_id, config)
    else:
        history = dpo.train_dpo(model, tokenizer, train_pairs, config, beta=SETTINGS["beta"], sft_weight=sft_weight)
    seconds = time.perf_counter() - start
    after = dpo.dpo_loss(*dpo.pair_logprobs(model, tokenizer, heldout, progress=False), *ref, beta=SETTINGS["beta"])
    replies = align.generate_replies(model, tokenizer, tickets, max_new_tokens=SETTINGS["max_new_tokens"])
    return {"seed": seed, "style": align.style_report(replies)["compliant"],
            "reward_accuracy": after.accuracy, "reward_margin": after.margins.mean().item(),
            "chosen_logprob_change": (after.chosen_rewards / SETTINGS["beta"]).mean().item(),
            "rejected_logprob_change": (after.rejected_rewards / SETTINGS["beta"]).mean().item(),
            "reply_perplexity": perplexity_under(base, tokenizer, tickets, replies),
            "seconds": round(seconds, 1), "loss": history["loss"], "replies": replies[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    seeds = parser.parse_args().seeds
    use_cores()
    train_pairs, test_pairs = load_preferences("train"), load_preferences("test")
    heldout = test_pairs[:SETTINGS["heldout_pairs"]]
    tickets = [p["prompt"] for p in test_pairs[-SETTINGS["tickets"]:]]
    base, tokenizer = load_default_model(device="cpu")
    ref = dpo.pair_logprobs(base, tokenizer, heldout, progress=False)
    base_replies = align.generate_replies(base, tokenizer, tickets, max_new_tokens=SETTINGS["max_new_tokens"])
    result = {"settings": {**SETTINGS, "seeds": seeds}, "base": {
        "style": align.style_report(base_replies)["compliant"],
        "reply_perplexity": perplexity_under(base, tokenizer, tickets, base_replies),
        "chosen_reference_perplexity": perplexity_under(base, tokenizer, tickets,
                                                        [p["chosen"] for p in test_pairs[-SETTINGS["tickets"]:]])}}
    for name, sft_weight in VARIANTS.items():
        runs = []
        for seed in seeds:
            runs.append(run_recipe(sft_weight, seed, tokenizer, base, train_pairs, heldout, ref, tickets))
            print(name, {k: v for k, v in runs[-1].items() if k not in ("loss", "replies")}, flush=True)
        result[name] = {"runs": runs, **{key: metrics.seed_summary([r[key] for r in runs]) for key in MEASURES}}
    result["torch"] = torch.__version__
    write_measurement("dpo_ablation.json", result)


if __name__ == "__main__":
    main()
