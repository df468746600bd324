"""Check course_lib on a CUDA GPU against the same computation on the CPU (for machines that have one;
the course never requires a GPU). Uses the tiny SmolLM2-shaped model, so it needs only the tokenizer.

    python scripts/gpu_check.py [TOKENIZER_FOLDER]
"""
from __future__ import annotations

import copy
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer

from course_lib import classify, lora, quant
from course_lib.data import load_tickets
from course_lib.models import tiny_model


def report(name: str, ok: bool, detail: str) -> bool:
    print(f"{'OK  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: nothing to check")
    import transformers, peft
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | transformers {transformers.__version__} "
          f"| peft {peft.__version__}")
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1]) if len(sys.argv) > 1 else None
    model, tokenizer = tiny_model(seed=0, tokenizer=tokenizer)
    results = []

    # LoRA on the GPU equals PEFT on the GPU, and our GPU result equals our CPU result.
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
    ours_gpu, theirs_gpu = ours.cuda(), theirs.cuda()
    gb = {k: v.cuda() for k, v in batch.items()}
    with torch.no_grad():
        a, b = ours_gpu(**gb).logits, theirs_gpu(**gb).logits
    results.append(report("LoRA forward, ours vs PEFT on GPU", (a - b).abs().max() < 1e-5,
                          f"max |diff| {(a - b).abs().max():.2e}"))
    results.append(report("LoRA forward, GPU vs CPU", (a.cpu() - cpu_logits).abs().max() < 1e-3,
                          f"max |diff| {(a.cpu() - cpu_logits).abs().max():.2e} (TF32/cuBLAS rounding)"))
    lora.merge_lora(ours_gpu)
    with torch.no_grad():
        merged = ours_gpu(**gb).logits
    results.append(report("LoRA merge on GPU", (merged - a).abs().max() < 1e-4, f"max |diff| {(merged - a).abs().max():.2e}"))

    # NF4 / double quantization on the GPU: same codes and constants as on the CPU.
    w = torch.randn(1536, 576, generator=torch.Generator().manual_seed(0)) * 0.02
    p_cpu, a_cpu = quant.nf4_quantize(w)
    p_gpu, a_gpu = quant.nf4_quantize(w.cuda())
    results.append(report("NF4 codes GPU vs CPU", torch.equal(p_cpu, p_gpu.cpu()) and torch.equal(a_cpu, a_gpu.cpu()),
                          f"{int((p_cpu != p_gpu.cpu()).sum())} of {p_cpu.numel()} packed bytes differ"))
    back_gpu = quant.nf4_dequantize(p_gpu, a_gpu, tuple(w.shape))
    results.append(report("NF4 dequantize GPU vs CPU",
                          torch.equal(back_gpu.cpu(), quant.nf4_dequantize(p_cpu, a_cpu, tuple(w.shape))), "exact"))
    dq_cpu, dq_gpu = quant.nf4_double_quantize(w), quant.nf4_double_quantize(w.cuda())
    results.append(report("NF4 double quantization GPU vs CPU",
                          (quant.nf4_double_dequantize(dq_gpu).cpu() - quant.nf4_double_dequantize(dq_cpu)).abs().max() < 1e-6,
                          f"absmax codes differing: {int((dq_cpu.absmax_codes != dq_gpu.absmax_codes.cpu()).sum())}"))
    big = torch.randn(8192, 8192, device="cuda") * 0.02
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        packed, absmax = quant.nf4_quantize(big)
        quant.nf4_dequantize(packed, absmax, tuple(big.shape))
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / 5
    print(f"info NF4 quantize+dequantize on GPU: {big.numel() * 4 / seconds / 1e9:.1f} GB/s of fp32 weights")

    # QLoRA on the GPU: NF4 base, LoRA on top, the loss falls and the codes stay.
    qmodel, _ = tiny_model(seed=0, tokenizer=tokenizer)
    quant.quantize_model(qmodel, "nf4-dq")
    lora.inject_lora(qmodel, r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    qmodel.cuda()
    codes = {n: m.codes.clone() for n, m in qmodel.named_modules() if isinstance(m, quant.QuantLinear)}
    history = classify.train_classifier(qmodel, tokenizer, load_tickets("train")[:8], steps=20, batch_size=4,
                                        lr=3e-2, progress=False)
    fell = sum(history["loss"][-5:]) / 5 < history["loss"][0] - 0.4
    kept = all(torch.equal(m.codes, codes[n]) for n, m in qmodel.named_modules() if isinstance(m, quant.QuantLinear))
    results.append(report("QLoRA trains on GPU", fell and kept,
                          f"loss {history['loss'][0]:.2f} -> {sum(history['loss'][-5:]) / 5:.2f}, codes unchanged: {kept}"))

    # Classification scoring on the GPU equals the CPU.
    texts = [r["text"] for r in load_tickets("test")[:16]]
    cpu_scores = classify.label_logits(model, tokenizer, texts, progress=False)
    gpu_scores = classify.label_logits(copy.deepcopy(model).cuda(), tokenizer, texts, progress=False)
    results.append(report("label scores GPU vs CPU", (gpu_scores - cpu_scores).abs().max() < 1e-3,
                          f"max |diff| {(gpu_scores - cpu_scores).abs().max():.2e}"))
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
