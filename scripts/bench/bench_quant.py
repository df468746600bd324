"""Benchmark: NF4 quantize + dequantize throughput (GB of fp32 weights per second), ours vs bitsandbytes,
and forward latency of our QuantLinear (NF4) vs bitsandbytes' Linear4bit vs a plain fp32 nn.Linear.

Weights: SmolLM2's 576x1536 MLP projections (real weights, 3.5 MB each in fp32). Each pair is timed
alternately, round after round, and the medians are compared.

    python scripts/bench/bench_quant.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import torch
from torch import nn

from course_lib import quant
from course_lib.models import load_default_model


def timed(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def alternate(fns: dict, rounds: int, repeat: int) -> dict[str, float]:
    times = {k: [] for k in fns}
    for name, fn in fns.items():  # warm-up
        fn()
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            times[name].append(timed(fns[name], repeat))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model, _ = load_default_model(device="cpu")
    weights = [model.model.layers[i].mlp.up_proj.weight.detach().clone() for i in range(0, 30, 3)]
    gb = sum(w.numel() * 4 for w in weights) / 1e9

    def ours_roundtrip():
        for w in weights:
            packed, absmax = quant.nf4_quantize(w)
            quant.nf4_dequantize(packed, absmax, tuple(w.shape))

    def bnb_roundtrip():
        for w in weights:
            packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
            bnbf.dequantize_4bit(packed, state)

    t = alternate({"ours": ours_roundtrip, "bnb": bnb_roundtrip}, args.rounds, repeat=3)
    print(f"NF4 quantize+dequantize of {len(weights)} real 1536x576 weights ({gb * 1e3:.0f} MB fp32):")
    print(f"  ours {gb / t['ours']:.2f} GB/s, bitsandbytes {gb / t['bnb']:.2f} GB/s, "
          f"ratio ours/bnb throughput = {t['bnb'] / t['ours']:.2f}")

    w = weights[0]
    linear = nn.Linear(576, 1536, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    ours = quant.QuantLinear(linear, "nf4")

    def bnb_layer(bf16_kernel: bool) -> nn.Module:
        layer = bnb.nn.Linear4bit(576, 1536, bias=False, quant_type="nf4", compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4", blocksize=64,
                                         compress_statistics=False)  # plain NF4, like ours
        layer = layer.to("cpu")  # Params4bit quantizes here
        # On CPUs with AVX512-BF16, bitsandbytes repacks the weight at the first inference forward and
        # computes in bf16 (faster, less exact); without it, it dequantizes and multiplies in fp32 like ours.
        layer.support_avx512bf16_for_cpu = bf16_kernel and layer.support_avx512bf16_for_cpu
        return layer

    bnb_fp32, bnb_fast = bnb_layer(False), bnb_layer(True)
    print(f"bitsandbytes' bf16 CPU kernel available: {bnb_fast.support_avx512bf16_for_cpu}")
    for batch in (1, 64):
        x = torch.randn(batch, 576)
        with torch.inference_mode():
            assert torch.allclose(ours(x), bnb_fp32(x), atol=1e-5), "ours and bitsandbytes disagree"
            t = alternate({"fp32": lambda: linear(x), "ours": lambda: ours(x), "bnb": lambda: bnb_fp32(x),
                           "bnb-bf16": lambda: bnb_fast(x)}, args.rounds, repeat=50)
        print(f"forward, batch {batch:>2} x 576 -> 1536: fp32 nn.Linear {t['fp32'] * 1e6:.0f} us, ours NF4 "
              f"{t['ours'] * 1e6:.0f} us, bnb Linear4bit fp32 {t['bnb'] * 1e6:.0f} us, bnb bf16 kernel "
              f"{t['bnb-bf16'] * 1e6:.0f} us; ours/bnb = {t['ours'] / t['bnb']:.2f}, "
              f"ours/bnb-bf16 = {t['ours'] / t['bnb-bf16']:.2f}, ours/fp32 = {t['ours'] / t['fp32']:.2f}")


if __name__ == "__main__":
    main()
