"""A bubblewrap sandbox for learners' kernels, with resource limits.

Inside the sandbox a kernel sees the system read-only, a private writable copy of one submission, an empty
/tmp and nothing of the course: the repository (solutions/, the gradebook, other students' files), the
submissions folder, the grading output and the course folder are hidden under empty tmpfs mounts; only the
Python environment and ``course_lib`` are mounted back, read-only, plus the model cache. It runs as user
nobody (uid 65534) in new user, PID, network, IPC and UTS namespaces: no network (loopback only), no
capabilities, no view of other processes, killed with the grader.

Limits (:class:`Limits`): address space and file size and core dumps by rlimit (``prlimit``); memory and
process count by cgroup (v1 ``memory`` and ``pids`` controllers, or v2) where the grader may create cgroups
(as root on these machines); CPU time by rlimit; each cell's time and the whole notebook's time by the
grader's clock; output by the grader (it keeps at most ``output_bytes`` of a notebook's outputs).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import course_lib
from course_lib.models import cache_dir

NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 6144          # resident memory (cgroup); the address space is capped at 4x this (rlimit)
    processes: int = 512           # processes and threads (cgroup pids.max)
    cpu_seconds: int = 3600        # CPU time of the kernel (rlimit)
    file_size_mb: int = 256        # largest file the kernel may write (rlimit)
    output_bytes: int = 2_000_000  # notebook outputs kept for the feedback; the rest is dropped
    cell_timeout_s: int = 600      # one cell
    call_timeout_s: int = 60       # one call of a learner's function by the tests
    notebook_timeout_s: int = 1200  # the whole notebook
    threads: int = 0               # torch/OpenMP/MKL threads of the kernel; 0: as many as cores


class SandboxUnavailable(RuntimeError):
    """No working sandbox on this machine; the message says how to get one."""


def bwrap() -> str:
    """The bubblewrap executable, checked to work here; raises :class:`SandboxUnavailable` otherwise."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: "
                                 "`apt-get install bubblewrap`), or pass --unsandboxed to grade trusted "
                                 "submissions without a sandbox")
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--uid", str(NOBODY), "--gid",
                            str(NOBODY), "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here ({probe.stderr.strip()}); "
                                 "pass --unsandboxed to grade trusted submissions without a sandbox")
    return path


def _cgroup_dirs(limits: Limits) -> list[Path]:
    """Fresh cgroups enforcing the memory and process limits, or [] where the grader may not create them."""
    name = f"course-grader-{uuid.uuid4().hex[:12]}"
    base = Path("/sys/fs/cgroup")
    made = []
    try:
        if (base / "cgroup.controllers").is_file():  # cgroup v2
            group = base / name
            group.mkdir()
            made.append(group)
            (group / "memory.max").write_text(str(limits.memory_mb * 2**20))
            (group / "memory.swap.max").write_text("0")
            (group / "pids.max").write_text(str(limits.processes))
        else:  # cgroup v1
            for controller, settings in (("memory", {"memory.limit_in_bytes": limits.memory_mb * 2**20}),
                                         ("pids", {"pids.max": limits.processes})):
                group = base / controller / name
                group.mkdir()
                made.append(group)
                for key, value in settings.items():
                    (group / key).write_text(str(value))
    except OSError:
        remove_cgroups(made)
        return []
    return made


def remove_cgroups(groups: list[Path]) -> None:
    """Remove cgroups made by :func:`_cgroup_dirs` (once their processes are gone)."""
    for group in groups:
        try:
            group.rmdir()
        except OSError:
            pass


@dataclass
class Sandbox:
    """How to start one kernel in a sandbox: ``command(argv)`` wraps a command line; ``cleanup()`` after."""
    workdir: Path                  # the private writable copy, mounted at the same path
    hide: list[Path]               # folders to hide (replaced by empty tmpfs)
    limits: Limits = field(default_factory=Limits)
    cgroups: list[Path] = field(default_factory=list)
    executable: str = "bwrap"      # bubblewrap, as checked by :meth:`create`

    def command(self, argv: list[str]) -> list[str]:
        root = Path(__file__).resolve().parents[1]
        back = []  # mounted back read-only after hiding
        interpreter = Path(os.path.realpath(sys.executable)).parents[1]
        for path in (Path(sys.prefix), Path(sys.base_prefix), interpreter, Path(course_lib.__file__).resolve().parent,
                     cache_dir()):
            if path.exists():
                back.append(path.resolve())
        hidden = sorted({p.resolve() for p in [root, *self.hide] if p.exists()}, key=lambda p: len(p.parts))
        cmd = [self.executable, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
               "--tmpfs", "/run", "--tmpfs", "/root", "--tmpfs", "/home"]
        for path in hidden:
            if not any(path.is_relative_to(h) and path != h for h in hidden):
                cmd += ["--tmpfs", str(path)]
        for path in back:
            cmd += ["--ro-bind", str(path), str(path)]
        cmd += ["--bind", str(self.workdir), str(self.workdir),
                "--unshare-all", "--die-with-parent", "--new-session", "--uid", str(NOBODY), "--gid", str(NOBODY),
                "--chdir", str(self.workdir), "--setenv", "HOME", "/tmp", "--setenv", "COURSE_LIB_CACHE",
                str(cache_dir().parent), "--setenv", "MPLCONFIGDIR", "/tmp",
                "--", "/bin/sh", "-c", '"$@"; exit $?', "sandbox"]  # not pid 1's child: kernels exit if ppid is 1
        limits = ["prlimit", f"--as={self.limits.memory_mb * 4 * 2**20}", f"--cpu={self.limits.cpu_seconds}",
                  f"--fsize={self.limits.file_size_mb * 2**20}", "--core=0", "--"]
        join = " ".join(f"echo $$ > {g / 'cgroup.procs'};" for g in self.cgroups)
        return ["/bin/sh", "-c", f'{join} exec "$@"', "sandbox", *limits, *cmd, *argv]

    @classmethod
    def create(cls, workdir: Path, hide: list[Path], limits: Limits) -> "Sandbox":
        executable = bwrap()  # checked before any cgroup is made
        return cls(workdir, hide, limits, _cgroup_dirs(limits), executable)

    def cleanup(self) -> None:
        remove_cgroups(self.cgroups)
