"""The learner's kernel: run the rebuilt notebook in the sandbox, then answer the tests' calls as plain data.

Every limit is enforced here (per cell, per call, one clock for the whole submission, output budget, message
size); a kernel that overruns is killed and a fresh one runs only the set-up, solution and probe cells. Cells
tagged ``skip-grading`` are not run, nor the test cells: their tests run in the grader (:mod:`grader.verdicts`),
where the references that do not exist in the kernel may be used. What comes out of the kernel (text, outputs) is
made safe before anyone sees it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import torch
import zmq
from jupyter_client import AsyncKernelClient, AsyncKernelManager
from jupyter_client.connect import channel_socket_types
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_output

import course_lib
from course_lib.grading import wire
from course_lib.models import cache_dir

from .cells import is_skipped
from .results import safe_text
from .sandbox import Limits, Sandbox

MAX_KERNEL_MESSAGE = wire.MAX_MESSAGE_BYTES * 2  # one message from a kernel (an answer is base64: 4/3 of its bytes)
SKIPPED_OUTPUT = "[not run when grading: the course marks this cell as not needed for grading]\n"
TESTS_OUTPUT = "[these tests ran in the grader, outside your kernel: see the feedback for their result]\n"
KEPT_MIME = ("text/plain", "image/png", "image/jpeg")  # what an instructor's browser may render of learner outputs
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")


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
    package = Path(course_lib.__file__).resolve().parent
    if package.parent.name not in ("site-packages", "dist-packages"):  # an editable or PYTHONPATH checkout
        env["PYTHONPATH"] = str(package.parent)  # in the sandbox only course_lib is there
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
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
                cell.outputs = [new_output("stream", name="stdout", text=TESTS_OUTPUT)]
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

    def call(self, name: str, args: tuple, kwargs: dict, refs: dict[int, str], probe: dict | None = None
             ) -> tuple[dict, dict]:
        """Call the learner's function ``name`` in the kernel (or the given probe ``name``, defined from
        ``probe`` by the call handler: :func:`course_lib.grading.wire.serve`); returns the answer message and its tensors."""
        if self.dead:
            raise LearnerCallError(name, "no kernel: it died or ran past its limits")
        if self._left() <= 1:
            raise LearnerCallError(name, f"the submission used up its {self.limits.notebook_timeout_s} s")
        tensors: dict[str, torch.Tensor] = {"rng": torch.get_rng_state()}
        message = {"name": name, "args": wire.encode(tuple(args), tensors, refs),
                   "kwargs": wire.encode(dict(kwargs), tensors, refs)}
        if probe is not None:
            message["probe"] = probe
        request = self._request(message, tensors)
        cell = new_code_cell(f"import course_lib.grading.wire as __w; __w.serve({str(request)!r}, globals()); del __w")
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
        self.public, self.detail = f"`{name}` did not return a result ({what})", detail
        super().__init__(self.public[:-1] + (f": {detail})" if detail else ")"))
