"""Plain-data calls into a learner's kernel, for grading that the learner's code cannot fool.

The grader runs the tests in its own process. Each call to a learner's function crosses into the sandboxed
kernel as plain data (JSON for structure, safetensors for tensors; never pickle): the kernel runs the function
and answers with plain data. Whatever the learner's code does, what comes back can only be a value: numbers,
strings, tensors, lists, tuples, dicts, None, or a marker naming an unsupported type.

Supported values: None, bool, int, float (nan/inf too), str, torch.Tensor, list, tuple, dict with str keys,
the grader's named objects (``{"t": "ref"}``: the notebook's ``model`` and ``tokenizer``), and the modules
nn.Identity, nn.Dropout and :class:`course_lib.grading.Scale`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .grading import Scale

MAX_ITEMS = 100_000
MAX_DEPTH = 20


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
        return {"t": "module", "cls": "Scale", "factor": float(value.factor)}
    return {"t": "unsupported", "type": _type_name(value)}


def decode(obj: object, tensors: dict[str, torch.Tensor], refs: dict[str, object] | None = None,
           depth: int = 0) -> object:
    """The value :func:`encode` described. Unknown tags raise :class:`WireError`; unsupported values come back
    as :class:`Unsupported`."""
    if depth > MAX_DEPTH or type(obj) is not dict or type(obj.get("t")) is not str:
        raise WireError("malformed value")
    tag = obj["t"]
    if tag == "none":
        return None
    if tag == "bool" and type(obj.get("v")) is bool:
        return obj["v"]
    if tag == "int" and type(obj.get("v")) is str and len(obj["v"]) < 5000:
        return int(obj["v"])
    if tag == "float" and type(obj.get("v")) is str:
        return float(obj["v"])
    if tag == "str" and type(obj.get("v")) is str:
        return obj["v"]
    if tag == "tensor" and type(obj.get("k")) is str and obj["k"] in tensors:
        tensor = tensors[obj["k"]].clone()
        if obj.get("grad") is True and (tensor.is_floating_point() or tensor.is_complex()):
            tensor.requires_grad_(True)
        return tensor
    if tag in ("list", "tuple") and type(obj.get("v")) is list:
        items = [decode(v, tensors, refs, depth + 1) for v in obj["v"]]
        return items if tag == "list" else tuple(items)
    if tag == "dict" and type(obj.get("v")) is dict:
        return {str(k): decode(v, tensors, refs, depth + 1) for k, v in obj["v"].items()}
    if tag == "ref" and refs is not None and obj.get("name") in refs:
        return refs[obj["name"]]
    if tag == "module":
        cls = obj.get("cls")
        if cls == "Identity":
            return nn.Identity()
        if cls == "Dropout":
            return nn.Dropout(float(obj["p"]))
        if cls == "Scale":
            return Scale(float(obj["factor"]))
    if tag == "unsupported":
        return Unsupported(str(obj.get("type"))[:200])
    raise WireError(f"malformed value (tag {tag!r})")


def write(path: Path, message: dict, tensors: dict[str, torch.Tensor]) -> None:
    """A message as ``path.json`` + ``path.safetensors``."""
    from safetensors.torch import save_file

    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(message))


def read(path: Path, max_bytes: int = 256 * 2**20) -> tuple[dict, dict[str, torch.Tensor]]:
    """A message written by :func:`write`; refuses files over ``max_bytes``."""
    from safetensors.torch import load_file

    files = [path.with_suffix(".json"), path.with_suffix(".safetensors")]
    if any(not f.is_file() or f.is_symlink() for f in files):
        raise WireError("no answer was written")
    if sum(f.stat().st_size for f in files) > max_bytes:
        raise WireError(f"answer larger than {max_bytes >> 20} MB")
    message = json.loads(files[0].read_text(encoding="utf-8"))
    if type(message) is not dict:
        raise WireError("malformed answer")
    return message, load_file(str(files[1]))


# --- kernel side ---------------------------------------------------------------------------------------------

def serve(path: str, namespace: dict) -> None:
    """Answer the call request at ``path`` (written by the grader) with the function named in it from
    ``namespace`` (the kernel's globals). Runs inside the learner's sandboxed kernel."""
    request, tensors = read(Path(path))
    refs = {name: namespace.get(name) for name in ("model", "tokenizer")}
    out: dict[str, torch.Tensor] = {}
    answer: dict = {"ok": False}
    try:
        function = namespace.get(request["name"])
        if not callable(function):
            answer["error"] = "NameError"
        else:
            args = decode(request["args"], tensors, refs)
            kwargs = decode(request["kwargs"], tensors, refs)
            if "rng" in tensors:
                torch.set_rng_state(tensors["rng"])
            before = [a.detach().clone() if type(a) in (torch.Tensor, nn.Parameter) else None for a in args]
            result = function(*args, **kwargs)
            answer = {"ok": True, "value": encode(result, out), "mutated": {}, "grads": {}}
            for i, (arg, old) in enumerate(zip(args, before)):
                if old is not None and (arg.shape != old.shape or not torch.equal(arg.detach(), old)):
                    answer["mutated"][str(i)] = encode(arg, out)
            _scalar_grads(result, args, answer, out)
            out["rng"] = torch.get_rng_state()
    except Exception as err:  # the learner's error: reported by type only
        answer = {"ok": False, "error": type(err).__name__[:100]}
    write(Path(path + ".answer"), answer, out)


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
