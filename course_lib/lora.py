"""LoRA: Low-Rank Adaptation of large language models (Hu et al., 2021, arXiv:2106.09685).

A frozen linear layer ``y = W x + b`` gets a trainable low-rank update:

    y = W x + b + (alpha / r) * B A dropout(x),   A: (r, d_in), B: (d_out, r)

A starts Kaiming-uniform and B starts at zero, so the adapted model equals the base model at step 0
(exactly PEFT's default initialisation). rsLoRA (Kalajdzievski, 2023, arXiv:2312.03732) scales by
alpha / sqrt(r) instead. Merging folds the update into the weight, ``W <- W + (alpha / r) B A``, so
inference costs nothing extra; unmerging subtracts it again.

Adapters are saved in PEFT's on-disk format (``adapter_config.json`` + ``adapter_model.safetensors``),
so ``peft.PeftModel.from_pretrained`` loads ours and :func:`load_adapter` loads PEFT's.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .quant import QuantLinear

DEFAULT_TARGETS = ("q_proj", "v_proj")
# every linear layer of a Llama-style block (QLoRA's recipe: Dettmers et al., 2023, adapt them all)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig:
    """The adapters :func:`inject_lora` added to a model (``model.lora_config``), with PEFT's ``LoraConfig`` names:
    what :func:`save_adapter` writes to ``adapter_config.json``. ``target_modules``: a regex or sorted names."""
    r: int
    lora_alpha: float
    lora_dropout: float
    use_rslora: bool
    target_modules: str | tuple[str, ...]
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def lora_scaling(alpha: float, r: int, use_rslora: bool = False) -> float:
    """The factor on the low-rank update: alpha / r (LoRA) or alpha / sqrt(r) (rsLoRA)."""
    if r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (``base_layer``) plus a trainable rank-``r`` update ``lora_B @ lora_A``.

    The base may also be a quantized :class:`~course_lib.quant.QuantLinear`: that is QLoRA (the frozen
    weights stay 4-bit; gradients flow through their on-the-fly dequantization into A and B).
    """

    def __init__(self, base_layer: nn.Linear | QuantLinear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, QuantLinear)):
            raise TypeError(f"LoRALinear wraps nn.Linear or QuantLinear, got {type(base_layer).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base_layer = base_layer.requires_grad_(False)
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = lora_scaling(alpha, r, use_rslora)
        quantized = isinstance(base_layer, QuantLinear)
        factory = {"device": (base_layer.codes if quantized else base_layer.weight).device,
                   "dtype": base_layer.compute_dtype if quantized else base_layer.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base_layer.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(base_layer.out_features, r, **factory))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # set by adapters_disabled(): the layer computes its base alone
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """PEFT's default: A ~ Kaiming-uniform(a=sqrt(5)) (as nn.Linear), B = 0, so the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to the base weight: scaling * B @ A, shape (d_out, d_in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        return result + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (W += scaling * B A); forward then costs one matmul."""
        if isinstance(self.base_layer, QuantLinear):
            raise ValueError("cannot merge into a quantized base weight: the sum is not representable in its "
                             "4/8-bit codes; dequantize the model (or reload it in full precision) first")
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (W -= scaling * B A)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def _matches(name: str, targets: str | Iterable[str]) -> bool:
    """PEFT's rule: a string is a regex that must match the full module name; a list matches a module
    whose name is one of its entries or ends with ``.<entry>``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                target_modules: str | Iterable[str] = DEFAULT_TARGETS, use_rslora: bool = False) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap each targeted ``nn.Linear`` (or ``QuantLinear``) in a
    :class:`LoRALinear`.

    ``target_modules``: module-name suffixes (default q_proj, v_proj) or one full-match regex, as in PEFT.
    Returns the same model, modified in place. Raises if nothing matched.
    """
    if not isinstance(target_modules, str):
        target_modules = tuple(target_modules)
    if next(lora_layers(model), None) is not None:
        raise ValueError("the model has LoRA adapters already: remove them first (lora.unload_lora(model)), or "
                         "merge them (lora.merge_lora) and load the model again")
    model.requires_grad_(False)
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, QuantLinear)) and _matches(name, target_modules)]
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, (nn.Linear, QuantLinear))})
        raise ValueError(f"target_modules={target_modules!r} matched no nn.Linear; this model's linear "
                         f"layers are named {linear}")
    for name, module in targets:
        model.set_submodule(name, LoRALinear(module, r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora))
    model.lora_config = LoraConfig(r, alpha, dropout, use_rslora, target_modules if isinstance(target_modules, str)
                                   else tuple(sorted(target_modules)))
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Every (name, LoRALinear) in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``model`` computes as its frozen base, every LoRA adapter switched off (PEFT's
    ``disable_adapter()``; a PEFT model is handed to that): the reference policy of DPO, or the base model's
    answer for comparison, without a second copy of the weights."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
        return
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.merged for layer in layers):
        raise ValueError("the adapters are merged into the weights: unmerge_lora(model) before disabling them")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, state in zip(layers, previous):
            layer.disabled = state


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter of ``model`` into its base weight (in place)."""
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` (in place)."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """Remove every adapter: each :class:`LoRALinear` is replaced by its base layer, unmerged first, so the model
    is the base model again (PEFT's ``unload()``). In place; returns ``model``."""
    for name, layer in list(lora_layers(model)):
        layer.unmerge()
        model.set_submodule(name, layer.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once, as PEFT does. A quantized weight counts as
    the parameters it stands for, not its storage: a :class:`QuantLinear` (whose codes are buffers) as
    in_features x out_features, a bitsandbytes 4-bit weight (two codes per byte) as twice its bytes."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    return trainable, total


def lora_parameter_count(shapes: Iterable[tuple[int, int]], r: int) -> int:
    """Trainable parameters of rank-``r`` adapters on linear layers of the given (d_out, d_in) shapes:
    each adds r * (d_in + d_out)."""
    return sum(r * (d_in + d_out) for d_out, d_in in shapes)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's key names (``base_model.model.<module>.lora_A.weight``)."""
    state = {}
    for name, layer in lora_layers(model):
        state[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous()
        state[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    return state


def save_adapter(model: nn.Module, folder: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Save the adapters of ``model`` in PEFT's format (merged or not: A and B are saved as they are)."""
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("model has no LoRA adapters: call inject_lora (or load_adapter) first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), folder / WEIGHTS_NAME, metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path or getattr(model.config, "_name_or_path", None),
        "r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
        "use_rslora": config.use_rslora, "target_modules": (config.target_modules if isinstance(config.target_modules, str)
                                                            else list(config.target_modules)),
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "use_dora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (folder / CONFIG_NAME).write_text(json.dumps(peft_config, indent=2) + "\n")
    return folder


_UNSUPPORTED = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "rank_pattern": {},
                "alpha_pattern": {}, "modules_to_save": None}


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Inject adapters as described by a PEFT ``adapter_config.json`` in ``folder`` and load their weights."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a saved LoRA adapter folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: invalid JSON ({err})") from err
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type is {config.get('peft_type')!r}, only 'LORA' is supported")
    for key, plain in _UNSUPPORTED.items():
        if config.get(key, plain) not in (plain, None, [], {}):
            raise ValueError(f"{config_path}: {key}={config[key]!r} is not supported by course_lib.lora")
    inject_lora(model, r=config["r"], alpha=config["lora_alpha"], dropout=config.get("lora_dropout", 0.0),
                target_modules=config["target_modules"], use_rslora=config.get("use_rslora", False))
    state = load_file(weights_path)
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: adapter keys do not match the model "
                         f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
    with torch.no_grad():
        for name, layer in lora_layers(model):
            for part in ("lora_A", "lora_B"):
                value = state[f"{_PEFT_PREFIX}{name}.{part}.weight"]
                target = getattr(layer, part)
                if value.shape != target.shape:
                    raise ValueError(f"{weights_path}: {name}.{part} has shape {tuple(value.shape)}, "
                                     f"the model needs {tuple(target.shape)}")
                target.copy_(value)
    return model


def adapter_size_bytes(folder: str | Path) -> int:
    """Bytes on disk of a saved adapter folder."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
