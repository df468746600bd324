"""course_lib.quant against bitsandbytes (CPU functional API), plus properties and bad input."""
import math

import bitsandbytes.functional as bnbf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import quant
from course_lib.grading import assert_tensors_close


def _bnb_nf4(w, block=64, double=False):
    packed, state = bnbf.quantize_4bit(w, blocksize=block, quant_type="nf4", compress_statistics=double)
    return packed, state


def _assert_nearest_and_rarely_different(ours, theirs, values, code):
    """bitsandbytes' C++ CPU kernel for 8-bit blockwise quantization searches the code approximately and
    sometimes lands on a farther value; ours takes the nearest (as bitsandbytes' pure-torch kernel does).
    So: ours is never farther than theirs, and the two decode to the same value almost everywhere."""
    v = values.reshape(-1)
    a, b = code[ours.reshape(-1).long()], code[theirs.reshape(-1).long()]
    assert ((v - a).abs() <= (v - b).abs() + 1e-9).all(), "bitsandbytes' code is nearer somewhere"
    assert (a != b).float().mean() < 0.005, f"{int((a != b).sum())} of {a.numel()} codes decode differently"


def _weights(smollm2):
    model, _ = smollm2
    layer = model.model.layers[3]
    return {"q_proj": layer.self_attn.q_proj.weight.detach(), "k_proj": layer.self_attn.k_proj.weight.detach(),
            "down_proj": layer.mlp.down_proj.weight.detach()}


def test_levels_are_bitsandbytes_levels():
    assert torch.equal(quant.NF4_LEVELS, bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(quant.dynamic_map_8bit(), bnbf.create_dynamic_map(signed=True))


@pytest.mark.slow
def test_nf4_identical_to_bitsandbytes_on_real_weights(smollm2):
    for name, w in _weights(smollm2).items():
        packed, absmax = quant.nf4_quantize(w)
        bnb_packed, state = _bnb_nf4(w)
        assert torch.equal(packed, bnb_packed.reshape(-1)), f"{name}: packed NF4 codes differ"
        assert torch.equal(absmax, state.absmax), f"{name}: absmax differs"
        ours = quant.nf4_dequantize(packed, absmax, tuple(w.shape))
        assert_tensors_close(ours, bnbf.dequantize_4bit(bnb_packed, state), atol=1e-6, rtol=0, name=name)


@pytest.mark.slow
def test_double_quant_identical_to_bitsandbytes_on_real_weights(smollm2):
    for name, w in _weights(smollm2).items():
        q = quant.nf4_double_quantize(w)
        bnb_packed, state = _bnb_nf4(w, double=True)
        assert torch.equal(q.packed, bnb_packed.reshape(-1))
        assert torch.equal(q.offset, state.offset)
        assert torch.equal(q.absmax_scale, state.state2.absmax), f"{name}: second-level absmax differs"
        _, absmax = quant.nf4_quantize(w)
        scaled = (absmax - q.offset) / torch.repeat_interleave(q.absmax_scale, 256)[:absmax.numel()]
        _assert_nearest_and_rarely_different(q.absmax_codes, state.absmax, scaled, quant.dynamic_map_8bit())
        # Where the 8-bit absmax codes decode alike, the weights must agree to 1e-6.
        code = quant.dynamic_map_8bit()
        same = code[q.absmax_codes.long()] == code[state.absmax.long()]
        mask = torch.repeat_interleave(same, 64)[:w.numel()].view(w.shape)
        ours, theirs = quant.nf4_double_dequantize(q), bnbf.dequantize_4bit(bnb_packed, state)
        assert_tensors_close(ours[mask], theirs[mask], atol=1e-6, rtol=0, name=name)


@pytest.mark.parametrize("n, block", [(1000, 64), (4096, 64), (777, 128), (65, 32), (3, 64)])
def test_nf4_identical_to_bitsandbytes_on_odd_sizes(n, block):
    w = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.02
    packed, absmax = quant.nf4_quantize(w, block)
    bnb_packed, state = _bnb_nf4(w, block)
    assert torch.equal(packed, bnb_packed.reshape(-1)) and torch.equal(absmax, state.absmax)
    assert_tensors_close(quant.nf4_dequantize(packed, absmax, (n,), block),
                         bnbf.dequantize_4bit(bnb_packed, state).reshape(-1), atol=1e-7, rtol=0)


def test_blockwise_8bit_matches_bitsandbytes():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    codes, absmax = quant.quantize_blockwise_8bit(x, 256)
    bnb_codes, state = bnbf.quantize_blockwise(x, blocksize=256)
    assert torch.equal(absmax, state.absmax)
    scaled = x / torch.repeat_interleave(absmax, 256)[:x.numel()]
    _assert_nearest_and_rarely_different(codes, bnb_codes, scaled, quant.dynamic_map_8bit())
    assert_tensors_close(quant.dequantize_blockwise_8bit(codes, absmax, 256),
                         bnbf.dequantize_blockwise(bnb_codes, state), atol=2e-2 * float(absmax.max()), rtol=0)


def test_int8_rowwise_matches_bitsandbytes_vectorwise():
    w = torch.randn(64, 300, generator=torch.Generator().manual_seed(1)) * 0.05
    q, scale = quant.absmax_quantize(w, per_row=True)
    bnb_q, row_stats, _ = bnbf.int8_vectorwise_quant(w.half())
    assert_tensors_close(scale.squeeze(1) * 127, row_stats.float(), atol=1e-4, rtol=1e-3)
    assert (q != bnb_q).float().mean() < 0.01  # fp16 input in bnb: a few ties round differently


def test_pack_unpack_roundtrip_and_layout():
    codes = torch.tensor([1, 2, 15, 0, 7])
    packed = quant.pack_4bit(codes)
    assert packed.tolist() == [0x12, 0xF0, 0x70]
    assert quant.unpack_4bit(packed, 5).tolist() == codes.tolist()


def _max_half_gap(levels):
    return float((levels[1:] - levels[:-1]).max() / 2)


finite = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.sampled_from([1, 7, 32, 64]))
def test_roundtrip_error_bounds(values, block):
    w = torch.tensor(values, dtype=torch.float32)
    for quantize, dequantize, levels in [(quant.nf4_quantize, quant.nf4_dequantize, quant.NF4_LEVELS),
                                         (quant.int4_quantize, quant.int4_dequantize, quant.INT4_LEVELS)]:
        packed, absmax = quantize(w, block)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(w.numel() / 2)
        back = dequantize(packed, absmax, tuple(w.shape), block)
        bound = torch.repeat_interleave(absmax, block)[:w.numel()] * _max_half_gap(levels)
        assert ((back - w).abs() <= bound * (1 + 1e-5) + 1e-7).all()
        assert torch.equal(back[w == 0], torch.zeros_like(back[w == 0]))
    q, scale = quant.absmax_quantize(w)
    assert ((quant.absmax_dequantize(q, scale) - w).abs() <= scale / 2 * (1 + 1e-5) + 1e-7).all()
    q, s, z = quant.zeropoint_quantize(w)
    assert ((quant.zeropoint_dequantize(q, s, z) - w).abs() <= s * (1 + 1e-5) + 1e-7).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([2, 16, 64]))
def test_odd_shapes_keep_their_shape(rows, cols, block):
    w = torch.randn(rows, cols)
    for method in ("nf4", "int4"):
        quantize = quant.nf4_quantize if method == "nf4" else quant.int4_quantize
        dequantize = quant.nf4_dequantize if method == "nf4" else quant.int4_dequantize
        packed, absmax = quantize(w, block)
        assert absmax.numel() == math.ceil(rows * cols / block)
        assert dequantize(packed, absmax, (rows, cols), block).shape == (rows, cols)


def test_all_zero_blocks_stay_zero():
    w = torch.zeros(3, 64)
    w[1] = torch.linspace(-1, 1, 64)
    for method in ("nf4", "nf4-dq", "int4", "int8"):
        back = quant.QuantLinear(_linear_with(w), method).dequantized_weight()
        assert torch.equal(back[0], torch.zeros(64)) and torch.equal(back[2], torch.zeros(64)), method
        assert torch.isfinite(back).all()


def _linear_with(w, bias=None):
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([1.0, float("nan"), 2.0]), r"NaN or inf \(first at index \(1,\)\)"),
    (torch.tensor([[1.0, 2.0], [float("inf"), 0.0]]), r"NaN or inf \(first at index \(1, 0\)\)"),
    (torch.arange(10), "dtype torch.int64"),
    (torch.empty(0), "empty"),
])
def test_bad_input_is_named(bad, message):
    with pytest.raises(quant.QuantizationError, match=message):
        quant.nf4_quantize(bad)


def test_bad_shapes_and_blocks():
    with pytest.raises(quant.QuantizationError, match="must be 2-D"):
        quant.absmax_quantize(torch.randn(4), per_row=True)
    for block in (0, -64, 2.5, True):
        with pytest.raises(quant.QuantizationError, match="block_size must be a positive integer"):
            quant.nf4_quantize(torch.randn(64), block)
    with pytest.raises(quant.QuantizationError, match="unknown method 'fp8'"):
        quant.QuantLinear(nn.Linear(4, 4), "fp8")


def test_bits_per_parameter():
    assert quant.bits_per_parameter("nf4") == quant.blockwise_bits(4, 64) == 4.5
    assert quant.bits_per_parameter("int4", block_size=128) == quant.blockwise_bits(4, 128) == 4.25
    assert quant.blockwise_bits(3, 32) == 4.0  # the bit-width explorer's 3-bit codes, blocks of 32
    assert quant.bits_per_parameter("nf4-dq") == pytest.approx(4.127, abs=1e-3)


@pytest.mark.parametrize("method", quant.METHODS)
def test_quant_linear_stores_only_codes_and_constants(method):
    bits = 8 + 32 / 576 if method == "int8" else quant.bits_per_parameter(method)  # int8: one fp32 scale a row
    w = torch.randn(576, 576) * 0.02
    bias = torch.randn(576)
    layer = quant.QuantLinear(_linear_with(w, bias), method)
    names = {n for n, _ in layer.state_dict().items()}
    assert "weight" not in names and "bias" in names
    weight_bytes = quant.linear_weight_bytes(layer)
    assert quant.tensor_bytes(layer) == weight_bytes + 576 * 4  # plus the fp32 bias
    assert 576 * 576 * bits / 8 <= weight_bytes < 576 * 576 * (bits + 0.01) / 8
    x = torch.randn(5, 576)
    assert_tensors_close(layer(x), x @ layer.dequantized_weight().T + bias, atol=1e-5, rtol=1e-5)
    err = (layer.dequantized_weight() - w).abs().max()
    assert err < (0.002 if method == "int8" else 0.02)


def test_quantize_model_replaces_linear_layers_but_not_the_tied_head(tiny):
    model, tokenizer = tiny
    fp32_bytes = quant.linear_weight_bytes(model)
    total_fp32 = quant.tensor_bytes(model)
    n_linear = sum(isinstance(m, nn.Linear) for n, m in model.named_modules() if not n.endswith("lm_head"))
    quant.quantize_model(model, "nf4")
    assert sum(isinstance(m, quant.QuantLinear) for m in model.modules()) == n_linear
    assert isinstance(model.lm_head, nn.Linear)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    nf4_bytes = quant.linear_weight_bytes(model)
    batch = tokenizer(["quantized models still run"], return_tensors="pt")
    assert torch.isfinite(model(**batch).logits).all()
    assert nf4_bytes == pytest.approx(fp32_bytes * 4.5 / 32, rel=0.01)
    assert quant.tensor_bytes(model) == total_fp32 - fp32_bytes + nf4_bytes


def test_qlora_learns_on_cpu(tiny):
    """LoRA over NF4 base layers trains (bitsandbytes' own 4-bit path does not on CPU)."""
    from course_lib import classify, lora
    from course_lib.data import load_tickets
    from course_lib.training import TrainConfig
    model, tokenizer = tiny
    quant.quantize_model(model, "nf4")
    codes = {n: m.codes.clone() for n, m in model.named_modules() if isinstance(m, quant.QuantLinear)}
    lora.inject_lora(model, r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    with torch.no_grad():  # a no-grad forward first: this is what freezes bitsandbytes' CPU 4-bit LoRA
        model(**tokenizer(["warm up"], return_tensors="pt"))
    history = classify.train_classifier(model, tokenizer, load_tickets("train")[:8],
                                        TrainConfig(steps=20, batch_size=4, lr=3e-2), progress=False)
    assert sum(history["loss"][-5:]) / 5 < history["loss"][0] - 0.4
    for name, m in model.named_modules():
        if isinstance(m, quant.QuantLinear):
            assert torch.equal(m.codes, codes[name.replace(".base_layer", "")])
    layer = next(found for _, found in lora.lora_layers(model))
    with pytest.raises(ValueError, match="cannot merge into a quantized base"):
        layer.merge()


def test_quant_linear_backward_recomputes_instead_of_saving_the_weight():
    w = torch.randn(256, 128) * 0.05
    layer = quant.QuantLinear(_linear_with(w, torch.randn(256)), "nf4")
    x = torch.randn(4, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    assert not any(t.shape == w.shape for t in saved), "a full-size weight was saved for backward"
    out.pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (x2 @ layer.dequantized_weight().T + layer.bias).pow(2).sum().backward()
    assert_tensors_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_fake_quantize_matches_the_real_quantizers():
    w = torch.randn(96, 130, generator=torch.Generator().manual_seed(2)) * 0.02
    int4 = quant.int4_dequantize(*quant.int4_quantize(w, 64), tuple(w.shape), 64)
    assert_tensors_close(quant.fake_quantize(w, 4, 64), int4, atol=1e-7, rtol=0)
    q, scale = quant.absmax_quantize(w, per_row=True)
    assert_tensors_close(quant.fake_quantize(w, 8, None), quant.absmax_dequantize(q, scale), atol=1e-7, rtol=0)
    errors = [float((quant.fake_quantize(w, b, 64) - w).abs().mean()) for b in range(2, 9)]
    assert errors == sorted(errors, reverse=True)  # more bits, less error
    with pytest.raises(quant.QuantizationError, match="bits must be an integer from 2 to 8"):
        quant.fake_quantize(w, 1, 64)


@pytest.mark.parametrize("method", ["int8", "nf4", "nf4-dq"])
def test_linear_weight_bytes_equal_for_bitsandbytes_layers(method, tmp_path):
    """A model loaded the library way (BitsAndBytesConfig) holds as many bytes of codes and constants in its
    linear layers as the same model quantized by course_lib: the formats match, constants included."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from course_lib.models import tiny_model

    model, _ = tiny_model(seed=0, hidden_size=192)
    model.save_pretrained(tmp_path)
    config = (BitsAndBytesConfig(load_in_8bit=True) if method == "int8" else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                 bnb_4bit_use_double_quant=method == "nf4-dq"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config, device_map="cpu",
                                                  dtype=torch.float32)
    assert type(loaded.model.layers[0].self_attn.q_proj).__module__.startswith("bitsandbytes")
    fp32 = quant.linear_weight_bytes(model)
    quant.quantize_model(model, method)
    assert quant.linear_weight_bytes(loaded) == quant.linear_weight_bytes(model) < fp32 / 3


@pytest.mark.parametrize("quantize", [quant.absmax_quantize, quant.zeropoint_quantize])
def test_bit_widths_beyond_the_int8_codes_are_refused(quantize):
    """16-bit codes cast to int8 would wrap around silently (32767 -> -1): refused, as is 1 bit."""
    w = torch.randn(4, 8)
    for bits in (1, 9, 16, 4.0):
        with pytest.raises(quant.QuantizationError, match="bits must be an integer from 2 to 8"):
            quantize(w, bits=bits)
    assert quantize(w, bits=2)[0].abs().max() <= 2


def test_snr_in_db():
    w = torch.ones(100)
    assert quant.quantization_snr_db(w, w) == float("inf")
    assert abs(quant.quantization_snr_db(w, w * 1.1) - 20.0) < 1e-4
