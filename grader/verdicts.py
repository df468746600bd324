"""Deciding each exercise in the grader's own process, by trusted code.

Each exercise's tests (visible, then hidden, from the solution notebook) run here; every call of a learner's
function crosses into the sandboxed kernel as plain data (:mod:`course_lib.grading.wire`) and back. An answer that uses
the reference implementation it was asked to write (declared per exercise in the solution's metadata) earns
nothing: the references do not exist in the grading kernel (:mod:`grader.references`), and a use seen in the source
is named in the feedback. A given probe (a locked cell ``<exercise>_probe``) is the release's text, run by the
kernel's call handler in a namespace of its own. Feedback on hidden tests shows only the author's messages, never
inputs, code or tracebacks.
"""
from __future__ import annotations

import ast
import contextlib
import io
import re
import traceback

import nbformat
import torch

from course_lib.grading import GradingError, wire

from .cells import grade_id, setup_cell
from .kernel import KernelSession, LearnerCallError
from .references import UNAVAILABLE_ERROR
from .results import Exercise, safe_text

HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS\n?", re.S)


class _Linked(torch.autograd.Function):
    """A scalar answer linked to the grader's inputs through the gradients the kernel computed."""

    @staticmethod
    def forward(ctx, value, grads, *inputs):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, upstream):
        return (None, None, *[None if g is None else upstream * g for g in ctx.grads])


class LearnerFunction:
    """Stands in the grader's namespace for a function the learner wrote (or a given probe, ``probe``: the
    release's source, its set-up and the learner's names it tests): each call runs in the kernel. A call that
    reached one of the notebook's references (which raise there) is noted in ``used``. The grader's own state
    never takes anything from the kernel: a call that changes its tensor arguments in place fails (the grader's
    tensors stay as they were), and the grader's random generator moves on by itself."""

    def __init__(self, name: str, session: KernelSession, refs: dict[str, object], probe: dict | None = None):
        self.name, self.session, self.probe = name, session, probe
        self.refs = {id(v): k for k, v in refs.items() if v is not None}
        self.named = refs
        self.used = False

    def __call__(self, *args, **kwargs):
        try:
            answer, tensors = self.session.call(self.name, args, kwargs, self.refs, self.probe)
        except LearnerCallError as err:
            self.used |= err.detail == UNAVAILABLE_ERROR
            raise
        torch.rand(1)  # each call sees a new state of the grader's generator, as two draws in a row would
        positions = {str(i): f"#{i + 1} (positional)" for i in range(len(args))} | {k: f"'{k}'" for k in kwargs}
        changed = [positions[k] for k in answer.get("mutated") or [] if isinstance(k, str) and k in positions]
        if changed:
            raise LearnerCallError(self.name, f"it changed its argument {changed[0]} in place; return new values "
                                   "and leave the inputs unchanged")
        try:
            value = wire.decode(answer.get("value"), tensors, self.named)
            return self._link(value, args, answer.get("grads") or {}, tensors)
        except (wire.WireError, TypeError, ValueError, AttributeError, KeyError) as err:  # kernel-made structure
            raise LearnerCallError(self.name, "no readable answer") from err

    def _link(self, value, args, grads, tensors):
        items = list(value) if type(value) is tuple else [value]
        if type(grads) is not dict:
            raise wire.WireError("malformed gradients")
        for position, by_input in grads.items():
            if not (type(position) is str and position.isdecimal() and len(position) < 6 and type(by_input) is dict):
                raise wire.WireError("malformed gradients")
            index = int(position)
            if not (index < len(items) and type(items[index]) is torch.Tensor and items[index].dim() == 0):
                continue
            inputs = [(i, a) for i, a in enumerate(args) if type(a) in (torch.Tensor, torch.nn.Parameter)
                      and a.requires_grad]
            g = [wire.decode(by_input[str(i)], tensors) if str(i) in by_input else None for i, _ in inputs]
            g = [x.detach() if type(x) is torch.Tensor and x.shape == a.shape else None for x, (_, a) in zip(g, inputs)]
            items[index] = _Linked.apply(items[index].detach(), g, *[a for _, a in inputs])
        return tuple(items) if type(value) is tuple else items[0]


def defined_functions(source: str) -> list[str]:
    """Names of the top-level functions a solution cell defines."""
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def defined_names(source: str) -> list[str]:
    """Names of the top-level functions and classes a solution cell defines (what a probe may test)."""
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                      ast.ClassDef))]


def reference_uses(source: str, forbidden: list[str]) -> list[str]:
    """Which of ``forbidden`` (dotted names such as 'dpo.dpo_loss', or module names such as 'trl') the code
    names through imports (aliases resolved) or attribute chains: only to say so in the feedback, since the
    references do not exist in the grading kernel anyway. Strings never count (a learner may print a function's
    name). Code that cannot be parsed names nothing. Learner text: the grader runs this in a bounded child
    (:mod:`grader.bounded`); each attribute chain is walked once, from its outermost node."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:  # magics (%, !) become the Python calls IPython would run
        nodes = list(ast.walk(ast.parse(TransformerManager().transform_cell(source))))
    except Exception:  # SyntaxError, ValueError (null bytes), RecursionError / MemoryError (deep nesting)
        return []
    aliases, names = {}, set()
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                names.add(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                names.add(f"{node.module}.{a.name}")
    inner = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}
    for node in nodes:
        if id(node) in inner or not isinstance(node, (ast.Attribute, ast.Name)):
            continue
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            chain.append(aliases.get(node.id, node.id))
            chain.reverse()
            names.update(".".join(chain[:k]) for k in range(1, min(len(chain), 8) + 1))
    hits = []
    for item in forbidden:
        if "." in item:
            hit = any(n == item or n.endswith("." + item) for n in names)
        else:
            hit = any(n == item or n.startswith(item + ".") for n in names)
        if hit:
            hits.append(item)
    return hits


def _reference_message(uses: list[str] | None) -> str:
    if not uses:
        return ("This answer uses one of this notebook's reference implementations, which do not exist while grading "
                "(the exercise asks you to write it yourself). It earns no points.")
    return (f"This answer uses {', '.join(sorted(uses))}: the reference implementation you were asked to write "
            "yourself. It earns no points.")


_NAMESPACE_CACHE: dict[str, object] = {}


def _named_objects(test_source: str) -> dict[str, object]:
    """The trusted model and tokenizer the tests may use (loaded once per grading process, on demand)."""
    used = {n.id for n in ast.walk(ast.parse(test_source)) if isinstance(n, ast.Name)}
    if "model" in used and "model" not in _NAMESPACE_CACHE:
        from course_lib.models import load_default_model
        _NAMESPACE_CACHE["model"], _NAMESPACE_CACHE["tokenizer"] = load_default_model(device="cpu")
    if "tokenizer" in used and "tokenizer" not in _NAMESPACE_CACHE:
        from course_lib.models import load_tokenizer
        _NAMESPACE_CACHE["tokenizer"] = load_tokenizer()
    return {k: v for k, v in _NAMESPACE_CACHE.items() if k in used}


def _failure(err: BaseException, hidden: bool, label: str, source: str = "") -> str:
    """What the learner is told about a failed test: the author's message for hidden checks, never code,
    inputs or a traceback line of a hidden test; for a visible test, the error and the line of ``source`` (the
    visible tests, compiled as ``label``) where it failed."""
    if isinstance(err, LearnerCallError):  # on hidden inputs, nothing the kernel sent is repeated
        return err.public + " on a hidden test input" if hidden else str(err)
    if isinstance(err, GradingError):
        if hidden:
            return err.summary or "Your result differs from the expected values on a hidden test input."
        return str(err)
    if hidden:
        return f"The hidden tests could not use what your function returned ({type(err).__name__})."
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == label]
    lines = source.splitlines()
    at = frames[-1].lineno if frames else None
    line = f" (in the visible test: `{lines[at - 1].strip()}`)" if at and 0 < at <= len(lines) else ""
    return f"{type(err).__name__}: {str(err)[:300]}{line}"


def probes(solution: nbformat.NotebookNode) -> dict[str, dict]:
    """The given probes of a notebook: function name -> the call handler's ``probe`` (the locked cell's source
    from the release, the set-up's imports, the learner's names it may test)."""
    imports = setup_source(solution)
    learner = sorted({n for c in solution.cells if c.metadata.get("nbgrader", {}).get("solution")
                      for n in defined_names(c.source)})
    return {name: {"source": c.source, "setup": imports, "learner": learner}
            for c in solution.cells if (grade_id(c) or "").endswith("_probe") and c.cell_type == "code"
            for name in defined_functions(c.source)}


def setup_source(solution: nbformat.NotebookNode) -> str:
    """The set-up cell's source: the imports the tests (and the probes) run after."""
    return setup_cell(solution).source


def decide(solution: nbformat.NotebookNode, uses: dict[str, list[str]], session: KernelSession) -> list[Exercise]:
    """Run each exercise's tests (visible, then hidden) in this process against the learner's functions.
    ``uses``: the references each exercise's answer names in its source (:func:`reference_uses`)."""
    cells = {grade_id(c): c for c in solution.cells if grade_id(c)}
    functions = [name for c in cells.values() if c.metadata["nbgrader"].get("solution")
                 for name in defined_functions(c.source)]
    given = probes(solution)
    base: dict[str, object] = {"__name__": "__grader__"}  # the solution's set-up, run once; each exercise a copy
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(setup_source(solution), "<imports>", "exec"), base)
    verdicts = []
    for gid, cell in cells.items():
        meta = cell.metadata["nbgrader"]
        if not meta.get("grade"):
            continue
        exercise = gid.removesuffix("_tests")
        points = float(meta.get("points", 0))
        if uses.get(exercise):
            verdicts.append(Exercise(gid, 0.0, points, False, _reference_message(uses[exercise])))
            continue
        visible = HIDDEN.sub("", cell.source)
        hidden = "\n".join(m.group(1) for m in HIDDEN.finditer(cell.source))
        named = _named_objects(cell.source)
        learners = {name: LearnerFunction(name, session, named) for name in functions}
        learners |= {name: LearnerFunction(name, session, named, probe) for name, probe in given.items()}
        ns = {**base, **named, **learners}
        torch.manual_seed(0)
        passed, message, printed = True, "", io.StringIO()
        for part, label, is_hidden in ((visible, f"<visible tests of {gid}>", False),
                                       (hidden, f"<hidden tests of {gid}>", True)):
            try:
                with contextlib.redirect_stdout(printed if not is_hidden else io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    exec(compile(part, label, "exec"), ns)
            except Exception as err:
                passed, message = False, _failure(err, is_hidden, label, part)
                break
        if any(f.used for f in learners.values()):  # a call reached a reference, which raised in the kernel
            passed, message = False, _reference_message(None)
        verdicts.append(Exercise(gid, points if passed else 0.0, points, passed, message, safe_text(printed.getvalue())))
    return verdicts


def blank_verdicts(solution: nbformat.NotebookNode, message: str) -> list[Exercise]:
    """Zero points for every exercise of a notebook, each with ``message``."""
    return [Exercise(grade_id(c), 0.0, float(c.metadata["nbgrader"].get("points", 0)), False, message)
            for c in solution.cells if grade_id(c) and c.metadata["nbgrader"].get("grade")]
