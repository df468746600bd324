"""Tripwires on reference implementations: which of them run while a learner's function is being graded.

An exercise may declare the reference implementations it asks the learner to write (``lora.lora_scaling``,
``dpo.dpo_loss``, a whole package such as ``peft``). While the grader calls the learner's function, a profile
hook (``sys.setprofile``, also set for threads started during the call) watches every Python frame that starts
and every built-in that is called: a frame whose code belongs to a declared function or class (matched by file
and qualified name, so aliases, ``sys.modules``, computed names, ``exec`` and copies of ``__code__`` are all
seen), a file inside a declared package, or a declared built-in (``torch.add``) is a hit. Removing the hook
during the call is itself recorded. Constants (``memory.NF4_DQ_BITS``) cannot be watched this way; the
grader's static check covers them.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import threading
import types

TAMPERING = "sys.setprofile"  # what a hit is called when the learner's code removes or replaces the hook
_HOOK_SETTERS = (sys.setprofile, sys.settrace)                            # built-ins: seen as c_call
_HOOK_SETTER_CODE = (threading.setprofile.__code__, threading.settrace.__code__)  # Python functions: seen as call


def _resolve(name: str) -> object:
    """The object or module spec a declared name refers to (``course_lib.<name>`` first, then ``<name>``)."""
    for candidate in (f"course_lib.{name}", name):
        parts = candidate.split(".")
        for cut in range(len(parts), 0, -1):
            module_name = ".".join(parts[:cut])
            try:
                spec = importlib.util.find_spec(module_name)
            except (ImportError, ValueError, AttributeError):
                spec = None
            if spec is None:
                continue
            if cut == len(parts):
                return spec
            try:
                obj = importlib.import_module(module_name)
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except Exception:
                break
            return obj
    return None


class Tripwire:
    """Context manager: ``hits`` is the set of declared names whose code ran inside the ``with`` block."""

    def __init__(self, names: list[str]):
        self.hits: set[str] = set()
        self._code: dict[tuple[str, str], str] = {}       # (file, qualname) of a function -> name
        self._classes: dict[str, list[tuple[str, str]]] = {}  # file -> [(class qualname + '.', name)]
        self._packages: list[tuple[str, str]] = []          # (file prefix, name)
        self._builtins: dict[int, str] = {}
        self._seen: dict[types.CodeType, str | None] = {}
        self._keep: list[object] = []                       # the watched built-ins stay alive (ids stay valid)
        self._active = False
        for name in names:
            self._watch(name, _resolve(name))

    def _watch(self, name: str, obj: object) -> None:
        if isinstance(obj, importlib.machinery.ModuleSpec):
            if obj.submodule_search_locations:
                self._packages += [(os.path.join(os.path.realpath(p), ""), name) for p in obj.submodule_search_locations]
            elif obj.origin:
                self._packages.append((os.path.realpath(obj.origin), name))
        elif isinstance(obj, types.FunctionType):
            # A decorated function (torch.inference_mode, functools.wraps) runs a wrapper whose code every function
            # with the same decorator shares: watch the function it wraps, or any decorated call would be a hit.
            code = inspect.unwrap(obj).__code__
            self._code[(code.co_filename, code.co_qualname)] = name
        elif isinstance(obj, type):
            module = sys.modules.get(obj.__module__)
            filename = getattr(module, "__file__", None)
            if filename:
                self._classes.setdefault(filename, []).append((obj.__qualname__ + ".", name))
        elif isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)) or (callable(obj) and obj is not None):
            self._keep.append(obj)
            self._builtins[id(obj)] = name

    def _match(self, code: types.CodeType) -> str | None:
        filename, qualname = code.co_filename, code.co_qualname
        for (file, target), name in self._code.items():
            if file == filename and (qualname == target or qualname.startswith(target + ".<locals>.")):
                return name
        for prefix, name in self._classes.get(filename, []):
            if qualname.startswith(prefix):
                return name
        real = os.path.realpath(filename) if self._packages else ""
        for prefix, name in self._packages:
            if real == prefix or real.startswith(prefix):
                return name
        return None

    def _profile(self, frame, event, arg):
        if not self._active:
            return
        if event == "call":
            code = frame.f_code
            if code in _HOOK_SETTER_CODE:
                self.hits.add(TAMPERING)
            hit = self._seen.get(code, False)
            if hit is False:
                hit = self._seen[code] = self._match(code)
            if hit:
                self.hits.add(hit)
        elif event == "c_call":
            if any(arg is setter for setter in _HOOK_SETTERS):
                self.hits.add(TAMPERING)
            name = self._builtins.get(id(arg))
            if name:
                self.hits.add(name)

    def __enter__(self) -> "Tripwire":
        self._active = True
        threading.setprofile(self._profile)
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        if sys.getprofile() != self._profile or getattr(threading, "_profile_hook", self._profile) != self._profile:
            self.hits.add(TAMPERING)
        sys.setprofile(None)
        threading.setprofile(None)
