"""Weight quantization: INT8 absmax and zero-point, blockwise INT4, NF4 and double quantization.

Each quantizer returns integer codes plus the constants needed to undo it, and a matching dequantizer:

* absmax INT8 (symmetric): ``q = round(w * 127 / absmax(w))`` in [-127, 127], per tensor or per output row;
* zero-point INT8 (asymmetric): ``q = round(w / s) + z`` in [-128, 127] with ``s = (max - min) / 255``;
* blockwise INT4: absmax per block of 64 weights, ``q`` in [-7, 7], stored as 4-bit codes ``q + 8``;
* NF4 (Dettmers et al., 2023, "QLoRA", arXiv:2305.14314): per block of 64 weights, scale by 1/absmax and
  pick the nearest of 16 levels placed at quantiles of a normal distribution (ties go to the lower level);
* double quantization (same paper): the fp32 absmax of every NF4 block is itself quantized to 8 bits
  (dynamic-exponent code, blocks of 256, after subtracting their mean), which brings NF4 from 4.5 to
  about 4.127 bits per parameter.

4-bit codes are packed two per byte, the first in the high nibble (bitsandbytes' layout, so our packed
NF4 bytes equal bitsandbytes' byte for byte). A flattened tensor whose length is not a multiple of the
block size ends with a shorter block with its own absmax, as in bitsandbytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The 16 NF4 levels (QLoRA, appendix E; bitsandbytes' table): quantiles of N(0, 1) scaled to [-1, 1], with
# an exact zero. Asymmetric: 7 negative and 8 positive levels.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])
INT4_LEVELS = torch.arange(-8, 8, dtype=torch.float32) / 7  # code c means (c - 8) / 7; code 0 is unused
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class QuantizationError(ValueError):
    """Input a quantizer cannot take; the message names the problem."""


def _check(w: torch.Tensor, name: str = "weight", two_d: bool = False) -> None:
    if not isinstance(w, torch.Tensor):
        raise QuantizationError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise QuantizationError(f"{name} has dtype {w.dtype}; quantizers take float32, float16 or bfloat16")
    if two_d and w.dim() != 2:
        raise QuantizationError(f"{name} must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise QuantizationError(f"{name} is empty")
    bad = ~torch.isfinite(w)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise QuantizationError(f"{name} contains NaN or inf (first at index {index}); quantizing it would "
                                f"silently corrupt its whole block")


def _check_block(block_size: int) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
        raise QuantizationError(f"block_size must be a positive integer, got {block_size!r}")


# --- INT8 ------------------------------------------------------------------------------------------------

def _check_bits(bits: int) -> None:
    """Codes are stored as int8: 2 to 8 bits fit; more would overflow silently, 1 leaves no level but 0."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QuantizationError(f"bits must be an integer from 2 to 8 (codes are stored as int8), got {bits!r}")


def absmax_quantize(w: torch.Tensor, bits: int = 8, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization: ``q = round(w / s)``, ``s = absmax / (2^(bits-1) - 1)``.

    Returns (int8 codes, fp32 scale); the scale is per tensor, or per output row (shape (rows, 1)).
    """
    _check(w, two_d=per_row)
    _check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    w = w.float()
    absmax = w.abs().amax(dim=1, keepdim=True) if per_row else w.abs().max()
    scale = absmax.clamp_min(1e-12) / qmax
    return torch.round(w / scale).clamp(-qmax, qmax).to(torch.int8), scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Undo :func:`absmax_quantize`: ``w ~ q * s``."""
    return q.float() * scale


def zeropoint_quantize(w: torch.Tensor, bits: int = 8,
                       per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (zero-point) quantization onto [-2^(bits-1), 2^(bits-1) - 1]:
    ``s = (max - min) / (2^bits - 1)``, ``z = round(-min / s) - 2^(bits-1)``, ``q = round(w / s) + z``,
    with min <= 0 <= max (the range is widened to include zero).

    Uses every code even when the weights are not centred on zero. Returns (int8 codes, scale, zero point).
    """
    _check(w, two_d=per_row)
    _check_bits(bits)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = w.float()
    # The range always includes 0, so that 0.0 is exactly representable (padding, ReLU zeros, pruned weights).
    lo = (w.amin(dim=1, keepdim=True) if per_row else w.min()).clamp_max(0)
    hi = (w.amax(dim=1, keepdim=True) if per_row else w.max()).clamp_min(0)
    scale = (hi - lo).clamp_min(1e-12) / (qmax - qmin)
    zero = torch.round(-lo / scale) + qmin
    q = (torch.round(w / scale) + zero).clamp(qmin, qmax)
    return q.to(torch.int8), scale, zero


def zeropoint_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Undo :func:`zeropoint_quantize`: ``w ~ (q - z) * s``."""
    return (q.float() - zero) * scale


# --- 4-bit packing and blocks ----------------------------------------------------------------------------

def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes in [0, 15] two per byte, first in the high nibble; an odd count is padded with code 0
    (the quantizers pad with the code of 0.0 themselves)."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = F.pad(flat, (0, 1))
    return (flat[0::2] << 4) | flat[1::2]


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` codes of :func:`pack_4bit`'s output, as int64 indices."""
    out = torch.empty(packed.numel() * 2, dtype=torch.int64, device=packed.device)
    out[0::2] = packed >> 4
    out[1::2] = packed & 0xF
    return out[:n]


def _blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flatten to fp32 and cut into rows of ``block_size``, zero-padding the last (zeros never raise an
    absmax, so a short last block keeps its own absmax over its real values)."""
    flat = w.reshape(-1).float()
    pad = -flat.numel() % block_size
    return F.pad(flat, (0, pad)).view(-1, block_size)


def _scaled_blocks(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each value divided by its block's absmax (as a multiplication by the reciprocal, like bitsandbytes),
    clamped to [-1, 1] and flattened to ``w.numel()`` values; and the fp32 absmax of every block."""
    blocks = _blocks(w, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp_min(1e-38)).unsqueeze(1)).clamp(-1, 1)
    return scaled.reshape(-1)[:w.numel()], absmax


def _scale_blocks_back(values: torch.Tensor, absmax: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Multiply the first ``n`` values block by block by their absmax (inverse of :func:`_scaled_blocks`)."""
    if values.numel() != n or n % block_size:
        values = F.pad(values[:n], (0, -n % block_size))
    return (values.view(-1, block_size) * absmax.unsqueeze(1)).view(-1)[:n]


def _nearest_level(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level (levels sorted); a value exactly halfway goes to the lower level."""
    midpoints = (levels[:-1] + levels[1:]) / 2
    return torch.bucketize(scaled, midpoints.to(scaled.device))


_GRID = 2048  # cells over [-1, 1] for the 4-bit fast path: far narrower than any gap between 4-bit levels


def _nearest_level_4bit(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Same result as :func:`_nearest_level` for values in [-1, 1], about 8x faster than a binary search:
    a lookup table over a fine grid gives the lowest level a grid cell can round to, and one comparison
    with the next midpoint decides between it and the level above (a cell never holds two midpoints)."""
    midpoints = (levels[:-1] + levels[1:]) / 2
    assert float((midpoints[1:] - midpoints[:-1]).min()) > 4 / _GRID
    edges = torch.linspace(-1, 1, _GRID + 1, device=scaled.device)[:-1] - 1e-6
    lowest = torch.bucketize(edges, midpoints.to(scaled.device), out_int32=True)
    upper = torch.cat([midpoints, midpoints.new_tensor([float("inf")])]).to(scaled.device)
    cell = ((scaled + 1) * (_GRID / 2)).to(torch.int32).clamp_(0, _GRID - 1)
    code = lowest[cell]
    return code + (scaled > upper[code])


def _byte_table(levels: torch.Tensor) -> torch.Tensor:
    """(256, 2): the two levels a packed byte stands for (high nibble first)."""
    return torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=1)


def _quantize_4bit_blocks(w: torch.Tensor, block_size: int, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(w)
    _check_block(block_size)
    scaled, absmax = _scaled_blocks(w, block_size)
    if w.numel() % 2:  # an odd count fills its last byte with the code of 0.0, as bitsandbytes does
        scaled = F.pad(scaled, (0, 1))
    return pack_4bit(_nearest_level_4bit(scaled, levels)), absmax


def _dequantize_4bit_blocks(packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, block_size: int,
                            levels: torch.Tensor) -> torch.Tensor:
    n = math.prod(shape)
    values = F.embedding(packed.to(torch.int32), _byte_table(levels).to(packed.device)).view(-1)
    return _scale_blocks_back(values, absmax, n, block_size).view(shape)


def nf4_quantize(w: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4: per block, scale by 1/absmax and take the nearest NF4 level. Returns (packed uint8, fp32 absmax)."""
    return _quantize_4bit_blocks(w, block_size, NF4_LEVELS)


def nf4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...],
                   block_size: int = 64) -> torch.Tensor:
    """Undo :func:`nf4_quantize`: ``w ~ level[code] * absmax[block]`` (fp32)."""
    return _dequantize_4bit_blocks(packed, absmax, torch.Size(shape), block_size, NF4_LEVELS)


def int4_quantize(w: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform blockwise INT4: absmax per block, ``q = round(7 w / absmax)`` in [-7, 7], stored as q + 8."""
    return _quantize_4bit_blocks(w, block_size, INT4_LEVELS)


def int4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...],
                    block_size: int = 64) -> torch.Tensor:
    """Undo :func:`int4_quantize`."""
    return _dequantize_4bit_blocks(packed, absmax, torch.Size(shape), block_size, INT4_LEVELS)


# --- Double quantization ---------------------------------------------------------------------------------

def dynamic_map_8bit(max_exponent_bits: int = 7) -> torch.Tensor:
    """The 256 sorted values of the signed 8-bit dynamic-exponent code (Dettmers, 2015, arXiv:1511.04561)
    that QLoRA uses for the quantization constants: for each exponent 10^-6 .. 10^0, evenly spaced
    fractions in (0.1, 1) whose count doubles with the exponent, both signs, plus 0 and 1."""
    data: list[float] = []
    non_sign_bits = 7
    for i in range(max_exponent_bits):
        edges = torch.linspace(0.1, 1, 2 ** (i + non_sign_bits - max_exponent_bits) + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist() + (-scale * means).tolist()  # in float32, as bitsandbytes does
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def quantize_blockwise_8bit(x: torch.Tensor, block_size: int = 256,
                            code: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization onto a 256-value code (default: :func:`dynamic_map_8bit`):
    per block, scale by 1/absmax and take the nearest code value. Returns (uint8 codes, fp32 absmax)."""
    _check(x, "values")
    _check_block(block_size)
    code = dynamic_map_8bit() if code is None else code
    scaled, absmax = _scaled_blocks(x, block_size)
    return _nearest_level(scaled, code).to(torch.uint8).view(x.shape), absmax


def dequantize_blockwise_8bit(q: torch.Tensor, absmax: torch.Tensor, block_size: int = 256,
                              code: torch.Tensor | None = None) -> torch.Tensor:
    """Undo :func:`quantize_blockwise_8bit`."""
    code = (dynamic_map_8bit() if code is None else code).to(q.device)
    return _scale_blocks_back(code[q.reshape(-1).long()], absmax, q.numel(), block_size).view(q.shape)


@dataclass
class NF4DoubleQuant:
    """NF4 codes whose per-block absmax is itself quantized (QLoRA's double quantization)."""
    packed: torch.Tensor       # uint8, two NF4 codes per byte
    absmax_codes: torch.Tensor  # uint8, one per block of `block_size` weights
    absmax_scale: torch.Tensor  # fp32, one per block of `block_size2` absmax values
    offset: torch.Tensor        # fp32 scalar: mean absmax, subtracted before quantizing
    shape: tuple[int, ...]
    block_size: int = 64
    block_size2: int = 256

    def tensors(self) -> list[torch.Tensor]:
        return [self.packed, self.absmax_codes, self.absmax_scale, self.offset]


def nf4_double_quantize(w: torch.Tensor, block_size: int = 64, block_size2: int = 256) -> NF4DoubleQuant:
    """NF4 with double quantization: the fp32 absmax of each block of ``block_size`` weights is replaced by an
    8-bit code (blocks of ``block_size2`` absmaxes, after subtracting their mean)."""
    packed, absmax = nf4_quantize(w, block_size)
    offset = absmax.mean()
    codes, scale = quantize_blockwise_8bit(absmax - offset, block_size2)
    return NF4DoubleQuant(packed, codes, scale, offset, tuple(w.shape), block_size, block_size2)


def nf4_double_dequantize(q: NF4DoubleQuant) -> torch.Tensor:
    """Undo :func:`nf4_double_quantize` (fp32)."""
    absmax = dequantize_blockwise_8bit(q.absmax_codes, q.absmax_scale, q.block_size2) + q.offset
    return nf4_dequantize(q.packed, absmax, q.shape, q.block_size)


def fake_quantize(w: torch.Tensor, bits: int, block_size: int | None = 64) -> torch.Tensor:
    """Quantize-dequantize with uniform symmetric absmax levels k / (2^(bits-1) - 1), k in
    [-(2^(bits-1) - 1), 2^(bits-1) - 1], per block of ``block_size`` weights (per output row if None).
    Returns the weights the quantized model would compute with; for exploring bit widths (2 to 8)."""
    _check(w, two_d=block_size is None)
    _check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    if block_size is None:
        absmax = w.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-38)
        return (torch.round(w.float() / absmax * qmax).clamp(-qmax, qmax) * absmax / qmax).to(w.dtype)
    _check_block(block_size)
    blocks = _blocks(w, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-38)
    q = torch.round(blocks / absmax * qmax).clamp(-qmax, qmax) * absmax / qmax
    return q.reshape(-1)[:w.numel()].view(w.shape).to(w.dtype)


def blockwise_bits(bits: int, block_size: int) -> float:
    """Storage cost per weight of ``bits``-bit codes with one fp32 constant per block: bits + 32/B."""
    return bits + 32 / block_size


def bits_per_parameter(method: str, block_size: int = 64, block_size2: int = 256) -> float:
    """Storage cost per weight, constants included: 8 (int8, per-tensor scale ~ 0), 4 + 32/B for 4-bit
    blockwise with fp32 absmax, and 4 + 8/B + 32/(B * B2) for NF4 with double quantization."""
    if method in ("int4", "nf4"):
        return blockwise_bits(4, block_size)
    if method == "nf4-dq":
        return 4 + 8 / block_size + 32 / (block_size * block_size2)
    if method == "int8":
        return 8.0
    raise QuantizationError(f"unknown method {method!r}; choose int8, int4, nf4 or nf4-dq")


# --- Quantized linear layers -----------------------------------------------------------------------------

METHODS = ("int8", "int4", "nf4", "nf4-dq")


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantized (codes + constants only) and dequantized on the fly
    in ``forward``. ``method``: int8 (absmax per output row), int4 / nf4 (blocks of ``block_size``), or
    nf4-dq (NF4 with double quantization). The bias, if any, stays in full precision."""

    def __init__(self, linear: nn.Linear, method: str = "nf4", block_size: int = 64):
        super().__init__()
        if method not in METHODS:
            raise QuantizationError(f"unknown method {method!r}; choose one of {METHODS}")
        weight = linear.weight.detach()
        _check(weight, two_d=True)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.method, self.block_size, self.compute_dtype = method, block_size, weight.dtype
        if method == "int8":
            codes, scale = absmax_quantize(weight, per_row=True)
            self.register_buffer("codes", codes)
            self.register_buffer("scale", scale)
        elif method == "nf4-dq":
            q = nf4_double_quantize(weight, block_size)
            for name, t in zip(("codes", "absmax_codes", "absmax_scale", "offset"), q.tensors()):
                self.register_buffer(name, t)
        else:
            quantize = nf4_quantize if method == "nf4" else int4_quantize
            codes, absmax = quantize(weight, block_size)
            self.register_buffer("codes", codes)
            self.register_buffer("absmax", absmax)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer computes with, rebuilt from codes and constants."""
        if self.method == "int8":
            w = absmax_dequantize(self.codes, self.scale)
        elif self.method == "nf4-dq":
            w = nf4_double_dequantize(NF4DoubleQuant(self.codes, self.absmax_codes, self.absmax_scale,
                                                     self.offset, self.weight_shape, self.block_size))
        elif self.method == "nf4":
            w = nf4_dequantize(self.codes, self.absmax, self.weight_shape, self.block_size)
        else:
            w = int4_dequantize(self.codes, self.absmax, self.weight_shape, self.block_size)
        return w.to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _DequantizedMatmul.apply(x, self)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}, "
                f"block_size={self.block_size}")


class _DequantizedMatmul(torch.autograd.Function):
    """``x @ W^T`` with W dequantized on the fly, in forward *and again in backward*, so that autograd
    keeps only the packed codes, never a full-precision copy of W (the memory point of QLoRA)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantized_weight().to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight = ctx.layer.dequantized_weight().to(grad_out.dtype)
        return grad_out @ weight, None


def quantize_model(model: nn.Module, method: str = "nf4", block_size: int = 64,
                   skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (except those whose name ends with an entry of ``skip``;
    the LM head is tied to the embedding in SmolLM2) by a :class:`QuantLinear`, in place."""
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not n.endswith(skip)]
    if not targets:
        raise QuantizationError("the model has no nn.Linear layer to quantize")
    for name, module in targets:
        model.set_submodule(name, QuantLinear(module, method, block_size))
    return model


def tensor_bytes(module: nn.Module) -> int:
    """Bytes the module's parameters and buffers actually hold (a tensor shared by two modules, such as a
    tied embedding and LM head, counted once)."""
    tensors = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def linear_weight_bytes(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Bytes held by the weights (codes and constants; biases excluded) of every nn.Linear / QuantLinear
    whose name does not end with an entry of ``skip``: what quantization shrinks. bitsandbytes' layers
    (``Linear4bit``, ``Linear8bitLt``: subclasses of nn.Linear) count their constants too (:func:`_bnb_constant_bytes`)."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, QuantLinear)) and not name.endswith(skip):
            total += sum(t.numel() * t.element_size() for n, t in
                         list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
                         if n != "bias")
            total += _bnb_constant_bytes(m.weight) if isinstance(m, nn.Linear) else 0
    return total


def _bnb_constant_bytes(weight: torch.Tensor) -> int:
    """Bytes of the quantization constants bitsandbytes keeps beside a weight rather than as buffers (so
    ``get_memory_footprint`` misses them): a 4-bit weight's absmax (with double quantization: its 8-bit codes,
    their fp32 scales and offset), an 8-bit weight's per-row scales (SCB). The fixed 16- and 256-entry code
    tables are not counted, as they are not in course_lib's layers."""
    size = lambda t: 0 if t is None else t.numel() * t.element_size()  # noqa: E731
    state = getattr(weight, "quant_state", None)
    if state is None:
        return size(getattr(weight, "SCB", None))
    if not state.nested:
        return size(state.absmax)
    return size(state.absmax) + size(state.state2.absmax) + size(state.offset)


def quantization_snr_db(w, w_hat) -> float:
    """Signal-to-noise ratio of a quantized tensor in dB: 10 log10(sum w^2 / sum (w - w_hat)^2)."""
    noise = float(((w.float() - w_hat.float()) ** 2).sum())
    return float("inf") if noise == 0 else 10 * math.log10(float((w.float() ** 2).sum()) / noise)
