"""Interactive explorers for the notebooks (ipywidgets). Each one recomputes from course_lib functions."""
from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt

from .lora import lora_scaling
from .quant import fake_quantize
from .memory import LLAMA2_7B, TransformerShape, finetune_memory_gb, lora_trainable, parameter_count

ADAPTER_BYTES_PER_PARAM = 4  # adapters are saved in fp32


def lora_summary(shape: TransformerShape, r: int, alpha: float,
                 targets: tuple[str, ...] = ("q_proj", "v_proj")) -> dict[str, float]:
    """What a rank-``r`` adapter means for ``shape``, and for a 7B model, computed from the shapes."""
    trainable = lora_trainable(shape, r, targets)
    total = parameter_count(shape) + trainable
    return {"r": r, "alpha": alpha, "scaling": lora_scaling(alpha, r), "trainable": trainable,
            "total": total, "percent": 100 * trainable / total,
            "adapter_mb": trainable * ADAPTER_BYTES_PER_PARAM / 1e6,
            "llama7b_trainable": lora_trainable(LLAMA2_7B, r, targets),
            "llama7b_lora_gb": finetune_memory_gb(LLAMA2_7B, "lora", r, targets)["total"],
            "llama7b_qlora_gb": finetune_memory_gb(LLAMA2_7B, "qlora", r, targets)["total"],
            "llama7b_full_gb": finetune_memory_gb(LLAMA2_7B, "full")["total"]}


def _render(s: dict[str, float], name: str) -> str:
    rows = [
        ("scaling alpha / r", f"{s['scaling']:.3g}"),
        (f"trainable parameters ({name})", f"{s['trainable']:,} of {s['total']:,} ({s['percent']:.3f}%)"),
        ("adapter file size (fp32)", f"{s['adapter_mb']:.2f} MB"),
        ("Llama-2-7B trainable parameters", f"{s['llama7b_trainable']:,}"),
        ("Llama-2-7B memory, LoRA (fp16 base)", f"{s['llama7b_lora_gb']:.1f} GB"),
        ("Llama-2-7B memory, QLoRA (NF4 base)", f"{s['llama7b_qlora_gb']:.1f} GB"),
        ("Llama-2-7B memory, full fine-tuning", f"{s['llama7b_full_gb']:.1f} GB"),
    ]
    body = "".join(f"<tr><td style='text-align:left'>{k}</td><td style='text-align:right'><b>{v}</b></td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table><small>Model state only (weights, gradients, Adam); activations excluded.</small>"


def lora_rank_explorer(shape: TransformerShape, targets: tuple[str, ...] = ("q_proj", "v_proj"),
                       r: int = 8, alpha: float = 16.0) -> widgets.VBox:
    """Sliders for rank and alpha; the table under them recomputes on every change."""
    rank = widgets.IntSlider(value=r, min=1, max=256, description="rank r", continuous_update=True)
    alpha_slider = widgets.FloatSlider(value=alpha, min=1, max=512, step=1, description="alpha")
    table = widgets.HTML()

    def update(_=None) -> None:
        table.value = _render(lora_summary(shape, rank.value, alpha_slider.value, targets), shape.name)

    rank.observe(update, names="value")
    alpha_slider.observe(update, names="value")
    update()
    return widgets.VBox([rank, alpha_slider, table])


def quantization_snr_db(w, w_hat) -> float:
    """Signal-to-noise ratio of a quantized tensor in dB: 10 log10(sum w^2 / sum (w - w_hat)^2)."""
    noise = float(((w.float() - w_hat.float()) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(float((w.float() ** 2).sum()) / noise)


def bitwidth_explorer(weight, name: str, measured_ppl: dict[str, float], n_params: int) -> widgets.VBox:
    """Bit width (2-8) and block size sliders over a real weight matrix: the error histogram, SNR and
    memory are recomputed live; the model's perplexity at that setting comes from ``measured_ppl``
    (keys like "4bit-64" or "4bit-row", from scripts/measure_quant.py)."""
    bits = widgets.IntSlider(value=4, min=2, max=8, description="bits")
    block = widgets.Dropdown(options=[("32", 32), ("64", 64), ("128", 128), ("256", 256), ("per row", None)],
                             value=64, description="block size")
    out = widgets.Output()

    def update(_=None) -> None:
        w_hat = fake_quantize(weight, bits.value, block.value)
        err = (w_hat - weight).flatten().numpy()
        per_param = bits.value + 32 / (block.value or weight.shape[1])
        key = f"{bits.value}bit-{block.value or 'row'}"
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(err, bins=120, color="#2a7ab9")
            ax.set(xlabel="quantization error w_hat - w", ylabel="count", yscale="log",
                   title=f"{name}: {bits.value}-bit, block {block.value or 'row'}")
            plt.show()
            print(f"SNR {quantization_snr_db(weight, w_hat):.1f} dB | max |error| {abs(err).max():.2e} | "
                  f"{per_param:.3f} bits/param -> {n_params * per_param / 8 / 1e6:.1f} MB for the linear layers | "
                  f"measured perplexity of the whole model: {measured_ppl[key]:.2f}")

    bits.observe(update, names="value")
    block.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([bits, block]), out])
