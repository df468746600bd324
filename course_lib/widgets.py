"""Interactive explorers for the notebooks (ipywidgets). Each one recomputes from course_lib functions."""
from __future__ import annotations

import ipywidgets as widgets

from .lora import lora_scaling
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
