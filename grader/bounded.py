"""Bounds on the grader's own work for one submission: learner text is examined in a child process with a time
and memory limit, and the grader's process itself runs each submission under an address-space limit.

A submission controls its text (the notebook's JSON, its cells) and what its kernel answers. Parsing and static
checks of that text run in a forked child (:func:`in_child`), killed at its limits; the decoded answers and what
the tests compute from them stay under :func:`memory_bound`, so a hostile value ends as a failed test
(``MemoryError``), never as a grading machine out of memory.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import time
from collections.abc import Callable, Iterator


class Overrun(Exception):
    """The child ran past its time or memory, or died; the message says which (for the learner)."""


def _vm_bytes() -> int:
    """This process's address space now (VmSize)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def in_child(function: Callable[..., object], *args, seconds: float, memory_mb: int) -> object:
    """``function(*args)`` in a forked child whose address space may grow by ``memory_mb`` and which is killed
    after ``seconds``; returns its JSON-able result or raises :class:`Overrun`. Exceptions of ``function`` come back
    as Overrun too (its type name), never as a traceback of the child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        try:
            os.close(read)
            limit = _vm_bytes() + memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            cpu = int(seconds) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
            try:
                data = json.dumps({"ok": function(*args)}).encode()
            except BaseException as err:  # noqa: BLE001 - everything becomes a short message
                data = json.dumps({"error": type(err).__name__}).encode()
            with os.fdopen(write, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(write)
    chunks, deadline = [], time.monotonic() + seconds
    with os.fdopen(read, "rb") as f:
        while True:
            left = deadline - time.monotonic()
            ready = select.select([f], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise Overrun(f"it took longer than {seconds:.0f} s")
            chunk = os.read(f.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        reason = "it needed more than its time" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU \
            else "it stopped without an answer"
        raise Overrun(reason) from None
    if "error" in reply:
        kind = reply["error"]
        raise Overrun(f"it needed more than {memory_mb:,} MB" if kind == "MemoryError" else f"{kind}")
    return reply["ok"]


@contextlib.contextmanager
def memory_bound(memory_mb: int) -> Iterator[None]:
    """Within the block, this process's address space may grow by at most ``memory_mb`` (a soft limit, restored
    after): an allocation past it fails with MemoryError (torch: RuntimeError) in the code that asked for it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_bytes() + memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
