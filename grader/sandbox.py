"""A bubblewrap sandbox for learners' kernels, built from an allowlist, with resource limits.

Inside the sandbox a kernel sees a fresh root that holds only what it needs, read-only: the system's programs
and libraries (``/usr`` and its links), the Python installation and virtual environment, ``course_lib``, the
model cache, the dynamic linker's cache, the CPU topology, and a synthetic ``/etc/passwd``, ``/etc/group`` and
``/etc/hosts``. Nothing else of the machine exists there: no repository, course folder, gradebook, other
submissions or other copies of the course, no ``/home`` or ``/root``, no secrets in ``/etc``. Writable: a
size-capped tmpfs at ``/tmp`` (the kernel's home and working folder) and one at ``/dev/shm``, both gone with
the kernel, so a submission's files never reach the machine's disk. Two grader-owned folders are mounted in:
``private`` read-only (the connection file and the grader's call requests) and the folder of the kernel's
sockets, which is handed back to root once the kernel is ready (:meth:`Sandbox.seal`), so the kernel cannot
put anything there that the grader might follow.

Run as root (as on these machines), bubblewrap builds the namespaces (PID, network: loopback only, IPC, UTS,
cgroup) and the kernel then drops to the real uid/gid 65534 (nobody) with no groups, no capabilities and
``no_new_privs`` (``setpriv``): unprivileged outside the sandbox too, so root-only files stay unreadable even
if they were visible. The environment is cleared and set to a short list of variables (:func:`kernel_env`).
Run as another user, bubblewrap maps that user to 65534 in a user namespace instead, and the socket folder
cannot be sealed (documented in the README).

Limits (:class:`Limits`): address space, CPU time, file size and core dumps by rlimit (``prlimit``); memory and
process count by cgroup (v1 ``memory`` and ``pids`` controllers, or v2) where the grader may create cgroups;
disk by the tmpfs sizes; wall-clock time and output by the grader (:mod:`grader.kernel`).
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import course_lib
from course_lib.models import cache_dir

NOBODY = 65534
CGROUP_PREFIX = "course-grader-"
RUN_PREFIX = "cg-"        # grader-owned run folders in the system's temp folder: cg-<pid>-<random>
SYSTEM = ("usr", "bin", "lib", "lib32", "lib64", "libx32", "sbin")
SHM_BYTES = 64 * 2**20
ETC = {"passwd": "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n",
       "group": "root:x:0:\nnogroup:x:65534:\n",
       "hosts": "127.0.0.1 localhost\n::1 localhost\n",
       "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n"}


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 6144          # resident memory (cgroup); the address space is capped at 4x this (rlimit)
    processes: int = 512           # processes and threads (cgroup pids.max)
    cpu_seconds: int = 3600        # CPU time of the kernel (rlimit)
    file_size_mb: int = 256        # largest file the kernel may write (rlimit)
    disk_mb: int = 1024            # the kernel's writable tmpfs (/tmp); its pages count as the kernel's memory
    output_bytes: int = 2_000_000  # notebook outputs kept for the feedback (display updates included)
    cell_timeout_s: int = 600      # one cell
    examine_s: int = 60            # the grader's reading and static checks of one submission (a child process)
    grader_memory_mb: int = 3072   # what the grader's own process may add while it grades one submission
    call_timeout_s: int = 60       # one call of a learner's function by the tests
    notebook_timeout_s: int = 1200  # the whole submission: its notebook, restarts and every call of the tests
    threads: int = 0               # torch/OpenMP/MKL threads of the kernel; 0: as many as cores
    run_marked_cells: bool = False  # also run the cells tagged skip-grading (demos, training runs)


class SandboxUnavailable(RuntimeError):
    """No working sandbox on this machine; the message says how to get one."""


class SandboxBreach(RuntimeError):
    """The kernel put something unexpected where only its sockets belong."""


def privileged() -> bool:
    """Whether the grader runs as root: the kernel then drops to the real uid nobody (see the module doc)."""
    return os.geteuid() == 0


def _system_args() -> list[str]:
    """The system's programs and libraries, read-only (merged-/usr links kept as links)."""
    args = []
    for top in SYSTEM:
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _namespace_args() -> list[str]:
    args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv"]
    if not privileged():
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    return args


def _drop_privileges() -> list[str]:
    """As root: become uid/gid nobody for real, without groups, capabilities or a way to regain them."""
    if not privileged():
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs"]


def bwrap() -> str:
    """The bubblewrap executable, checked to build this module's sandbox here; raises
    :class:`SandboxUnavailable` otherwise."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: "
                                 "`apt-get install bubblewrap`), or pass --unsandboxed to grade trusted "
                                 "submissions without a sandbox")
    if privileged() and shutil.which("setpriv") is None:
        raise SandboxUnavailable("setpriv (util-linux) is needed to drop the kernel's privileges; install util-linux")
    probe = subprocess.run([path, *_system_args(), "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size",
                            str(2**20), "--tmpfs", "/tmp", *_namespace_args(), "--", *_drop_privileges(),
                            "/bin/sh", "-c", "touch /tmp/probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here ({probe.stderr.strip()[:300]}); "
                                 "pass --unsandboxed to grade trusted submissions without a sandbox")
    return path


def read_only_paths() -> list[Path]:
    """Folders the kernel needs besides the system: the Python installation and virtual environment, every
    site-packages folder on the grader's path (a ``.pth`` may add another environment's), ``course_lib`` (an
    editable install or a ``PYTHONPATH`` checkout lives outside the environment) and the model cache. Wherever
    they are, ``/tmp`` included: they are mounted after the sandbox's own ``/tmp``."""
    interpreter = Path(os.path.realpath(sys.executable)).parents[1]
    sites = [Path(p) for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    wanted = [Path(sys.prefix), Path(sys.base_prefix), interpreter, Path(course_lib.__file__).resolve().parent,
              cache_dir(), *sites]
    paths = sorted({p.resolve() for p in wanted if p.exists()}, key=lambda p: len(p.parts))
    system = [Path("/") / top for top in SYSTEM]
    kept: list[Path] = []
    for path in paths:
        if not any(path.is_relative_to(k) for k in kept + system):
            kept.append(path)
    return kept


def _parents(paths: list[Path]) -> list[str]:
    """bubblewrap arguments making the folders above mount points traversable (it would make them 0700)."""
    made: list[Path] = []
    for path in paths:
        for parent in reversed(path.parents[:-1]):
            if parent not in made and parent != Path("/tmp"):
                made.append(parent)
    return [arg for parent in made for arg in ("--perms", "0755", "--dir", str(parent))]


def _cgroup_dirs(limits: Limits) -> list[Path]:
    """Fresh cgroups enforcing the memory and process limits, or [] where the grader may not create them."""
    name = f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
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
    """Kill whatever still runs in cgroups made by :func:`_cgroup_dirs`, then remove them."""
    for group in groups:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if (group / "cgroup.kill").exists():
                    (group / "cgroup.kill").write_text("1")
                else:
                    for pid in (group / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except (ProcessLookupError, ValueError):
                            pass
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str, prefix: str) -> int | None:
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def sweep_stale(temp: Path = Path("/tmp")) -> list[Path]:
    """Remove what an aborted grading run left behind: cgroups and run folders of grader processes that are
    gone. Returns what was removed."""
    removed = []
    base = Path("/sys/fs/cgroup")
    for parent in [base, base / "memory", base / "pids", base / "unified"]:
        try:
            groups = [g for g in parent.iterdir() if g.name.startswith(CGROUP_PREFIX) and g.is_dir()]
        except OSError:
            continue
        for group in groups:
            pid = _owner_pid(group.name, CGROUP_PREFIX)
            if pid is None or not _alive(pid):
                remove_cgroups([group])
                if not group.exists():
                    removed.append(group)
    for folder in temp.glob(f"{RUN_PREFIX}*"):
        pid = _owner_pid(folder.name, RUN_PREFIX)
        if pid is not None and folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == os.geteuid() \
                and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def run_folder() -> Path:
    """A fresh grader-owned folder (mode 0700) for one grading run's kernels, under a short path: the kernels'
    unix sockets live in it and their paths must stay under 108 bytes. Named after this process so that
    :func:`sweep_stale` can tell when its owner is gone."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-", dir="/tmp"))


@dataclass
class Sandbox:
    """How to start one kernel in a sandbox: ``command(argv, env, private, sockets)`` wraps a command line;
    ``sockets_folder()`` before the launch, ``seal()`` once the kernel is ready, ``cleanup()`` after.
    ``mounts``: ``(source, target)`` files and folders mounted read-only over what the read-only paths hold (the
    notebook's references, removed: :mod:`grader.references`)."""
    limits: Limits = field(default_factory=Limits)
    cgroups: list[Path] = field(default_factory=list)
    executable: str = "bwrap"      # bubblewrap, as checked by :meth:`create`
    mounts: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def create(cls, limits: Limits, mounts: list[tuple[str, str]] = ()) -> "Sandbox":
        executable = bwrap()  # checked before any cgroup is made
        return cls(limits, _cgroup_dirs(limits), executable, list(mounts))

    @staticmethod
    def sockets_folder(path: Path) -> Path:
        """A new folder for the kernel's sockets, writable by the kernel until :meth:`seal`."""
        path.mkdir(mode=0o700)
        if privileged():
            os.chown(path, NOBODY, NOBODY)
        return path

    @staticmethod
    def seal(path: Path) -> None:
        """Once the kernel has bound its sockets: the folder becomes root's, so the kernel can neither add,
        remove nor replace anything in it; anything there but sockets is a breach."""
        if privileged():
            os.chown(path, 0, 0)
            os.chmod(path, 0o755)
        for entry in os.scandir(path):
            if not stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                raise SandboxBreach(f"unexpected entry in the kernel's socket folder: {entry.name!r}")

    def command(self, argv: list[str], env: dict[str, str], private: Path, sockets: Path) -> list[str]:
        """The command line that runs ``argv`` in the sandbox, with :attr:`mounts` over the read-only paths."""
        etc = private / "etc"
        etc.mkdir(exist_ok=True)
        # /tmp first: a virtual environment or checkout under /tmp is then mounted inside it, not hidden by it.
        args = ["--perms", "1777", "--size", str(self.limits.disk_mb * 2**20), "--tmpfs", "/tmp",
                *_system_args(), *_parents([Path("/etc/passwd"), Path("/sys/devices/system/cpu")])]
        for name, text in ETC.items():
            (etc / name).write_text(text)
            args += ["--ro-bind", str(etc / name), f"/etc/{name}"]
        args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
                 "--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
        paths = read_only_paths()
        args += _parents(paths)
        for path in paths:
            args += ["--ro-bind", str(path), str(path)]
        for source, target in self.mounts:
            args += ["--ro-bind", source, target]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
                 *_parents([private, sockets]),
                 "--ro-bind", str(private), str(private), "--bind", str(sockets), str(sockets),
                 "--chdir", "/tmp", *_namespace_args()]
        for key, value in env.items():
            args += ["--setenv", key, value]
        inner = [*_drop_privileges(), "/bin/sh", "-c", '"$@"; exit $?', "sandbox", *argv]  # kernels exit if ppid is 1
        limits = ["prlimit", f"--as={self.limits.memory_mb * 4 * 2**20}", f"--cpu={self.limits.cpu_seconds}",
                  f"--fsize={self.limits.file_size_mb * 2**20}", "--core=0", "--"]
        join = " ".join(f"echo $$ > {g / 'cgroup.procs'};" for g in self.cgroups)
        return ["/bin/sh", "-c", f'{join} exec "$@"', "sandbox", *limits, self.executable, *args, "--", *inner]

    def cleanup(self) -> None:
        remove_cgroups(self.cgroups)
