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
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import torch
import zmq
from jupyter_client import AsyncKernelClient, AsyncKernelManager
from jupyter_client.connect import channel_socket_types
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_output

from course_lib import wire
from course_lib.grading import GradingError
from course_lib.models import cache_dir
from course_lib.tripwire import TAMPERING

from .authoring import is_skipped
from .sandbox import Limits, Sandbox

MAX_NOTEBOOK_BYTES = 20 * 2**20
MAX_KERNEL_MESSAGE = wire.MAX_MESSAGE_BYTES * 2  # one message from a kernel (an answer is base64: 4/3 of its bytes)
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS\n?", re.S)
SKIPPED_OUTPUT = "[not run when grading: the course marks this cell as not needed for grading]\n"


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
    problem: str = ""       # why nothing could be graded, if so (for the learner)
    notes: list[str] = field(default_factory=list)  # what the grader changed or stopped
    seconds: float = 0.0
    infrastructure: str = ""  # the machine failed, not the submission (for the instructor)

    def made_safe(self) -> "Result":
        """Every text made safe for every writer (see :func:`safe_text`): much of it came from the kernel."""
        self.problem, self.infrastructure = safe_text(self.problem), safe_text(self.infrastructure)
        self.notes = [safe_text(n, 2000) for n in self.notes]
        for ex in self.exercises:
            ex.message, ex.output = safe_text(ex.message, 5000), safe_text(ex.output)
        return self

    @property
    def score(self) -> float:
        return sum(e.points for e in self.exercises)

    @property
    def max_score(self) -> float:
        return sum(e.max_points for e in self.exercises)


# --- reading and rebuilding the submission --------------------------------------------------------------------

def read_submission(path: Path) -> nbformat.NotebookNode:
    """The submitted notebook, or :class:`SubmissionError` naming what is wrong with the file."""
    try:  # one open, never through a link, never blocking on a pipe
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise SubmissionError(f"{path.name} is not a regular file") from err
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SubmissionError(f"{path.name} is not a regular file")
        if info.st_size > MAX_NOTEBOOK_BYTES:
            raise SubmissionError(f"{path.name} is {info.st_size / 2**20:.0f} MB; notebooks over "
                                  f"{MAX_NOTEBOOK_BYTES >> 20} MB are not graded (clear large outputs and resubmit)")
        data = f.read(MAX_NOTEBOOK_BYTES + 1)
    try:
        text = data.decode("utf-8")
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


# --- text that came out of a learner's kernel --------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
KEPT_MIME = ("text/plain", "image/png", "image/jpeg")  # what an instructor's browser may render of learner outputs
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")


def safe_text(value: object, limit: int = 20_000) -> str:
    """Any value as text that every writer accepts (HTML, CSV, JSON, notebook, SQLite, terminal): lone
    surrogates and undecodable bytes replaced, terminal escapes and control characters (but newline and tab)
    removed, at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    text = text[:limit * 2].encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("", _ANSI.sub("", text))[:limit]


def sanitize_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The executed notebook as it may be stored and shown: outputs keep plain text and PNG/JPEG images only
    (no HTML, JavaScript, SVG, Markdown or widget views: an instructor's browser would render them), every
    text made safe, metadata of outputs dropped, no widget state."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                kept.append(new_output("stream", name="stderr" if out.get("name") == "stderr" else "stdout",
                                       text=safe_text(out.get("text", ""))))
            elif kind == "error":
                kept.append(new_output("error", ename=safe_text(out.get("ename", ""), 200),
                                       evalue=safe_text(out.get("evalue", ""), 2000),
                                       traceback=[safe_text(t, 5000) for t in list(out.get("traceback", []))[:50]]))
            elif kind in ("display_data", "execute_result"):
                raw = out.get("data") if isinstance(out.get("data"), dict) else {}
                data = {}
                for mime in KEPT_MIME:
                    value = raw.get(mime)
                    if isinstance(value, list):
                        value = "".join(str(v) for v in value)
                    if isinstance(value, str) and (mime == "text/plain" or _BASE64.fullmatch(value)):
                        data[mime] = safe_text(value, 2_000_000) if mime == "text/plain" else value
                if data:
                    extra = {"execution_count": cell.get("execution_count")} if kind == "execute_result" else {}
                    kept.append(new_output(kind, data=data, **extra))
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    return nb


# --- the kernel --------------------------------------------------------------------------------------------------

class _GuardedKernelClient(AsyncKernelClient):
    """A kernel client whose sockets refuse messages over MAX_KERNEL_MESSAGE bytes (ZeroMQ drops the
    connection instead of buffering them in the grader's memory)."""

    def _create_connected_socket(self, channel, identity=None):
        sock = self.context.socket(channel_socket_types[channel])
        sock.linger = 1000
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_KERNEL_MESSAGE)
        if identity:
            sock.identity = identity
        sock.connect(self._make_url(channel))
        return sock


class _GuardedKernelManager(AsyncKernelManager):
    """Writes the connection file readable by the sandboxed kernel's unprivileged user (the folder holding it
    is the grader's, mounted read-only)."""
    client_factory = _GuardedKernelClient

    def write_connection_file(self, **kwargs):
        super().write_connection_file(**kwargs)
        os.chmod(self.connection_file, 0o644)


class _GuardedClient(NotebookClient):
    """nbclient that keeps at most ``budget`` bytes of outputs per notebook, counting every message that can
    change what is stored (display updates and clears included); widget messages (comms) are dropped, so
    widget outputs land in their cell. While ``calling``, the kernel's messages
    change nothing: only an answer (display data of type ANSWER_MIME) is taken, into ``answer``."""
    budget = 2_000_000
    used = 0
    truncated = False
    calling = False
    answer: object = None
    KEPT = frozenset({"execute_input", "stream", "display_data", "update_display_data", "execute_result", "error",
                      "clear_output"})

    def process_message(self, msg, cell, cell_index):
        msg_type = msg.get("msg_type")
        content = msg.get("content") if isinstance(msg.get("content"), dict) else {}
        if msg_type == "status":
            return super().process_message(msg, cell, cell_index)
        if self.calling:
            data = content.get("data")
            if msg_type == "display_data" and isinstance(data, dict) and wire.ANSWER_MIME in data:
                self.answer = data[wire.ANSWER_MIME]
            return None
        if msg_type not in self.KEPT:  # widget comms and anything new: the grader has no use for them
            return None
        if msg_type != "execute_input":
            self.used += len(json.dumps(content, default=str))
            if self.used > self.budget:
                if not self.truncated:
                    self.truncated = True
                    cell.outputs.append(new_output("stream", name="stderr",
                                                   text=f"\n[output stopped by the grader: over {self.budget:,} bytes]\n"))
                return None
        return super().process_message(msg, cell, cell_index)


def kernel_env(limits: Limits, home: str) -> dict[str, str]:
    """The whole environment of a learner's kernel (nothing of the grader's): offline hub, its home, the model
    cache, and its share of the cores when kernels run side by side."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8",
           "MPLCONFIGDIR": f"{home}/.matplotlib", "COURSE_LIB_CACHE": str(cache_dir().parent),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONDONTWRITEBYTECODE": "1"}
    if limits.threads:
        env.update({name: str(limits.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    return env


class KernelSession:
    """A kernel (sandboxed unless told otherwise) that runs a notebook, then answers calls. A cell or call that
    runs past its limit gets the kernel killed (interrupts can be ignored by the code they interrupt); a fresh
    kernel then runs only the ``minimal`` cells (set-up and solutions) so the other exercises can be decided.
    One clock covers it all: the notebook, restarts and calls end at ``deadline``.

    ``folder`` is the grader's own (mode 0700): ``private/`` holds the connection file and the call requests
    (read-only in the sandbox), ``sockets<n>/`` the kernel's sockets (sealed once the kernel is ready)."""

    MAX_RESTARTS = 3

    def __init__(self, folder: Path, limits: Limits, sandbox: Sandbox | None, minimal: list[str]):
        self.folder, self.limits, self.sandbox, self.minimal = folder, limits, sandbox, minimal
        self.private = folder / "private"
        self.private.mkdir(mode=0o755)
        (self.private / "calls").mkdir(mode=0o755)
        self.calls = self.restarts = self.skipped = 0
        self.dead = False
        self.notes: list[str] = []
        self.deadline = time.monotonic() + limits.notebook_timeout_s

    def launch(self, nb: nbformat.NotebookNode) -> None:
        from jupyter_client.kernelspec import KernelSpec

        sockets = self.folder / f"sockets{self.restarts}"
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        if self.sandbox:
            Sandbox.sockets_folder(sockets)
            env = kernel_env(self.limits, "/tmp")
            argv = self.sandbox.command(argv, env, self.private, sockets)
            cwd = self.folder
        else:
            sockets.mkdir(mode=0o700)
            cwd = self.folder / "work"
            cwd.mkdir(exist_ok=True)
            env = kernel_env(self.limits, str(cwd))
        self.km = _GuardedKernelManager(transport="ipc", ip=str(sockets / "k"),
                                        connection_file=str(self.private / f"kernel{self.restarts}.json"))
        self.km._kernel_spec = KernelSpec(argv=argv, language="python", display_name="sandboxed Python", env={})
        self.client = _GuardedClient(nb, km=self.km, timeout=self.limits.cell_timeout_s, allow_errors=True,
                                     interrupt_on_timeout=False, store_widget_state=False,
                                     resources={"metadata": {"path": str(cwd)}})
        self.client.budget = self.limits.output_bytes
        # The kernel's own stdout/stderr (below IPython: os.write, C libraries) go nowhere, not to the
        # instructor's terminal: what the learner sees is the notebook's captured output, within its budget.
        # Its environment is exactly ``env``: nothing of the grader's (secrets included) reaches it.
        self._ctx = self.client.setup_kernel(cleanup_kc=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             env=env)
        self._ctx.__enter__()
        if self.sandbox:
            Sandbox.seal(sockets)  # the kernel is ready and no learner code has run yet

    def _kill(self) -> None:
        from jupyter_core.utils import run_sync

        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:
            pass

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def _execute(self, nb: nbformat.NotebookNode, keep_notes: bool) -> bool:
        """Run the code cells of ``nb`` but those marked ``skip-grading`` (unless ``limits.run_marked_cells``);
        False if one ran past a limit or the kernel died (then it is killed)."""
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if is_skipped(cell) and not self.limits.run_marked_cells:
                cell.outputs = [new_output("stream", name="stdout", text=SKIPPED_OUTPUT)]
                self.skipped += keep_notes
                continue
            if self._left() <= 1:
                self.notes.append(f"the submission ran past its {self.limits.notebook_timeout_s} s limit; "
                                  "later cells were not run")
                self._kill()
                return False
            self.client.timeout = int(min(self.limits.cell_timeout_s, self._left()))
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
        """A fresh kernel with only the set-up and solution cells run (within what is left of the submission's
        time), or ``dead`` when that fails too."""
        self._kill()
        self.restarts += 1
        if self.restarts > self.MAX_RESTARTS or self._left() <= 1:
            self.dead = True
            return
        nb = nbformat.v4.new_notebook(cells=[new_code_cell(src) for src in self.minimal])
        try:
            self.launch(nb)
            self.dead = not self._execute(nb, keep_notes=False)
        except Exception:
            self.dead = True

    def run_notebook(self, nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
        """Execute the cells of ``nb`` in the kernel :meth:`launch` started for it (errors do not stop it),
        within the per-cell and whole-submission limits."""
        if not self._execute(nb, keep_notes=True):
            self._restart()
        if self.skipped:
            self.notes.append(f"{self.skipped} cells that the course marks as not needed for grading (demos, "
                              "training runs, measurements) were not run; they do not change your grade")
        return nb, self.notes

    def _request(self, message: dict, tensors: dict[str, torch.Tensor]) -> Path:
        """Write a call request where only the grader writes (a new file, never through a link)."""
        self.calls += 1
        path = self.private / "calls" / f"c{self.calls}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(wire.pack(message, tensors))
        return path

    def call(self, name: str, args: tuple, kwargs: dict, refs: dict[int, str], references: list[str]) -> tuple[dict, dict]:
        """Call the learner's function ``name`` in the kernel, with tripwires on ``references``; returns the
        answer message and its tensors."""
        if self.dead:
            raise LearnerCallError(name, "no kernel: it died or ran past its limits")
        if self._left() <= 1:
            raise LearnerCallError(name, f"the submission used up its {self.limits.notebook_timeout_s} s")
        tensors: dict[str, torch.Tensor] = {"rng": torch.get_rng_state()}
        message = {"name": name, "args": wire.encode(tuple(args), tensors, refs),
                   "kwargs": wire.encode(dict(kwargs), tensors, refs), "references": list(references)}
        request = self._request(message, tensors)
        cell = new_code_cell(f"import course_lib.wire as __w; __w.serve({str(request)!r}, globals()); del __w")
        timeout = int(min(self.limits.call_timeout_s, self._left()))
        self.client.nb = nbformat.v4.new_notebook(cells=[cell])  # a call never touches the executed notebook
        self.client.timeout, self.client.calling, self.client.answer = timeout, True, None
        try:
            self.client.execute_cell(cell, 0)
        except (CellTimeoutError, TimeoutError) as err:
            self._restart()
            raise LearnerCallError(name, f"no answer within {timeout} s") from err
        except DeadKernelError as err:
            self._restart()
            raise LearnerCallError(name, "the kernel crashed or exited") from err
        except Exception as err:  # a message the client could not read (malformed, oversized)
            self._restart()
            raise LearnerCallError(name, "no readable answer") from err
        finally:
            self.client.calling = False
        try:
            answer, out = wire.decode_answer(self.client.answer)
        except wire.WireError as err:
            raise LearnerCallError(name, "no readable answer") from err
        if answer.get("ok") is not True:
            error = answer.get("error")
            raise LearnerCallError(name, "it raised an exception",
                                   error if isinstance(error, str) and error.isidentifier() else "")
        return answer, out

    def close(self) -> None:
        if hasattr(self, "km"):
            self._kill()
        if self.sandbox:
            self.sandbox.cleanup()


class LearnerCallError(Exception):
    """A call of the learner's function did not return a usable value. ``what`` is the grader's own words;
    ``detail`` came from the kernel (an exception's type name) and is shown for visible tests only."""

    def __init__(self, name: str, what: str, detail: str = ""):
        self.public = f"`{name}` did not return a result ({what})"
        super().__init__(self.public[:-1] + (f": {detail})" if detail else ")"))


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
    """Stands in the grader's namespace for a function the learner wrote: each call runs in the kernel, under
    tripwires on the exercise's ``references``; which of them ran is collected in ``used``. The grader's own
    state never takes anything from the kernel: a call that changes its tensor arguments in place fails (the
    grader's tensors stay as they were), and the grader's random generator moves on by itself."""

    def __init__(self, name: str, session: KernelSession, refs: dict[str, object], references: list[str]):
        self.name, self.session = name, session
        self.refs = {id(v): k for k, v in refs.items() if v is not None}
        self.named = refs
        self.references = list(references)
        self.used: set[str] = set()

    def __call__(self, *args, **kwargs):
        answer, tensors = self.session.call(self.name, args, kwargs, self.refs, self.references)
        torch.rand(1)  # each call sees a new state of the grader's generator, as two draws in a row would
        self.used |= {str(r) for r in answer.get("references") or [] if r in self.references or r == TAMPERING}
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


# --- deciding the exercises ------------------------------------------------------------------------------------

def defined_functions(source: str) -> list[str]:
    """Names of the top-level functions a solution cell defines."""
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def reference_uses(source: str, forbidden: list[str]) -> list[str]:
    """Which of ``forbidden`` (dotted names such as 'align.dpo_loss', or module names such as 'trl') the code
    names through imports (aliases resolved) or attribute chains. A first line only: strings never count (a
    learner may print a function's name), and what this misses (computed names, ``exec``) the tripwires of
    :mod:`course_lib.tripwire` see when the function runs. Code that cannot be parsed names nothing."""
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
    for node in nodes:
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            chain.append(aliases.get(node.id, node.id))
            names.add(".".join(reversed(chain)))
    hits = []
    for item in forbidden:
        if "." in item:
            hit = any(n == item or n.endswith("." + item) for n in names)
        else:
            hit = any(n == item or n.startswith(item + ".") for n in names)
        if hit:
            hits.append(item)
    return hits


def _reference_message(uses: list[str] | set[str]) -> str:
    if TAMPERING in uses:
        return ("This answer switched off the grader's checks while it ran (sys.setprofile / settrace). "
                "It earns no points.")
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


def _failure(err: BaseException, hidden: bool, label: str) -> str:
    """What the learner is told about a failed test: the author's message for hidden checks, never code,
    inputs or a traceback line of a hidden test."""
    if isinstance(err, LearnerCallError):  # on hidden inputs, nothing the kernel sent is repeated
        return err.public + " on a hidden test input" if hidden else str(err)
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
           release: nbformat.NotebookNode, session: KernelSession) -> list[Exercise]:
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
        references = forbidden.get(exercise, [])
        uses = reference_uses(answer + "\n" + added, references)
        if uses:
            verdicts.append(Exercise(gid, 0.0, points, False, _reference_message(uses), output))
            continue
        visible = HIDDEN.sub("", cell.source)
        hidden = "\n".join(m.group(1) for m in HIDDEN.finditer(cell.source))
        named = _named_objects(cell.source)
        learners = {name: LearnerFunction(name, session, named, references) for name in functions}
        ns = {**base, **named, **learners}
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
        used = set().union(*(f.used for f in learners.values()))
        if used:  # the tripwires saw a reference run while the tests called the learner's code
            passed, message = False, _reference_message(used)
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
    return safe_text("\n".join(parts))


def blank_verdicts(solution: nbformat.NotebookNode, message: str) -> list[Exercise]:
    """Zero points for every exercise of a notebook, each with ``message``."""
    return [Exercise(_grade_id(c), 0.0, float(c.metadata["nbgrader"].get("points", 0)), False, message)
            for c in solution.cells if _grade_id(c) and c.metadata["nbgrader"].get("grade")]


def grade_one(student: str, notebook: str, path: Path, release: Path, solution: Path, work: Path,
              limits: Limits, sandboxed: bool, executed_to: Path | None = None) -> Result:
    """Everything for one submission; never raises (the Result says what happened, a submission that broke the
    grader included). ``work``: a grader-owned folder for the kernel's private files. ``executed_to``: where
    to keep the executed notebook (for the instructor; no hidden tests, outputs sanitized)."""
    start = time.monotonic()
    result = Result(student, notebook)
    solution_nb = nbformat.read(solution, as_version=4)
    try:
        _grade_into(result, path, nbformat.read(release, as_version=4), solution_nb, work, limits, sandboxed,
                    executed_to)
    except Exception as err:  # whatever a submission does, it is this submission's problem, not the class's
        result.problem = f"the grader could not grade this notebook ({type(err).__name__}); tell your instructor"
        result.exercises = blank_verdicts(solution_nb, "Not graded: " + result.problem)
    result.seconds = time.monotonic() - start
    return result.made_safe()


def _grade_into(result: Result, path: Path, release_nb, solution_nb, work: Path, limits: Limits, sandboxed: bool,
                executed_to: Path | None) -> None:
    try:
        learner = read_submission(path)
    except SubmissionError as err:
        result.problem = str(err)
        result.exercises = blank_verdicts(solution_nb, "Not graded: " + str(err))
        return
    nb, result.notes = rebuild(learner, release_nb)
    folder = work / uuid.uuid4().hex[:10]  # short: the kernel's sockets live in it (unix paths < 108 bytes)
    folder.mkdir(mode=0o700, parents=True)
    session = None
    try:
        sandbox = Sandbox.create(limits) if sandboxed else None
        first = next((i for i, c in enumerate(nb.cells) if _grade_id(c)), len(nb.cells))
        minimal = [c.source for i, c in enumerate(nb.cells) if c.cell_type == "code" and not is_skipped(c) and
                   (i < first or c.get("metadata", {}).get("nbgrader", {}).get("solution"))]
        session = KernelSession(folder, limits, sandbox, minimal)
        try:
            session.launch(nb)
        except Exception as err:  # no learner code has run yet: the machine, not the submission
            result.infrastructure = f"the kernel could not be started ({type(err).__name__}: {str(err)[:200]})"
            result.problem = "the grader could not start a kernel for this notebook; tell your instructor"
            result.exercises = blank_verdicts(solution_nb, "Not graded: " + result.problem)
            return
        try:
            executed, notes = session.run_notebook(nb)
        except Exception as err:
            executed, notes = nb, [f"the notebook could not be run ({type(err).__name__})"]
            session.dead = True
        result.notes += notes
        executed = sanitize_outputs(executed)
        if executed_to is not None:
            executed_to.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(executed, executed_to)
        before = len(session.notes)
        result.exercises = decide(solution_nb, executed, learner, release_nb, session)
        result.notes += session.notes[before:]
    finally:
        if session is not None:
            session.close()
        shutil.rmtree(folder, ignore_errors=True)
