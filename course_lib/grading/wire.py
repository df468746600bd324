"""Plain-data calls into a learner's kernel, for grading that the learner's code cannot fool.

The grader runs the tests in its own process. Each call to a learner's function crosses into the sandboxed
kernel as plain data (JSON for structure, safetensors for tensors; never pickle): the kernel runs the function
and answers with plain data. Whatever the learner's code does, what comes back can only be a value: numbers,
strings, tensors, lists, tuples, dicts, None, or a marker naming an unsupported type.

Requests are files the grader writes where the kernel can only read them; answers come back as display data
on the kernel's own message channel (:data:`ANSWER_MIME`), so the kernel never writes anywhere the grader
reads. Every size is capped (message, items, depth, decoded tensor bytes).

Supported values: None, bool, int, float (nan/inf too), str, torch.Tensor, list, tuple, dict with str keys
(numpy booleans, integers and floats travel as bool, int and float, numpy arrays of numbers as tensors),
the grader's named objects (``{"t": "ref"}``: the notebook's ``model`` and ``tokenizer``), and the modules
nn.Identity, nn.Dropout and :class:`course_lib.grading.Scale`.
"""
from __future__ import annotations

import base64
import json
import sys

import torch
from torch import nn

from .checks import Scale

MAX_ITEMS = 100_000               # values (nodes) in one message
MAX_DEPTH = 20                    # nesting of lists, tuples and dicts
MAX_MESSAGE_BYTES = 64 * 2**20     # a packed message (JSON + tensors)
MAX_DECODED_BYTES = 256 * 2**20    # tensor bytes one decoded value may hold (a tensor referenced twice counts twice)
ANSWER_MIME = "application/x-course-answer"  # how the kernel sends its answer back: display data, base64
_MAGIC = b"CW1\n"


class Unsupported:
    """Stands for a value of a type the wire cannot carry (its type name is kept for the feedback)."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<unsupported {self.type_name}>"


class WireError(ValueError):
    """A message broke the wire format (too big, too deep, unknown tag)."""


def _type_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _from_numpy(value: object) -> object:
    """A numpy scalar as the Python number it holds, a numpy array of numbers or booleans as a tensor; anything
    else (numpy not imported, object or string arrays, dtypes torch lacks) as itself."""
    np = sys.modules.get("numpy")
    if np is None:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        try:
            return torch.from_numpy(np.array(value, order="C", copy=True))
        except (TypeError, RuntimeError):
            return value
    return value


def encode(value: object, tensors: dict[str, torch.Tensor], refs: dict[int, str] | None = None,
           depth: int = 0) -> dict:
    """JSON-able description of ``value``; tensors go into ``tensors`` (by key). ``refs`` maps id(object) ->
    name for objects that are passed by name."""
    if depth > MAX_DEPTH or len(tensors) > MAX_ITEMS:
        raise WireError("value too deep or too large")
    if refs and id(value) in refs:
        return {"t": "ref", "name": refs[id(value)]}
    kind = type(value)
    if value is None:
        return {"t": "none"}
    if kind is bool:
        return {"t": "bool", "v": value}
    if kind is int:
        return {"t": "int", "v": str(value)}
    if kind is float:
        return {"t": "float", "v": repr(value)}
    if kind is str:
        return {"t": "str", "v": value}
    if kind in (torch.Tensor, nn.Parameter):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"t": "tensor", "k": key, "grad": bool(value.requires_grad)}
    if kind in (list, tuple):
        return {"t": kind.__name__, "v": [encode(v, tensors, refs, depth + 1) for v in value]}
    if kind is dict and all(type(k) is str for k in value):
        return {"t": "dict", "v": {k: encode(v, tensors, refs, depth + 1) for k, v in value.items()}}
    if kind is nn.Identity:
        return {"t": "module", "cls": "Identity"}
    if kind is nn.Dropout:
        return {"t": "module", "cls": "Dropout", "p": float(value.p)}
    if kind is Scale:
        return {"t": "module", "cls": "Scale", "factor": value.factor}
    converted = _from_numpy(value)
    if converted is not value:
        return encode(converted, tensors, refs, depth)
    return {"t": "unsupported", "type": _type_name(value)}


class _Budget:
    """What one decoded value may cost: nodes and tensor bytes (every copy counted)."""

    def __init__(self) -> None:
        self.nodes = self.bytes = 0

    def spend(self, nodes: int = 1, nbytes: int = 0) -> None:
        self.nodes += nodes
        self.bytes += nbytes
        if self.nodes > MAX_ITEMS or self.bytes > MAX_DECODED_BYTES:
            raise WireError(f"value too large (over {MAX_ITEMS:,} items or {MAX_DECODED_BYTES >> 20} MB of tensors)")


def decode(obj: object, tensors: dict[str, torch.Tensor], refs: dict[str, object] | None = None,
           depth: int = 0, budget: _Budget | None = None) -> object:
    """The value :func:`encode` described. Unknown tags raise :class:`WireError`; unsupported values come back
    as :class:`Unsupported`; a value deeper than MAX_DEPTH, with more than MAX_ITEMS parts or more than
    MAX_DECODED_BYTES of tensors (each reference to a tensor is a copy) is refused."""
    budget = budget or _Budget()
    budget.spend()
    if depth > MAX_DEPTH or type(obj) is not dict or type(obj.get("t")) is not str:
        raise WireError("malformed value")
    tag = obj["t"]
    if tag == "none":
        return None
    if tag == "bool" and type(obj.get("v")) is bool:
        return obj["v"]
    if tag in ("int", "float") and type(obj.get("v")) is str and len(obj["v"]) < 5000:
        try:
            return int(obj["v"]) if tag == "int" else float(obj["v"])
        except ValueError as err:
            raise WireError(f"malformed {tag}") from err
    if tag == "str" and type(obj.get("v")) is str:
        return obj["v"]
    if tag == "tensor" and type(obj.get("k")) is str and obj["k"] in tensors:
        source = tensors[obj["k"]]
        budget.spend(0, source.numel() * source.element_size())
        tensor = source.clone()
        if obj.get("grad") is True and (tensor.is_floating_point() or tensor.is_complex()):
            tensor.requires_grad_(True)
        return tensor
    if tag in ("list", "tuple") and type(obj.get("v")) is list:
        items = [decode(v, tensors, refs, depth + 1, budget) for v in obj["v"]]
        return items if tag == "list" else tuple(items)
    if tag == "dict" and type(obj.get("v")) is dict:
        return {str(k): decode(v, tensors, refs, depth + 1, budget) for k, v in obj["v"].items()}
    if tag == "ref" and refs is not None and obj.get("name") in refs:
        return refs[obj["name"]]
    if tag == "module":
        cls = obj.get("cls")
        if cls == "Identity":
            return nn.Identity()
        try:
            if cls == "Dropout":
                return nn.Dropout(float(obj["p"]))
            if cls == "Scale":
                factor = obj["factor"]
                if type(factor) is list:
                    budget.spend(len(factor))
                    if not all(type(f) in (int, float) for f in factor):
                        raise TypeError("factors must be numbers")
                    return Scale(factor)
                return Scale(float(factor))
        except (KeyError, TypeError, ValueError) as err:
            raise WireError(f"malformed module {cls!r}") from err
    if tag == "unsupported":
        return Unsupported(str(obj.get("type"))[:200])
    raise WireError(f"malformed value (tag {tag!r})")


def pack(message: dict, tensors: dict[str, torch.Tensor]) -> bytes:
    """A message as bytes: a magic line, the JSON's length (8 bytes), the JSON, then the tensors (safetensors)."""
    from safetensors.torch import save

    header = json.dumps(message).encode("utf-8")
    return _MAGIC + len(header).to_bytes(8, "little") + header + save(tensors)


def unpack(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[dict, dict[str, torch.Tensor]]:
    """The message :func:`pack` made; anything else (too large, truncated, not JSON, not safetensors) raises
    :class:`WireError`."""
    from safetensors.torch import load

    if type(data) is not bytes or len(data) > max_bytes:
        raise WireError(f"message missing or larger than {max_bytes >> 20} MB")
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
        raise WireError("malformed message")
    size = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 8], "little")
    body = len(_MAGIC) + 8
    if size > len(data) - body:
        raise WireError("malformed message")
    try:
        message = json.loads(data[body:body + size].decode("utf-8"))
        tensors = load(data[body + size:])
    except Exception as err:  # bad UTF-8 / JSON / safetensors, or JSON nested too deep
        raise WireError(f"malformed message ({type(err).__name__})") from err
    if type(message) is not dict or not all(type(t) is torch.Tensor for t in tensors.values()):
        raise WireError("malformed message")
    return message, tensors


def encode_answer(message: dict, tensors: dict[str, torch.Tensor]) -> str:
    """An answer as the text the kernel publishes (base64 of :func:`pack`)."""
    return base64.b64encode(pack(message, tensors)).decode("ascii")


def decode_answer(text: object, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[dict, dict[str, torch.Tensor]]:
    """The answer :func:`encode_answer` made, checked; :class:`WireError` otherwise."""
    if type(text) is not str or len(text) > (max_bytes // 3 + 1) * 4:
        raise WireError(f"answer missing or larger than {max_bytes >> 20} MB")
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError as err:
        raise WireError("malformed answer") from err
    return unpack(data, max_bytes)


# --- kernel side ---------------------------------------------------------------------------------------------

def serve(path: str, namespace: dict) -> None:
    """Answer the call request at ``path`` (written by the grader, read-only here) with the function named in
    it from ``namespace`` (the kernel's globals), and publish the answer as display data of type ANSWER_MIME.
    Runs inside the learner's sandboxed kernel, so the grader trusts nothing it sends: the answer is only
    data. Changes to its tensor arguments are reported (by position or keyword), not sent back.

    A request with a ``probe`` calls a function the grader itself defines (a given probe, from the release): its
    source runs in a fresh namespace made of the notebook's set-up and, from ``namespace``, only the learner's
    names the probe tests (``learner``), so nothing the learner's code bound or rebound (the probe's own name, the
    helpers it calls) takes its place."""
    from IPython.display import publish_display_data

    with open(path, "rb") as f:
        request, tensors = unpack(f.read())
    refs = {name: namespace.get(name) for name in ("model", "tokenizer")}
    out: dict[str, torch.Tensor] = {}
    answer: dict = {"ok": False}
    try:
        probe = request.get("probe")
        if isinstance(probe, dict):
            trusted: dict = {"__name__": "__probe__"}
            exec(compile(str(probe["setup"]), "<set-up>", "exec"), trusted)
            trusted.update({n: namespace[n] for n in probe["learner"] if n in namespace})
            exec(compile(str(probe["source"]), "<given probe>", "exec"), trusted)
            namespace = trusted
        function = namespace.get(request["name"])
        if not callable(function):
            answer["error"] = "NameError"
        else:
            args = decode(request["args"], tensors, refs)
            kwargs = decode(request["kwargs"], tensors, refs)
            if "rng" in tensors:
                torch.set_rng_state(tensors["rng"])
            inputs = [(str(i), a) for i, a in enumerate(args)] + list(kwargs.items())
            before = {k: a.detach().clone() for k, a in inputs if type(a) in (torch.Tensor, nn.Parameter)}
            result = function(*args, **kwargs)
            changed = [k for k, a in inputs if k in before and (a.shape != before[k].shape or
                                                             not torch.equal(a.detach(), before[k]))]
            answer = {"ok": True, "value": encode(result, out), "mutated": changed, "grads": {}}
            _scalar_grads(result, args, answer, out)
    except Exception as err:  # the learner's error: reported by type only
        answer = {"ok": False, "error": type(err).__name__[:100]}
    text = encode_answer(answer, out)
    if len(text) > MAX_MESSAGE_BYTES // 3 * 4:
        text = encode_answer({"ok": False, "error": "AnswerTooLarge"}, {})
    publish_display_data({ANSWER_MIME: text})
def _scalar_grads(result: object, args: tuple, answer: dict, out: dict[str, torch.Tensor]) -> None:
    """For each 0-d result (or 0-d item of a tuple result) that requires grad: its gradient w.r.t. every
    tensor argument that requires grad, so the grader can backpropagate through the answer."""
    items = result if type(result) is tuple else (result,)
    inputs = [(i, a) for i, a in enumerate(args) if type(a) in (torch.Tensor, nn.Parameter) and a.requires_grad]
    for position, item in enumerate(items):
        if type(item) is torch.Tensor and item.dim() == 0 and item.requires_grad and inputs:
            grads = torch.autograd.grad(item, [a for _, a in inputs], allow_unused=True, retain_graph=True)
            answer["grads"][str(position)] = {str(i): encode(g, out) for (i, _), g in zip(inputs, grads)
                                              if g is not None}
