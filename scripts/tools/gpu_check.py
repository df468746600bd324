"""Check course_lib on a CUDA GPU against the same computation on the CPU (for machines that have one; the
course never requires a GPU): the heavy path of every topic, on the tiny SmolLM2-shaped model (and the
embedded MiniLM), so it needs no download and runs in about a minute.

    python scripts/tools/gpu_check.py                  # on the GPU
    python scripts/tools/gpu_check.py --device cpu     # a dry run on the CPU (what tests/test_gpu_check.py runs)

Prints one line per check (OK / FAIL) and exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch
from peft import LoraConfig, get_peft_model

from course_lib import align, classify, dpo, lora, metrics, quant, retrieval, reward
from course_lib.data import load_preferences, load_tickets, reference_prose
from course_lib.device import bf16_native, default_device, mixed_precision, resolve_precision
from course_lib.models import load_minilm, tiny_model
from course_lib.training import TrainConfig


def report(name: str, ok: bool, detail: str) -> bool:
    print(f"{'OK  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_lora(model, tokenizer, device) -> list[bool]:
    """Topic 3: LoRA on the device equals PEFT on the device and our result on the CPU; merging keeps it."""
    ours = lora.inject_lora(copy.deepcopy(model), r=4, alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in lora.lora_layers(ours):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours):
            modules[name].lora_A["default"].weight.copy_(layer.lora_A)
            modules[name].lora_B["default"].weight.copy_(layer.lora_B)
    batch = tokenizer(["LoRA on a GPU", "gives the same numbers as on a CPU"], return_tensors="pt", padding=True)
    with torch.no_grad():
        cpu_logits = ours(**batch).logits
    ours, theirs = ours.to(device), theirs.to(device)
    on = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        a, b = ours(**on).logits, theirs(**on).logits
    results = [report("topic 3: LoRA forward, ours vs PEFT", max_diff(a, b) < 1e-5, f"max |diff| {max_diff(a, b):.2e}"),
               report(f"topic 3: LoRA forward, {device} vs CPU", max_diff(a, cpu_logits) < 1e-3,
                      f"max |diff| {max_diff(a, cpu_logits):.2e} (TF32/cuBLAS rounding)")]
    lora.merge_lora(ours)
    with torch.no_grad():
        merged = ours(**on).logits
    results.append(report("topic 3: LoRA merge", max_diff(merged, a) < 1e-4, f"max |diff| {max_diff(merged, a):.2e}"))
    return results


def check_quantization(device) -> list[bool]:
    """Topic 4: NF4 and double quantization give the same codes and constants on the device as on the CPU."""
    w = torch.randn(1536, 576, generator=torch.Generator().manual_seed(0)) * 0.02
    p_cpu, a_cpu = quant.nf4_quantize(w)
    p_dev, a_dev = quant.nf4_quantize(w.to(device))
    results = [report(f"topic 4: NF4 codes, {device} vs CPU",
                      torch.equal(p_cpu, p_dev.cpu()) and torch.equal(a_cpu, a_dev.cpu()),
                      f"{int((p_cpu != p_dev.cpu()).sum())} of {p_cpu.numel()} packed bytes differ")]
    back = quant.nf4_dequantize(p_dev, a_dev, tuple(w.shape))
    results.append(report(f"topic 4: NF4 dequantize, {device} vs CPU",
                          torch.equal(back.cpu(), quant.nf4_dequantize(p_cpu, a_cpu, tuple(w.shape))), "exact"))
    dq_cpu, dq_dev = quant.nf4_double_quantize(w), quant.nf4_double_quantize(w.to(device))
    diff = max_diff(quant.nf4_double_dequantize(dq_dev), quant.nf4_double_dequantize(dq_cpu))
    results.append(report(f"topic 4: NF4 double quantization, {device} vs CPU", diff < 1e-6,
                          f"absmax codes differing: {int((dq_cpu.absmax_codes != dq_dev.absmax_codes.cpu()).sum())}"))
    size = 8192 if device.type == "cuda" else 1024
    big = torch.randn(size, size, device=device) * 0.02
    synchronize(device)
    start = time.perf_counter()
    for _ in range(5):
        packed, absmax = quant.nf4_quantize(big)
        quant.nf4_dequantize(packed, absmax, tuple(big.shape))
    synchronize(device)
    seconds = (time.perf_counter() - start) / 5
    rate = big.numel() * 4 / seconds / 1e9
    print(f"info topic 4: NF4 quantize+dequantize on {device}: {rate:.2f} GB/s of fp32 weights")
    return results


def check_qlora(tokenizer, device) -> list[bool]:
    """Topic 4: QLoRA (NF4 base, LoRA on top) trains on the device and leaves the codes as they were."""
    qmodel, _ = tiny_model(seed=0, tokenizer=tokenizer)
    quant.quantize_model(qmodel, "nf4-dq")
    lora.inject_lora(qmodel, r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    qmodel.to(device)
    codes = {n: m.codes.clone() for n, m in qmodel.named_modules() if isinstance(m, quant.QuantLinear)}
    history = classify.train_classifier(qmodel, tokenizer, load_tickets("train")[:8],
                                        TrainConfig(steps=20, batch_size=4, lr=3e-2), progress=False)
    last = sum(history["loss"][-5:]) / 5
    kept = all(torch.equal(m.codes, codes[n]) for n, m in qmodel.named_modules() if isinstance(m, quant.QuantLinear))
    return [report("topic 4: QLoRA trains", last < history["loss"][0] - 0.4 and kept,
                   f"loss {history['loss'][0]:.2f} -> {last:.2f}, codes unchanged: {kept}")]


def check_scoring(model, tokenizer, device) -> list[bool]:
    """Topics 1, 3, 6: label scores (prefix cache included) on the device equal the CPU's."""
    texts = [r["text"] for r in load_tickets("test")[:16]]
    cpu = classify.label_logits(model, tokenizer, texts, progress=False)
    dev = classify.label_logits(copy.deepcopy(model).to(device), tokenizer, texts, progress=False)
    return [report(f"topics 1, 3, 6: label scores, {device} vs CPU", max_diff(dev, cpu) < 1e-3,
                   f"max |diff| {max_diff(dev, cpu):.2e}")]


def check_embeddings(device) -> list[bool]:
    """Topics 1, 2 and 5: MiniLM sentence embeddings (retrieval, near duplicates) and the reward model."""
    encoder, tok = load_minilm(device="cpu")
    texts = [r["text"] for r in load_tickets("test")[:16]]
    cpu = retrieval.embed(texts, encoder, tok, progress=False)
    dev = retrieval.embed(texts, copy.deepcopy(encoder).to(device), tok, progress=False)
    results = [report(f"topics 1, 2: MiniLM embeddings, {device} vs CPU", max_diff(dev, cpu) < 1e-4,
                      f"max |diff| {max_diff(dev, cpu):.2e}")]
    torch.manual_seed(0)
    rm = reward.RewardModel(encoder, tok)
    pairs = load_preferences("test")[:8]
    prompts, replies = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    cpu_r = rm.score(prompts, replies)
    dev_r = copy.deepcopy(rm).to(device).score(prompts, replies)
    results.append(report(f"topic 5: reward model scores, {device} vs CPU", max_diff(dev_r, cpu_r) < 1e-4,
                          f"max |diff| {max_diff(dev_r, cpu_r):.2e}"))
    return results


def check_alignment(model, tokenizer, device) -> list[bool]:
    """Topic 5: DPO log-probs on the device equal the CPU's; DPO trains there from loss log 2; replies generate."""
    pairs = load_preferences("train")[:8]
    cpu_c, cpu_r = dpo.pair_logprobs(model, tokenizer, pairs, progress=False)
    policy = copy.deepcopy(model).to(device)
    dev_c, dev_r = dpo.pair_logprobs(policy, tokenizer, pairs, progress=False)
    diff = max(max_diff(dev_c, cpu_c), max_diff(dev_r, cpu_r))
    results = [report(f"topic 5: DPO log-probs, {device} vs CPU", diff < 1e-2,
                      f"max |diff| {diff:.2e} (sums over ~40 reply tokens)")]
    lora.inject_lora(policy, r=4, alpha=8)
    precision = resolve_precision(device)  # what topic 5 trains in there
    history = dpo.train_dpo(policy, tokenizer, pairs, TrainConfig(steps=8, batch_size=4, lr=5e-3, precision=precision),
                            beta=0.5, progress=False)
    results.append(report(f"topic 5: DPO trains in {precision}", abs(history["loss"][0] - math.log(2)) < 1e-4
                          and history["margin"][-1] > history["margin"][0],
                          f"loss {history['loss'][0]:.4f} (log 2 = {math.log(2):.4f}) -> {history['loss'][-1]:.4f}"))
    with mixed_precision(device, precision):
        replies = align.generate_replies(policy, tokenizer, [p["prompt"] for p in pairs[:4]], max_new_tokens=8,
                                         progress=False)
    results.append(report("topic 5: generation", len(replies) == 4 and all(isinstance(r, str) for r in replies),
                          f"{len(replies)} replies, first {replies[0][:40]!r}"))
    return results


def check_perplexity(model, tokenizer, device) -> list[bool]:
    """Topics 4, 6: perplexity on the device equals the CPU's."""
    text = reference_prose(3000)
    cpu = metrics.perplexity(model, tokenizer, text, max_length=256)
    dev = metrics.perplexity(copy.deepcopy(model).to(device), tokenizer, text, max_length=256)
    return [report(f"topics 4, 6: perplexity, {device} vs CPU", abs(dev - cpu) / cpu < 1e-4,
                   f"{dev:.4f} vs {cpu:.4f}")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    device = torch.device(parser.parse_args(argv).device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: nothing to check (--device cpu runs the checks on the CPU)")
    import peft
    import transformers
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name} | torch {torch.__version__} | transformers {transformers.__version__} | peft {peft.__version__} "
          f"| bf16 matmuls {'native: topics 3, 5 train in bf16' if bf16_native(device) else 'not native: fp32'} "
          f"| notebooks load models on: {default_device()}")
    model, tokenizer = tiny_model(seed=0)
    results = (check_lora(model, tokenizer, device) + check_quantization(device) + check_qlora(tokenizer, device)
               + check_scoring(model, tokenizer, device) + check_embeddings(device)
               + check_alignment(model, tokenizer, device) + check_perplexity(model, tokenizer, device))
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
