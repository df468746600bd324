"""Finding the submissions in a folder or zip: ``<student>/<notebook>.ipynb``, with every name treated as hostile.

A zip is unpacked with size and path checks; student ids must match :data:`STUDENT_ID`; links, unsafe names and
files that are not course notebooks are reported as problems, never graded or followed.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .paths import SOLUTIONS, GraderError, assignment_names


@dataclass(frozen=True)
class Submission:
    student: str
    assignment: str
    path: Path


@dataclass(frozen=True)
class Problem:
    """Why something of a student's was not graded; ``text`` is the message shown (it names the file)."""
    student: str
    text: str


STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # what a student folder may be called
MAX_UNPACKED_BYTES = 2 * 2**30  # a zip of submissions may unpack to at most this


def shown(name: str) -> str:
    """A name from a submission as it may appear in a message: quoted, escapes for anything unusual."""
    return ascii(name)[:120]


def find_submissions(folder: Path, solutions: Path = SOLUTIONS) -> tuple[list[Submission], list[Problem], list[str]]:
    """``<student>/<notebook>.ipynb`` files under ``folder`` that name a course notebook; problems of students
    (:class:`Problem`: unknown notebook names, links, no notebook), and problems of the batch that belong to no
    student (a folder whose name is not a safe student id, links, files outside a student folder). Nothing is
    followed through a link."""
    if not folder.is_dir():
        raise GraderError(f"{folder} is not a folder of <student>/<notebook>.ipynb submissions")
    known, found, problems, rejected = set(assignment_names(solutions)), [], [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_symlink():
            rejected.append(f"{shown(path.name)}: a link, not a student folder; not graded")
            continue
        if not path.is_dir():
            rejected.append(f"{shown(path.name)}: not a student folder (expected <student>/<notebook>.ipynb)")
            continue
        if not STUDENT_ID.fullmatch(path.name):
            rejected.append(f"{shown(path.name)}: not a valid student id (letters, digits, '.', '_', '-'; "
                            "at most 64); not graded")
            continue
        notebooks = sorted(path.glob("*.ipynb"))
        for nb in notebooks:
            if nb.is_symlink():
                problems.append(Problem(path.name, f"{path.name}/{shown(nb.name)}: a link, not a notebook; not graded"))
            elif nb.stem in known:
                found.append(Submission(path.name, nb.stem, nb))
            else:
                problems.append(Problem(path.name, f"{path.name}/{shown(nb.name)}: not a course notebook "
                                        f"(expected one of {sorted(known)})"))
        if not notebooks:
            problems.append(Problem(path.name, f"{path.name}: no notebook in this folder "
                                    f"(expected one of {sorted(known)} .ipynb)"))
    return found, problems, rejected


def unpack(source: Path, target: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """A folder of submissions, or a zip of one unpacked safely into ``target`` (no absolute paths, no '..', no
    links, at most ``max_bytes`` in all); a zip holding a single top folder is entered."""
    if source.is_dir():
        return source
    if not zipfile.is_zipfile(source):
        raise GraderError(f"{source} is neither a folder nor a zip of <student>/<notebook>.ipynb submissions")
    total = 0
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise GraderError(f"{source}: unsafe entry {info.filename!r} (absolute, '..' or a link)")
            total += info.file_size
            if total > max_bytes:
                raise GraderError(f"{source}: more than {max_bytes >> 30} GB when unpacked")
        archive.extractall(target)
    entries = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not any(entries[0].glob("*.ipynb")):
        return entries[0]
    return target
