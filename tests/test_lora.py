"""course_lib.lora against PEFT: same outputs, gradients, parameter counts and files."""
import copy
import json
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from course_lib import lora
from course_lib.grading import assert_tensors_close


def _randomise_adapters(model, seed=1):
    """Give every adapter non-zero A and B (B starts at zero, which would hide scaling bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g) * 0.1)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def _copy_into_peft(ours, peft_model):
    """Copy our A/B into the PEFT model's matching modules."""
    peft_modules = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours):
            target = peft_modules[name]
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)


def _pair(model, r=4, alpha=12.0, targets=("q_proj", "v_proj"), use_rslora=False):
    base = copy.deepcopy(model)
    ours = lora.inject_lora(copy.deepcopy(model), r=r, alpha=alpha, target_modules=targets, use_rslora=use_rslora)
    _randomise_adapters(ours)
    theirs = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                             lora_dropout=0.0, use_rslora=use_rslora, task_type="CAUSAL_LM"))
    _copy_into_peft(ours, theirs)
    return ours, theirs


def _forward_backward(ours, theirs, batch, atol):
    """Logits equal within ``atol``; then backpropagate both losses. Returns PEFT's modules by name."""
    out_ours = ours(**batch, labels=batch["input_ids"])
    out_theirs = theirs(**batch, labels=batch["input_ids"])
    assert_tensors_close(out_ours.logits, out_theirs.logits, atol=atol, rtol=0)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    return dict(theirs.base_model.model.named_modules())


def _batch(tokenizer):
    return tokenizer(["LoRA adds a low-rank update.", "The base weights stay frozen while we train."],
                     return_tensors="pt", padding=True)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_outputs_and_gradients_equal_peft(tiny, use_rslora):
    model, tokenizer = tiny
    ours, theirs = _pair(model, use_rslora=use_rslora)
    peft_modules = _forward_backward(ours, theirs, _batch(tokenizer), atol=1e-6)
    for name, layer in lora.lora_layers(ours):
        assert_tensors_close(layer.lora_A.grad, peft_modules[name].lora_A["default"].weight.grad, atol=1e-6, rtol=0,
                             name=f"{name}.lora_A.grad")
        assert_tensors_close(layer.lora_B.grad, peft_modules[name].lora_B["default"].weight.grad, atol=1e-6, rtol=0,
                             name=f"{name}.lora_B.grad")


def test_initialisation_matches_peft_and_leaves_model_unchanged(tiny):
    model, tokenizer = tiny
    batch = _batch(tokenizer)
    with torch.no_grad():
        before = model(**batch).logits
    ours = lora.inject_lora(copy.deepcopy(model), r=8, alpha=16)
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    peft_modules = dict(theirs.base_model.model.named_modules())
    for name, layer in lora.lora_layers(ours):
        peft_a = peft_modules[name].lora_A["default"].weight
        assert torch.count_nonzero(layer.lora_B) == 0
        assert torch.count_nonzero(peft_modules[name].lora_B["default"].weight) == 0
        # Kaiming-uniform with a=sqrt(5): U(-1/sqrt(d_in), 1/sqrt(d_in)), std = bound / sqrt(3), in both.
        bound = 1 / math.sqrt(layer.base_layer.in_features)
        for a in (layer.lora_A, peft_a):
            assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
            assert abs(a.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    with torch.no_grad():
        assert_tensors_close(ours(**batch).logits, before, atol=0, rtol=0)


def test_trainable_parameter_counts_equal_peft(tiny):
    model, _ = tiny
    for r, targets in [(4, ("q_proj", "v_proj")), (16, ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))]:
        ours, theirs = _pair(model, r=r, targets=targets)
        assert lora.count_parameters(ours) == theirs.get_nb_trainable_parameters()
        shapes = [tuple(layer.base_layer.weight.shape) for _, layer in lora.lora_layers(ours)]
        assert lora.lora_parameter_count(shapes, r) == lora.count_parameters(ours)[0]


def test_merge_and_unmerge(tiny):
    model, tokenizer = tiny
    ours, _ = _pair(model)
    batch = _batch(tokenizer)
    weights = {n: layer.base_layer.weight.clone() for n, layer in lora.lora_layers(ours)}
    with torch.no_grad():
        unmerged = ours(**batch).logits
        lora.merge_lora(ours)
        merged = ours(**batch).logits
        lora.merge_lora(ours)  # merging twice must not add the update twice
        assert_tensors_close(ours(**batch).logits, merged, atol=0, rtol=0)
        lora.unmerge_lora(ours)
        again = ours(**batch).logits
    assert_tensors_close(merged, unmerged, atol=1e-5, rtol=0)
    assert_tensors_close(again, unmerged, atol=1e-5, rtol=0)
    for name, layer in lora.lora_layers(ours):
        assert_tensors_close(layer.base_layer.weight, weights[name], atol=1e-6, rtol=0, name=name)
    with torch.no_grad():
        base = model(**batch).logits
    assert (unmerged - base).abs().max() > 1e-3  # the adapters really change the output


def test_unload_restores_the_base_model_and_allows_another_adapter(tiny):
    model, tokenizer = tiny
    batch = _batch(tokenizer)
    with torch.no_grad():
        base = model(**batch).logits
    lora.inject_lora(model, r=4, alpha=8)
    for _, layer in lora.lora_layers(model):
        torch.nn.init.normal_(layer.lora_B, std=0.5)
    lora.merge_lora(model)  # unload must take a merged update back out of the base weight
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        lora.inject_lora(model, r=8)
    assert lora.unload_lora(model) is model
    assert not list(lora.lora_layers(model)) and not hasattr(model, "lora_config")
    with torch.no_grad():
        assert_tensors_close(model(**batch).logits, base, atol=1e-5, rtol=0)
    lora.inject_lora(model, r=8, target_modules=("k_proj",))
    assert {n.rsplit(".", 1)[-1] for n, _ in lora.lora_layers(model)} == {"k_proj"}


def test_merged_weight_equals_peft_merge_and_unload(tiny):
    model, _ = tiny
    ours, theirs = _pair(model, r=4, alpha=8)
    lora.merge_lora(ours)
    merged_peft = theirs.merge_and_unload()
    peft_weights = dict(merged_peft.named_parameters())
    for name, layer in lora.lora_layers(ours):
        assert_tensors_close(layer.base_layer.weight, peft_weights[f"{name}.weight"], atol=1e-6, rtol=0, name=name)


def test_dropout_only_on_adapter_path():
    torch.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(16, 8), r=2, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 16)
    layer.train()
    # Base path untouched: subtracting the base output leaves only the (dropped-out) adapter term.
    adapter = layer(x) - layer.base_layer(x)
    layer.eval()
    full = layer(x) - layer.base_layer(x)
    assert not torch.allclose(adapter, full)
    with torch.no_grad():
        layer.lora_B.zero_()
    layer.train()
    assert_tensors_close(layer(x), layer.base_layer(x), atol=0, rtol=0)


def test_scaling_rules():
    assert lora.lora_scaling(16, 8) == 2.0
    assert lora.lora_scaling(16, 4, use_rslora=True) == 8.0
    assert math.isclose(lora.lora_scaling(8, 2, use_rslora=True), 8 / math.sqrt(2))
    with pytest.raises(ValueError, match="rank"):
        lora.lora_scaling(16, 0)


def test_only_adapters_are_trainable(tiny):
    model, _ = tiny
    lora.inject_lora(model, r=2, alpha=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(("lora_A", "lora_B")) for n in names)
    assert all(("q_proj" in n or "v_proj" in n) for n in names)


def test_target_matching_errors_name_the_layers(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"matched no nn.Linear.*q_proj"):
        lora.inject_lora(model, target_modules=["query"])


def test_regex_targets_like_peft(tiny):
    model, _ = tiny
    pattern = r".*layers\.0\.self_attn\.(q|k)_proj"
    ours = lora.inject_lora(copy.deepcopy(model), target_modules=pattern)
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(target_modules=pattern))
    assert [n for n, _ in lora.lora_layers(ours)] == [
        n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if hasattr(m, "lora_A")
        and isinstance(m.lora_A, nn.ModuleDict)]


def test_our_adapter_loads_in_peft(tiny, tmp_path):
    model, tokenizer = tiny
    ours, _ = _pair(model, r=4, alpha=8)
    folder = lora.save_adapter(ours, tmp_path / "adapter", base_model_name_or_path="tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), folder)
    batch = _batch(tokenizer)
    with torch.no_grad():
        assert_tensors_close(loaded(**batch).logits, ours(**batch).logits, atol=1e-6, rtol=0)
    assert lora.adapter_size_bytes(folder) > 4 * lora.count_parameters(ours)[0]


def test_peft_adapter_loads_in_ours(tiny, tmp_path):
    model, tokenizer = tiny
    _, theirs = _pair(model, r=4, alpha=8, use_rslora=True)
    theirs.save_pretrained(tmp_path / "peft")
    ours = lora.load_adapter(copy.deepcopy(model), tmp_path / "peft")
    assert ours.lora_config.use_rslora is True and ours.lora_config.r == 4
    batch = _batch(tokenizer)
    with torch.no_grad():
        assert_tensors_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-6, rtol=0)


def test_load_adapter_rejects_bad_folders(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load_adapter(model, tmp_path)
    ours, _ = _pair(model)
    folder = lora.save_adapter(ours, tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        lora.load_adapter(copy.deepcopy(model), folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 3}))
    with pytest.raises(ValueError, match="shape"):
        lora.load_adapter(copy.deepcopy(model), folder)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        lora.load_adapter(copy.deepcopy(model), folder)


@pytest.mark.slow
def test_equal_to_peft_on_smollm2(smollm2):
    model, tokenizer = smollm2
    ours, theirs = _pair(model, r=16, alpha=32)
    peft_modules = _forward_backward(ours, theirs, _batch(tokenizer), atol=1e-5)
    name, layer = next(lora.lora_layers(ours))
    peft_layer = peft_modules[name]
    assert_tensors_close(layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, atol=1e-6, rtol=1e-4)
    assert lora.count_parameters(ours) == theirs.get_nb_trainable_parameters() == (921_600, 135_436_608)


def test_parameter_counts_of_quantized_models_count_the_quantized_weights(tiny, tmp_path):
    """Quantizing must not shrink the total (which would overstate the trainable share): course_lib's QuantLinear
    and a bitsandbytes 4-bit model loaded the library way count as the fp32 model does, and PEFT agrees."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from course_lib import quant

    model, _ = tiny
    _, total = lora.count_parameters(model)
    model.save_pretrained(tmp_path)
    quant.quantize_model(model, "nf4-dq")
    lora.inject_lora(model, r=4)
    trainable, quantized_total = lora.count_parameters(model)
    assert quantized_total == total + trainable

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    bnb_model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=config, device_map="cpu")
    peft_model = get_peft_model(bnb_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert lora.count_parameters(peft_model) == peft_model.get_nb_trainable_parameters() == (trainable, total + trainable)
