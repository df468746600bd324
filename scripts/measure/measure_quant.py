"""Measure quantization on the embedded SmolLM2-135M-Instruct and write the results as JSON.

* ``table``: perplexity on reference English prose (Python's own language reference, 2,048 tokens), weight
  memory (bytes the linear layers' tensors hold) and forward latency, for FP32 / INT8 / INT4 / NF4 /
  NF4 + double quantization; and perplexity for uniform absmax quantization at 2..8 bits and several
  block sizes (the cache behind topic 4's bit-width slider).
* ``finetune``: LoRA over the FP32 base vs QLoRA over the NF4 / NF4+DQ base on the support-ticket task
  (r=8, q/v, 60 steps of 8, lr 1e-3, seed 0): test accuracy, training time, resident memory before
  training and its peak during training (sampled every 20 ms), each in its own process so that peaks
  do not mix. Freed memory is handed back to the OS (malloc_trim) before training starts.
* ``targets``: where QLoRA's deficit comes from. LoRA (FP32 base) and QLoRA (NF4 base), each with adapters on
  q/v or on every linear layer, the same recipe otherwise, seeds 0, 1, 2 (the adapters' initial weights and
  the batch order): test accuracy per run, mean and spread, and McNemar's test per seed for each pair.

    python scripts/measure/measure_quant.py [table|finetune|targets|all]   -> course_lib/data/measurements/*.json
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import psutil
import torch
from torch import nn

from course_lib import classify, lora, metrics, quant
from course_lib.data import load_tickets, reference_prose, write_measurement
from course_lib.device import use_cores
from course_lib.metrics import perplexity
from course_lib.models import load_default_model
from course_lib.recipes import TICKET_LORA

PPL_TOKENS, WINDOW = 2048, 512
METHODS = ("fp32", "int8", "int4", "nf4", "nf4-dq")


def _linear_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.endswith("lm_head")]


def _latency(model, tokenizer, text: str, repeat: int = 3) -> float:
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :256]
    times = []
    with torch.inference_mode():
        model(input_ids=ids)
        for _ in range(repeat):
            start = time.perf_counter()
            model(input_ids=ids)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def table() -> dict:
    base, tokenizer = load_default_model(device="cpu")
    text = reference_prose()
    rows = {}
    for method in METHODS:
        model = copy.deepcopy(base)
        if method != "fp32":
            quant.quantize_model(model, method)
        rows[method] = {"perplexity": perplexity(model, tokenizer, text, WINDOW, PPL_TOKENS),
                        "linear_weight_bytes": quant.linear_weight_bytes(model),
                        "model_bytes": quant.tensor_bytes(model),
                        "forward_seconds_256_tokens": _latency(model, tokenizer, text)}
        print(method, rows[method], flush=True)
        del model
        gc.collect()
    sweep = {}
    originals = {n: m.weight.detach().clone() for n, m in _linear_layers(base)}
    for block in (32, 64, 128, 256, None):
        for bits in range(2, 9):
            with torch.no_grad():
                for name, module in _linear_layers(base):
                    module.weight.copy_(quant.fake_quantize(originals[name], bits, block))
            key = f"{bits}bit-{'row' if block is None else block}"
            sweep[key] = perplexity(base, tokenizer, text, WINDOW, PPL_TOKENS)
            print(key, round(sweep[key], 3), flush=True)
    return {"model": "SmolLM2-135M-Instruct (dequantized from the Q4_1 GGUF)", "text": "reference_prose()",
            "tokens": PPL_TOKENS, "window": WINDOW, "methods": rows, "uniform_sweep": sweep,
            "torch_threads": torch.get_num_threads()}


def _release_freed_memory() -> None:
    """Hand memory freed by Python/torch back to the OS (glibc keeps it otherwise), so that resident
    memory reflects the tensors alive now, not the fp32 copies that quantization discarded."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: RSS then also counts freed memory
        pass


def finetune_one(base_method: str) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_default_model(device="cpu")
    # The weights are memory-mapped from the safetensors cache; copy them into ordinary memory so that the
    # mapping is released and resident memory counts only the tensors the model holds from here on.
    with torch.no_grad():
        for p in model.parameters():  # tied weights are one Parameter, copied once
            p.data = p.data.clone()
    gc.collect()
    if base_method != "fp32":
        quant.quantize_model(model, base_method)
    gc.collect()
    _release_freed_memory()
    base_bytes = quant.linear_weight_bytes(model)
    TICKET_LORA.inject(model)
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    rss_before = process.memory_info().rss
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    history = classify.train_classifier(model, tokenizer, load_tickets("train"), TICKET_LORA.train, progress=False)
    done.set()
    thread.join()
    accuracy = classify.evaluate(model, tokenizer, load_tickets("test"), batch_size=32, progress=False)
    return {"base": base_method, "test_accuracy": accuracy, "train_seconds": history["seconds"][-1],
            "final_loss": history["loss"][-1], "linear_weight_bytes": base_bytes,
            "rss_before_training_mb": rss_before / 1e6, "peak_rss_training_mb": peak[0] / 1e6,
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}


def finetune() -> dict:
    results = {}
    for method in ("fp32", "nf4", "nf4-dq"):
        # A fixed mmap threshold makes glibc return every freed tensor buffer to the OS at once (its default
        # raises the threshold as buffers are freed and then keeps them), so that resident memory follows
        # the tensors alive, not the allocator's history.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, __file__, "_finetune_one", method], check=True,
                             capture_output=True, text=True, env=env).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        print(method, results[method], flush=True)
    return results


TARGETS = {"q+v": lora.DEFAULT_TARGETS, "all linear": lora.ALL_LINEAR}


def targets(seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    train, test = load_tickets("train"), load_tickets("test")
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        for base in ("fp32", "nf4"):
            for name, modules in TARGETS.items():
                model, tokenizer = load_default_model(device="cpu")
                if base != "fp32":
                    quant.quantize_model(model, base)
                recipe = TICKET_LORA.replace(target_modules=modules, seed=seed)
                recipe.inject(model)
                trainable = lora.count_parameters(model)[0]
                history = classify.train_classifier(model, tokenizer, train, recipe.train, progress=False)
                correct = classify.correct(model, tokenizer, test, batch_size=32, progress=False)
                run = {"seed": seed, "trainable": trainable, "train_seconds": round(history["seconds"][-1], 1),
                       "final_loss": history["loss"][-1],
                       "test_accuracy": sum(correct) / len(test), "correct": correct}
                runs.setdefault(f"{base} {name}", []).append(run)
                print(base, name, {k: v for k, v in run.items() if k != "correct"}, flush=True)
    pairs = {f"{b} vs {a}": metrics.paired_over_seeds([r["correct"] for r in runs[a]], [r["correct"] for r in runs[b]])
             for a, b in [("fp32 q+v", "fp32 all linear"), ("nf4 q+v", "nf4 all linear"), ("fp32 q+v", "nf4 q+v"),
                          ("fp32 all linear", "nf4 all linear")]}
    return {"recipe": {"r": 8, "alpha": 16, "steps": 60, "batch_size": 8, "lr": 1e-3, "seeds": list(seeds)},
            "test_size": len(test),
            "results": {name: {"runs": [{k: v for k, v in r.items() if k != "correct"} for r in rs],
                               "test_accuracy": metrics.seed_summary([r["test_accuracy"] for r in rs])}
                        for name, rs in runs.items()},
            "comparisons": pairs}


def main() -> None:
    use_cores()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=("table", "finetune", "targets", "all", "_finetune_one"))
    parser.add_argument("method", nargs="?", help="with _finetune_one (run by finetune in a child): the base to train on")
    args = parser.parse_args()
    what = args.what
    if what == "_finetune_one":
        print(json.dumps(finetune_one(args.method)))
        return
    if what in ("table", "all"):
        write_measurement("quant_smollm2.json", table())
    if what in ("finetune", "all"):
        write_measurement("qlora_tickets.json", finetune())
    if what in ("targets", "all"):
        write_measurement("qlora_targets.json", targets())


if __name__ == "__main__":
    main()
