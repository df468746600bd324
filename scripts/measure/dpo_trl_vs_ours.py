"""DPO on SmolLM2-135M-Instruct with LoRA: TRL's DPOTrainer vs course_lib's loop, same data, same settings.

Both runs start from the embedded model with fresh LoRA adapters (r=8, alpha=16, all linear layers of the
blocks), see the same 16 batches of 4 preference pairs in the same order, and use AdamW at a constant
learning rate of 1e-3 without clipping, beta = 0.1, plus the chosen replies' NLL with weight 1 (TRL's
loss_type=["sigmoid", "sft"]). Reference log-probs are precomputed in both. Measured before and after, on
held-out pairs and tickets: implicit-reward accuracy and margin (32 pairs), and house-style compliance of
greedy replies (16 tickets, 60 new tokens). Writes course_lib/data/measurements/dpo_trl_vs_ours.json, which
the Topic 5 notebook plots next to its own live run.

    python scripts/measure/dpo_trl_vs_ours.py            # ~5 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from course_lib import align, dpo
from course_lib.batching import batch_indices
from course_lib.data import load_preferences, write_measurement
from course_lib.lora import ALL_LINEAR, inject_lora
from course_lib.models import load_default_model
from course_lib.training import TrainConfig

SETTINGS = {"steps": 16, "batch_size": 4, "lr": 1e-3, "beta": 0.1, "sft_weight": 1.0, "r": 8, "alpha": 16,
            "targets": list(ALL_LINEAR),
            "seed": 0, "heldout_pairs": 32, "heldout_tickets": 16, "max_new_tokens": 60}


def heldout(model, tokenizer, pairs, ref, tickets) -> dict:
    chosen, rejected = dpo.pair_logprobs(model, tokenizer, pairs)
    out = dpo.dpo_loss(chosen, rejected, *ref, beta=SETTINGS["beta"])
    replies = align.generate_replies(model, tokenizer, tickets, max_new_tokens=SETTINGS["max_new_tokens"])
    return {"reward_accuracy": out.accuracy, "reward_margin": out.margins.mean().item(),
            "style": align.style_report(replies), "replies": replies[:4]}


def run_ours(pairs, test_pairs, tickets) -> dict:
    torch.manual_seed(SETTINGS["seed"])
    model, tokenizer = load_default_model(device="cpu")
    ref = dpo.pair_logprobs(model, tokenizer, test_pairs)
    before = heldout(model, tokenizer, test_pairs, ref, tickets)
    inject_lora(model, r=SETTINGS["r"], alpha=SETTINGS["alpha"], target_modules=SETTINGS["targets"])
    start = time.perf_counter()
    config = TrainConfig(steps=SETTINGS["steps"], batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"],
                         seed=SETTINGS["seed"])
    history = dpo.train_dpo(model, tokenizer, pairs, config, beta=SETTINGS["beta"], sft_weight=SETTINGS["sft_weight"])
    seconds = time.perf_counter() - start
    return {"before": before, "after": heldout(model, tokenizer, test_pairs, ref, tickets), "seconds": seconds,
            "loss": history["loss"], "margin": history["margin"], "accuracy": history["accuracy"]}, ref


def run_trl(train_pairs, test_pairs, tickets, ref) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(SETTINGS["seed"])
    model, tokenizer = load_default_model(device="cpu")
    rows = [{"prompt": align.chat(p["prompt"]), "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in train_pairs]
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, max_steps=SETTINGS["steps"], per_device_train_batch_size=SETTINGS["batch_size"],
            learning_rate=SETTINGS["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=0.0, beta=SETTINGS["beta"], loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, SETTINGS["sft_weight"]], precompute_ref_log_probs=True,
            train_sampling_strategy="sequential", use_cpu=True, bf16=False, gradient_checkpointing=False,
            logging_steps=1, report_to=[], save_strategy="no", seed=SETTINGS["seed"], dataloader_num_workers=0)
        lora = LoraConfig(r=SETTINGS["r"], lora_alpha=SETTINGS["alpha"], target_modules=SETTINGS["targets"],
                          lora_dropout=0.0, task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    logs = [e for e in trainer.state.log_history if "rewards/margins" in e]
    policy = trainer.model.eval()
    return {"after": heldout(policy, tokenizer, test_pairs, ref, tickets), "seconds": seconds,
            "loss": [e["loss"] for e in logs], "margin": [e["rewards/margins"] for e in logs],
            "accuracy": [e["rewards/accuracies"] for e in logs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help prints the docstring: what it measures and where it writes
    torch.set_num_threads(os.cpu_count() or 1)
    pairs = load_preferences("train")
    # The pairs in the order train_dpo visits them; TRL reads them sequentially in the same order.
    train_pairs = [pairs[i] for idx in batch_indices(len(pairs), SETTINGS["steps"], SETTINGS["batch_size"],
                                                     SETTINGS["seed"]) for i in idx]
    test_pairs = load_preferences("test")[:SETTINGS["heldout_pairs"]]
    tickets = [p["prompt"] for p in load_preferences("test")[-SETTINGS["heldout_tickets"]:]]
    ours, ref = run_ours(pairs, test_pairs, tickets)
    trl = run_trl(train_pairs, test_pairs, tickets, ref)
    result = {"settings": SETTINGS, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "torch": torch.__version__, "ours": ours, "trl": trl}
    write_measurement("dpo_trl_vs_ours.json", result)
    for name in ("ours", "trl"):
        run = result[name]
        print(f"{name:5s} {run['seconds']:6.1f} s  loss {run['loss'][0]:.3f} -> {run['loss'][-1]:.3f}  "
              f"held-out reward acc {run['after']['reward_accuracy']:.2f} margin {run['after']['reward_margin']:.2f}"
              f"  compliant {run['after']['style']['compliant']:.2f}")
    print(f"before: compliant {ours['before']['style']['compliant']:.2f}")


if __name__ == "__main__":
    main()
