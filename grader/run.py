"""Grade one submission: run it in a sandboxed kernel, decide each exercise in the grader's own process.

1. The submission is read defensively (valid UTF-8 JSON notebook, size-capped) and rebuilt against the
   released notebook: locked cells (the visible tests, the instructions) are restored from the release, deleted
   ones re-inserted, the learner's solution cells and own cells kept. The hidden tests are never in it.
2. The rebuilt notebook runs in a kernel inside the sandbox (:mod:`grader.sandbox`), with a per-cell timeout,
   a wall-clock limit and an output budget. Its outputs are what the learner sees of the visible tests.
3. Each exercise's tests (visible and hidden, from solutions/) run in the grader's process. Every call of a
   learner's function crosses into the sandboxed kernel as plain data (:mod:`course_lib.wire`) and back, so
   the learner's code runs only in the sandbox, and the decision "passed" is made here, by trusted code.
4. An exercise whose code uses the reference implementation it was asked to write (declared per exercise in
   the solution notebook's metadata) earns nothing, whatever its tests say.
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_output

from course_lib import wire
from course_lib.grading import GradingError

from .sandbox import Limits, Sandbox

MAX_NOTEBOOK_BYTES = 20 * 2**20
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS\n?", re.S)


class SubmissionError(ValueError):
    """The submitted file cannot be graded; the message says why (for the learner)."""


@dataclass
class Exercise:
    """The verdict on one exercise, decided outside the learner's kernel."""
    grade_id: str
    points: float
    max_points: float
    passed: bool
    message: str = ""
    output: str = ""  # what the learner's kernel printed for the visible tests (escaped when shown)

    @property
    def name(self) -> str:
        """The exercise's name: its test cell's grade id without ``_tests``."""
        return self.grade_id.removesuffix("_tests")


@dataclass
class Result:
    student: str
    notebook: str
    exercises: list[Exercise] = field(default_factory=list)
    problem: str = ""       # why nothing could be graded, if so
    notes: list[str] = field(default_factory=list)  # what the grader changed or stopped
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(e.points for e in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(e.max_points for e in self.exercises)


# --- reading and rebuilding the submission --------------------------------------------------------------------

def read_submission(path: Path) -> nbformat.NotebookNode:
    """The submitted notebook, or :class:`SubmissionError` naming what is wrong with the file."""
    if path.is_symlink() or not path.is_file():
        raise SubmissionError(f"{path.name} is not a regular file")
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise SubmissionError(f"{path.name} is {size / 2**20:.0f} MB; notebooks over "
                              f"{MAX_NOTEBOOK_BYTES >> 20} MB are not graded (clear large outputs and resubmit)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SubmissionError(f"{path.name} is not UTF-8 text (byte {err.start}); it is not a notebook") from err
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as err:  # nbformat raises several kinds for bad JSON / bad structure
        raise SubmissionError(f"{path.name} is not a valid notebook file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]})") from err
    if not isinstance(nb.get("cells"), list):
        raise SubmissionError(f"{path.name} has no list of cells")
    return nb


def _grade_id(cell) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    gid = meta.get("grade_id") if isinstance(meta, dict) else None
    return gid if isinstance(gid, str) else None


def rebuild(learner: nbformat.NotebookNode, release: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The notebook to execute: the release's cells in order, the learner's code in the solution cells (and
    the learner's own added cells after the released cell they followed); locked cells always from the
    release. Returns it and notes on what was restored."""
    released = {_grade_id(c): c for c in release.cells if _grade_id(c)}
    by_id = {_grade_id(c): i for i, c in enumerate(release.cells) if _grade_id(c)}
    by_source: dict[str, int] = {}  # ungraded released cells (instructions, set-up), first occurrence
    for i, c in enumerate(release.cells):
        if not _grade_id(c):
            by_source.setdefault(c.source, i)
    sources = {c.source for c in release.cells}
    answers, extra, notes, after = {}, {}, [], None  # after: index of the released cell the learner's cells follow
    for cell in learner.cells:
        gid, source = _grade_id(cell), cell.get("source")
        if gid in released:
            meta = released[gid].metadata["nbgrader"]
            if meta.get("solution") and cell.get("cell_type") == "code" and isinstance(source, str):
                answers[gid] = source
            elif source != released[gid].source:
                notes.append(f"cell '{gid}' is locked: your changes to it were replaced by the original")
            after = by_id[gid]
        elif isinstance(source, str) and source in by_source:
            after = by_source[source]
        elif cell.get("cell_type") == "code" and isinstance(source, str) and source not in sources:
            extra.setdefault(after, []).append(new_code_cell(source))
    submitted = {_grade_id(c) for c in learner.cells}
    cells = extra.pop(None, [])  # the learner's cells above every released cell stay first
    for index, cell in enumerate(release.cells):
        copy = nbformat.from_dict(json.loads(json.dumps(cell)))
        cells.append(copy)
        gid = _grade_id(cell)
        if gid in answers:
            copy.source = answers[gid]
        elif gid and (cell.metadata["nbgrader"].get("solution") or cell.metadata["nbgrader"].get("grade")) \
                and gid not in submitted:
            notes.append(f"cell '{gid}' was missing from your notebook: the original was put back")
        cells += extra.pop(index, [])
    out = nbformat.v4.new_notebook(cells=cells, metadata=release.metadata)
    return out, notes


# --- the kernel --------------------------------------------------------------------------------------------------

class _CappedClient(NotebookClient):
    """nbclient that keeps at most ``budget`` bytes of outputs per notebook."""
    budget = 2_000_000
    used = 0
    truncated = False

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {}), default=str))
        self.used += size
        if self.used > self.budget:
            if not self.truncated:
                self.truncated = True
                outs.append(new_output("stream", name="stderr",
                                       text=f"\n[output stopped by the grader: over {self.budget:,} bytes]\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)


def kernel_env(limits: Limits) -> dict[str, str]:
    """Environment of a learner's kernel: offline hub, and its share of the cores when kernels run side by side."""
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if limits.threads:
        env.update({name: str(limits.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    return env


class KernelSession:
    """A kernel (sandboxed unless told otherwise) that runs a notebook, then answers calls. A cell or call that
    runs past its limit gets the kernel killed (interrupts can be ignored by the code they interrupt); a fresh
    kernel then runs only the ``minimal`` cells (set-up and solutions) so the other exercises can be decided."""

    MAX_RESTARTS = 3

    def __init__(self, workdir: Path, limits: Limits, sandbox: Sandbox | None, minimal: list[str]):
        self.workdir, self.limits, self.sandbox, self.minimal = workdir, limits, sandbox, minimal
        self.calls = self.restarts = 0
        self.dead = False
        self.notes: list[str] = []
        self.deadline = time.monotonic() + limits.notebook_timeout_s

    def _launch(self, nb: nbformat.NotebookNode) -> None:
        from jupyter_client import AsyncKernelManager
        from jupyter_client.kernelspec import KernelSpec

        sockets = self.workdir / f".kernel{self.restarts}"
        sockets.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        self.km = AsyncKernelManager(transport="ipc", ip=str(sockets / "k"), connection_file=str(sockets / "kernel.json"))
        self.km._kernel_spec = KernelSpec(argv=self.sandbox.command(argv) if self.sandbox else argv,
                                          language="python", display_name="sandboxed Python",
                                          env=kernel_env(self.limits))
        self.client = _CappedClient(nb, km=self.km, timeout=self.limits.cell_timeout_s, allow_errors=True,
                                    interrupt_on_timeout=False, resources={"metadata": {"path": str(self.workdir)}})
        self.client.budget = self.limits.output_bytes
        # The kernel's own stdout/stderr (below IPython: os.write, C libraries) go nowhere, not to the
        # instructor's terminal: what the learner sees is the notebook's captured output, within its budget.
        self._ctx = self.client.setup_kernel(cleanup_kc=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ctx.__enter__()

    def _kill(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:
            pass

    def _execute(self, nb: nbformat.NotebookNode, keep_notes: bool) -> bool:
        """Run the code cells of ``nb``; False if one ran past a limit or the kernel died (then it is killed)."""
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            left = self.deadline - time.monotonic()
            if left <= 1:
                self.notes.append(f"the notebook ran past its {self.limits.notebook_timeout_s} s limit; "
                                  "later cells were not run")
                self._kill()
                return False
            self.client.timeout = int(min(self.limits.cell_timeout_s, left))
            try:
                self.client.execute_cell(cell, index)
            except (CellTimeoutError, TimeoutError):
                if keep_notes:
                    self.notes.append(f"cell {index + 1} ran past {self.client.timeout} s and was stopped")
                self._kill()
                return False
            except DeadKernelError:
                if keep_notes:
                    self.notes.append(f"the kernel died in cell {index + 1} (a crash, an exit, or a memory, "
                                      "process or file-size limit)")
                return False
        return True

    def _restart(self) -> None:
        """A fresh kernel with only the set-up and solution cells run, or ``dead`` when that fails too."""
        self._kill()
        self.restarts += 1
        if self.restarts > self.MAX_RESTARTS:
            self.dead = True
            return
        nb = nbformat.v4.new_notebook(cells=[new_code_cell(src) for src in self.minimal])
        try:
            self._launch(nb)
            self.dead = not self._execute(nb, keep_notes=False)
        except Exception:
            self.dead = True

    def run_notebook(self, nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
        """Execute every cell (errors do not stop it), within the per-cell and whole-notebook limits."""
        self._launch(nb)
        if not self._execute(nb, keep_notes=True):
            self.deadline = time.monotonic() + self.limits.notebook_timeout_s
            self._restart()
        return nb, self.notes

    def call(self, name: str, args: tuple, kwargs: dict, refs: dict[int, str]) -> tuple[dict, dict]:
        """Call the learner's function ``name`` in the kernel; returns the answer message and its tensors."""
        if self.dead:
            raise LearnerCallError(name, "no kernel: it died or ran past its limits")
        self.calls += 1
        request = self.workdir / ".calls" / f"c{self.calls}"
        request.parent.mkdir(exist_ok=True)
        tensors: dict[str, torch.Tensor] = {"rng": torch.get_rng_state()}
        message = {"name": name, "args": wire.encode(tuple(args), tensors, refs),
                   "kwargs": wire.encode(dict(kwargs), tensors, refs)}
        wire.write(request, message, tensors)
        cell = new_code_cell(f"import course_lib.wire as __w; __w.serve({str(request)!r}, globals()); del __w")
        self.client.timeout = self.limits.call_timeout_s
        try:
            self.client.execute_cell(cell, 0)
        except (CellTimeoutError, TimeoutError) as err:
            self._restart()
            raise LearnerCallError(name, f"no answer within {self.limits.call_timeout_s} s") from err
        except DeadKernelError as err:
            self._restart()
            raise LearnerCallError(name, "the kernel crashed or exited") from err
        try:
            answer, out = wire.read(Path(str(request) + ".answer"))
        except (wire.WireError, ValueError, OSError) as err:
            raise LearnerCallError(name, "no readable answer") from err
        if answer.get("ok") is not True:
            raise LearnerCallError(name, f"{str(answer.get('error', 'an error'))[:100]}")
        return answer, out

    def close(self) -> None:
        if hasattr(self, "km"):
            self._kill()
        if self.sandbox:
            self.sandbox.cleanup()


class LearnerCallError(Exception):
    """A call of the learner's function did not return a value."""

    def __init__(self, name: str, what: str):
        super().__init__(f"`{name}` did not return a result ({what})")


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
    """Stands in the grader's namespace for a function the learner wrote: each call runs in the kernel."""

    def __init__(self, name: str, session: KernelSession, refs: dict[str, object]):
        self.name, self.session = name, session
        self.refs = {id(v): k for k, v in refs.items() if v is not None}
        self.named = refs

    def __call__(self, *args, **kwargs):
        answer, tensors = self.session.call(self.name, args, kwargs, self.refs)
        value = wire.decode(answer.get("value"), tensors, self.named)
        for position, encoded in dict(answer.get("mutated") or {}).items():
            index = int(position)
            if index < len(args) and type(args[index]) in (torch.Tensor, torch.nn.Parameter):
                new = wire.decode(encoded, tensors)
                if type(new) is torch.Tensor and new.shape == args[index].shape:
                    with torch.no_grad():
                        args[index].copy_(new)
        if "rng" in tensors and tensors["rng"].dtype == torch.uint8 and tensors["rng"].shape == torch.get_rng_state().shape:
            torch.set_rng_state(tensors["rng"])
        return self._link(value, args, dict(answer.get("grads") or {}), tensors)

    def _link(self, value, args, grads, tensors):
        items = list(value) if type(value) is tuple else [value]
        for position, by_input in grads.items():
            index = int(position)
            if not (index < len(items) and type(items[index]) is torch.Tensor and items[index].dim() == 0):
                continue
            inputs = [(i, a) for i, a in enumerate(args) if type(a) in (torch.Tensor, torch.nn.Parameter)
                      and a.requires_grad]
            g = [wire.decode(by_input[str(i)], tensors) if str(i) in by_input else None for i, _ in inputs]
            g = [x.detach() if type(x) is torch.Tensor and x.shape == a.shape else None for x, (_, a) in zip(g, inputs)]
            items[index] = _Linked.apply(items[index].detach(), g, *[a for _, a in inputs])
        return tuple(items) if type(value) is tuple else items[0]


# --- deciding the exercises ------------------------------------------------------------------------------------

def defined_functions(source: str) -> list[str]:
    """Names of the top-level functions a solution cell defines."""
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def reference_uses(source: str, forbidden: list[str]) -> list[str]:
    """Which of ``forbidden`` (dotted names such as 'align.dpo_loss', or module names such as 'trl') the code
    refers to: through imports (aliases resolved), attribute chains, or string constants."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    aliases, names, strings = {}, set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                names.add(a.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                names.add(f"{node.module}.{a.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
    for node in ast.walk(tree):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            chain.append(aliases.get(node.id, node.id))
            names.add(".".join(reversed(chain)))
    hits = []
    for item in forbidden:
        last = item.split(".")[-1]
        if "." in item:
            hit = any(n == item or n.endswith("." + item) for n in names) or item in strings or last in strings
        else:
            hit = any(n == item or n.startswith(item + ".") for n in names) or item in strings
        if hit:
            hits.append(item)
    return hits


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


def _failure(err: BaseException, hidden: bool, label: str) -> str:
    """What the learner is told about a failed test: the author's message for hidden checks, never code,
    inputs or a traceback line of a hidden test."""
    if isinstance(err, LearnerCallError):
        return str(err) + (" on a hidden test input" if hidden else "")
    if isinstance(err, GradingError):
        if hidden:
            return err.summary or "Your result differs from the expected values on a hidden test input."
        return str(err)
    if hidden:
        return f"The hidden tests could not use what your function returned ({type(err).__name__})."
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == label]
    line = f" (in the visible test: `{frames[-1].line}`)" if frames and frames[-1].line else ""
    return f"{type(err).__name__}: {str(err)[:300]}{line}"


def decide(solution: nbformat.NotebookNode, executed: nbformat.NotebookNode, learner: nbformat.NotebookNode,
           release: nbformat.NotebookNode, session: KernelSession | None) -> list[Exercise]:
    """Run each exercise's tests (visible, then hidden) in this process against the learner's functions."""
    cells = {_grade_id(c): c for c in solution.cells if _grade_id(c)}
    imports = next(c.source for c in solution.cells if c.cell_type == "code" and "from course_lib import" in c.source)
    forbidden = solution.metadata.get("course", {}).get("references", {})
    functions = [name for c in cells.values() if c.metadata["nbgrader"].get("solution")
                 for name in defined_functions(c.source)]
    executed_by_id = {_grade_id(c): c for c in executed.cells if _grade_id(c)}
    release_sources = {c.source for c in release.cells}
    added = "\n".join(c.source for c in learner.cells if c.get("cell_type") == "code" and not _grade_id(c)
                      and isinstance(c.get("source"), str) and c.source not in release_sources)
    base: dict[str, object] = {"__name__": "__grader__"}  # the solution's set-up, run once; each exercise a copy
    if session is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(imports, "<imports>", "exec"), base)
    verdicts = []
    for gid, cell in cells.items():
        meta = cell.metadata["nbgrader"]
        if not meta.get("grade"):
            continue
        exercise = gid.removesuffix("_tests")
        points = float(meta.get("points", 0))
        output = _visible_output(executed_by_id.get(gid))
        answer = executed_by_id.get(exercise).source if exercise in executed_by_id else ""
        uses = reference_uses(answer + "\n" + added, forbidden.get(exercise, []))
        if uses:
            verdicts.append(Exercise(gid, 0.0, points, False, f"This answer uses {', '.join(uses)}: the reference "
                                     "implementation you were asked to write yourself. It earns no points.", output))
            continue
        if session is None:
            verdicts.append(Exercise(gid, 0.0, points, False, "The notebook could not be run.", output))
            continue
        visible = HIDDEN.sub("", cell.source)
        hidden = "\n".join(m.group(1) for m in HIDDEN.finditer(cell.source))
        named = _named_objects(cell.source)
        ns = {**base, **named, **{name: LearnerFunction(name, session, named) for name in functions}}
        torch.manual_seed(0)
        passed, message = True, ""
        for part, label, is_hidden in ((visible, f"<visible tests of {gid}>", False),
                                       (hidden, f"<hidden tests of {gid}>", True)):
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    exec(compile(part, label, "exec"), ns)
            except Exception as err:
                passed, message = False, _failure(err, is_hidden, label)
                break
        verdicts.append(Exercise(gid, points if passed else 0.0, points, passed, message, output))
    return verdicts


def _visible_output(cell) -> str:
    """Text the learner's kernel produced in a test cell (its visible tests)."""
    if cell is None:
        return ""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(str(out.get("text", "")))
        elif out.get("output_type") == "error":
            parts.append("\n".join(str(t) for t in out.get("traceback", [])) or f"{out.get('ename')}: {out.get('evalue')}")
        elif "text/plain" in out.get("data", {}):
            parts.append(str(out["data"]["text/plain"]))
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", "\n".join(parts))[:20_000]


def grade_one(student: str, notebook: str, path: Path, release: Path, solution: Path, work: Path,
              limits: Limits, sandboxed: bool, hide: list[Path], executed_to: Path | None = None) -> Result:
    """Everything for one submission; never raises for a bad submission (the Result says what happened).
    ``executed_to``: where to keep the executed notebook (for the instructor; it has no hidden tests)."""
    start = time.monotonic()
    result = Result(student, notebook)
    release_nb, solution_nb = nbformat.read(release, as_version=4), nbformat.read(solution, as_version=4)
    try:
        learner = read_submission(path)
    except SubmissionError as err:
        result.problem = str(err)
        result.exercises = decide(solution_nb, release_nb, release_nb, release_nb, None)
        for e in result.exercises:
            e.message = "Not graded: " + str(err)
        result.seconds = time.monotonic() - start
        return result
    nb, result.notes = rebuild(learner, release_nb)
    workdir = work / uuid.uuid4().hex[:10]  # short: the kernel's sockets live in it (unix paths < 108 bytes)
    workdir.mkdir(parents=True)
    session = None
    try:
        sandbox = Sandbox.create(workdir, hide, limits) if sandboxed else None
        first = next((i for i, c in enumerate(nb.cells) if _grade_id(c)), len(nb.cells))
        minimal = [c.source for i, c in enumerate(nb.cells) if c.cell_type == "code" and
                   (i < first or c.get("metadata", {}).get("nbgrader", {}).get("solution"))]
        session = KernelSession(workdir, limits, sandbox, minimal)
        try:
            executed, notes = session.run_notebook(nb)
        except Exception as err:
            executed, notes = nb, [f"the notebook could not be run ({type(err).__name__})"]
            session.dead = True
        result.notes += notes
        if executed_to is not None:
            executed_to.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(executed, executed_to)
        before = len(session.notes)
        result.exercises = decide(solution_nb, executed, learner, release_nb, session)
        result.notes += session.notes[before:]
    finally:
        if session is not None:
            session.close()
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - start
    return result
