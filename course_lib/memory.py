"""Parameter counts and fine-tuning memory, derived from a transformer's shape (not looked up).

Memory of the *model state* during training (activations excluded: they depend on batch size and
sequence length), with mixed-precision Adam as in the QLoRA paper's accounting (Dettmers et al., 2023):

* full fine-tuning: every parameter holds fp16 weight (2 B) + fp16 gradient (2 B) + fp32 master weight
  (4 B) + Adam's two fp32 moments (8 B) = 16 bytes;
* LoRA: frozen base weights in fp16 (2 B each) + 16 B for each adapter parameter;
* QLoRA: the frozen linear layers of the blocks in NF4 with double quantization (4.127 bits each, see
  topic 4), the rest of the base (embeddings, LM head, norms) in 16-bit as bitsandbytes keeps them (and
  ``quant.quantize_model`` too), + 16 B for each adapter parameter.
"""
from __future__ import annotations

from dataclasses import dataclass

from .lora import lora_parameter_count, lora_scaling
from .quant import bits_per_parameter

GB = 1e9
MB = 1e6
BYTES_PER_TRAINED_PARAM = 2 + 2 + 4 + 8  # fp16 weight + fp16 grad + fp32 master + Adam m and v


@dataclass(frozen=True)
class TransformerShape:
    """The sizes that fix a Llama-style decoder's parameter count."""
    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, config, name: str | None = None) -> "TransformerShape":
        """Read the shape of a transformers ``LlamaConfig`` (or any config with the same fields)."""
        return cls(name or getattr(config, "_name_or_path", "") or config.model_type, config.vocab_size,
                   config.hidden_size, config.num_hidden_layers, config.intermediate_size,
                   config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads),
                   bool(getattr(config, "tie_word_embeddings", False)))


# Llama-2-7B's published shape (Touvron et al., 2023): 6,738,415,616 parameters.
LLAMA2_7B = TransformerShape("Llama-2-7B", vocab_size=32000, hidden_size=4096, num_layers=32,
                             intermediate_size=11008, num_heads=32, num_kv_heads=32, tied_embeddings=False)


# The LLaMA family's published shapes (Touvron et al., 2023, table 2); the 7B shape is Llama-2-7B's too.
LLAMA_SHAPES = {
    "LLaMA-7B": LLAMA2_7B,
    "LLaMA-13B": TransformerShape("LLaMA-13B", 32000, 5120, 40, 13824, 40, 40, False),
    "LLaMA-33B": TransformerShape("LLaMA-33B", 32000, 6656, 60, 17920, 52, 52, False),
    "LLaMA-65B": TransformerShape("LLaMA-65B", 32000, 8192, 80, 22016, 64, 64, False),
}


def weight_memory_gb(shape: TransformerShape, bits: float) -> float:
    """GB (1e9 bytes) to hold every parameter at ``bits`` bits each (e.g. 16 FP16, 8 INT8, 4.127 NF4+DQ)."""
    return parameter_count(shape) * bits / 8 / GB


def linear_shapes(shape: TransformerShape) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of each linear layer in one decoder block, by its module name."""
    h, kv = shape.hidden_size, shape.num_kv_heads * shape.head_dim
    return {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
            "gate_proj": (shape.intermediate_size, h), "up_proj": (shape.intermediate_size, h),
            "down_proj": (h, shape.intermediate_size)}


def parameter_count(shape: TransformerShape) -> int:
    """Total parameters: embeddings, per block 7 linear layers and 2 RMSNorms, final norm, LM head."""
    embed = shape.vocab_size * shape.hidden_size
    head = 0 if shape.tied_embeddings else embed
    norms = shape.num_layers * 2 * shape.hidden_size + shape.hidden_size
    return embed + block_linear_parameter_count(shape) + norms + head


def block_linear_parameter_count(shape: TransformerShape) -> int:
    """Weights of the seven linear layers of every block: what QLoRA quantizes (not the embeddings, the LM
    head or the norms)."""
    return shape.num_layers * sum(o * i for o, i in linear_shapes(shape).values())


def lora_trainable(shape: TransformerShape, r: int, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> int:
    """Adapter parameters for rank ``r`` on the named linear layers of every block: r * (d_in + d_out) each."""
    shapes = linear_shapes(shape)
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown target modules {sorted(unknown)}; choose from {sorted(shapes)}")
    return shape.num_layers * lora_parameter_count([shapes[t] for t in targets], r)


def finetune_memory_gb(shape: TransformerShape, method: str, r: int = 8,
                       targets: tuple[str, ...] = ("q_proj", "v_proj")) -> dict[str, float]:
    """Model-state memory in GB (1e9 bytes) for 'full', 'lora' or 'qlora' fine-tuning (see module doc).

    Returns ``{"frozen_weights", "trained_state", "total"}``.
    """
    n = parameter_count(shape)
    if method == "full":
        frozen, trained = 0.0, n * BYTES_PER_TRAINED_PARAM
    elif method in ("lora", "qlora"):
        quantized = block_linear_parameter_count(shape) if method == "qlora" else 0
        frozen = quantized * bits_per_parameter("nf4-dq") / 8 + (n - quantized) * 2
        trained = lora_trainable(shape, r, targets) * BYTES_PER_TRAINED_PARAM
    else:
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', got {method!r}")
    return {"frozen_weights": frozen / GB, "trained_state": trained / GB, "total": (frozen + trained) / GB}


ADAPTER_BYTES_PER_PARAM = 4  # adapters are saved in fp32


def lora_summary(shape: TransformerShape, r: int, alpha: float,
                 targets: tuple[str, ...] = ("q_proj", "v_proj")) -> dict[str, float]:
    """What a rank-``r`` adapter means for ``shape``, and for a 7B model, computed from the shapes."""
    trainable = lora_trainable(shape, r, targets)
    total = parameter_count(shape) + trainable
    return {"r": r, "alpha": alpha, "scaling": lora_scaling(alpha, r), "trainable": trainable,
            "total": total, "percent": 100 * trainable / total,
            "adapter_mb": trainable * ADAPTER_BYTES_PER_PARAM / MB,
            "llama7b_trainable": lora_trainable(LLAMA2_7B, r, targets),
            "llama7b_lora_gb": finetune_memory_gb(LLAMA2_7B, "lora", r, targets)["total"],
            "llama7b_qlora_gb": finetune_memory_gb(LLAMA2_7B, "qlora", r, targets)["total"],
            "llama7b_full_gb": finetune_memory_gb(LLAMA2_7B, "full")["total"]}
