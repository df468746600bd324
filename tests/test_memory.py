"""course_lib.memory: parameter counts derived from shapes agree with real models."""
import pytest

from course_lib import lora
from course_lib.memory import (LLAMA2_7B, LLAMA_SHAPES, TransformerShape, finetune_memory_gb,
                               lora_summary, lora_trainable, parameter_count, weight_memory_gb)
from course_lib.quant import bits_per_parameter


def test_llama2_7b_parameter_count_matches_the_paper():
    assert parameter_count(LLAMA2_7B) == 6_738_415_616


def test_counts_match_a_real_model(tiny):
    model, _ = tiny
    shape = TransformerShape.from_config(model.config)
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
    lora.inject_lora(model, r=4, target_modules=["q_proj", "k_proj", "down_proj"])
    assert lora_trainable(shape, 4, ("q_proj", "k_proj", "down_proj")) == lora.count_parameters(model)[0]


def test_smollm2_shape_from_its_config(smollm2):
    model, _ = smollm2
    assert parameter_count(TransformerShape.from_config(model.config)) == 134_515_008


def test_finetune_memory_7b():
    full = finetune_memory_gb(LLAMA2_7B, "full")
    assert full["total"] == pytest.approx(6_738_415_616 * 16 / 1e9)  # ~107.8 GB
    lora_mem = finetune_memory_gb(LLAMA2_7B, "lora", r=8)
    assert lora_mem["frozen_weights"] == pytest.approx(13.48, abs=0.01)
    assert lora_mem["trained_state"] == pytest.approx(32 * 2 * 8 * 8192 * 16 / 1e9)
    qlora = finetune_memory_gb(LLAMA2_7B, "qlora", r=8)
    nf4_dq = bits_per_parameter("nf4-dq")  # 4.127: 4-bit codes + 8-bit absmax per 64 + fp32 per 256 absmaxes
    # NF4 for the 32 x 7 linear layers of the blocks (6,476,005,376 weights); embeddings, LM head and norms in 16-bit.
    quantized = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert quantized == 6_476_005_376
    assert qlora["frozen_weights"] == pytest.approx((quantized * nf4_dq / 8 + (6_738_415_616 - quantized) * 2) / 1e9)
    assert qlora["frozen_weights"] == pytest.approx(3.865, abs=1e-3)  # 3.341 GB of codes + 0.524 GB in 16-bit
    assert qlora["total"] < lora_mem["total"] < full["total"]
    assert finetune_memory_gb(LLAMA2_7B, "lora", r=64)["total"] > lora_mem["total"]


def test_bad_method_and_targets():
    with pytest.raises(ValueError, match="'full', 'lora' or 'qlora'"):
        finetune_memory_gb(LLAMA2_7B, "adapter")
    with pytest.raises(ValueError, match=r"unknown target modules \['query'\]"):
        lora_trainable(LLAMA2_7B, 8, ("query",))


def test_llama_family_sizes_and_weight_memory():
    counts = {name: parameter_count(shape) for name, shape in LLAMA_SHAPES.items()}
    # The released checkpoints hold 6,738,415,616 / 13,015,864,320 / 32,528,943,616 / 65,285,660,672 parameters.
    assert list(counts.values()) == [6_738_415_616, 13_015_864_320, 32_528_943_616, 65_285_660_672]
    assert weight_memory_gb(LLAMA_SHAPES["LLaMA-65B"], 16) == pytest.approx(counts["LLaMA-65B"] * 2 / 1e9)
    assert weight_memory_gb(LLAMA_SHAPES["LLaMA-7B"], 4) == pytest.approx(weight_memory_gb(LLAMA2_7B, 16) / 4)


def test_qlora_quantizes_only_the_blocks_linear_layers(tiny):
    """The formula's split matches what quantize_model (and bitsandbytes) do to a real model: the blocks'
    linear layers become NF4 + DQ codes; the embedding (tied LM head) and the norms stay as they are."""
    from course_lib import quant
    from course_lib.memory import block_linear_parameter_count

    model, _ = tiny
    shape = TransformerShape.from_config(model.config)
    kept = {n: p.numel() for n, p in model.named_parameters() if "proj" not in n}
    quant.quantize_model(model, "nf4-dq")
    assert {n: p.numel() for n, p in model.named_parameters()} == kept
    assert sum(kept.values()) == parameter_count(shape) - block_linear_parameter_count(shape)
    nf4_dq_bytes = block_linear_parameter_count(shape) * bits_per_parameter("nf4-dq") / 8
    assert quant.linear_weight_bytes(model) == pytest.approx(nf4_dq_bytes, rel=0.01)


def test_lora_summary_is_computed_from_the_shapes(tiny):
    model, _ = tiny
    shape = TransformerShape.from_config(model.config, name="tiny")
    s8, s16 = lora_summary(shape, 8, 16), lora_summary(shape, 16, 16)
    assert s16["trainable"] == 2 * s8["trainable"] == 2 * lora_trainable(shape, 8)
    assert s8["scaling"] == 2.0 and s16["scaling"] == 1.0
    assert s8["adapter_mb"] == s8["trainable"] * 4 / 1e6
    assert s8["llama7b_trainable"] == 4_194_304
    assert s8["llama7b_qlora_gb"] < s8["llama7b_lora_gb"] < s8["llama7b_full_gb"]
