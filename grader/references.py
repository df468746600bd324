"""The grading kernel without the notebook's reference implementations (as PrairieLearn keeps answer files away).

An exercise declares what its answer may not use (``course.references`` in the solution notebook's metadata):
course_lib functions, classes and constants (``lora.LoRALinear``, ``memory.BYTES_PER_TRAINED_PARAM``), whole course_lib
modules (``metrics``), third-party packages (``peft``) or their functions (``scipy.stats.bootstrap``). While a
notebook is graded, none of its references exist in the kernel: the sandbox mounts, over the real files,

- a copy of each module that defines one, with the definition replaced by a stub that raises
  ``NotAvailableWhileGrading`` when it is called, subclassed, read or computed with (the module's compiled
  ``.pyc`` files are hidden too, so the real code cannot be loaded from them), and
- for a whole package, a package whose import raises ``NotAvailableWhileGrading`` (a ``ModuleNotFoundError``).

So no name, alias, thread, child process, profile-hook trick, replaced call handler or copy of the source reaches
them: the code is not there. :func:`unavailable_problems` proves statically that the cells grading runs never need
one (through course_lib's own calls too); ``python -m grader check`` runs it, and every grading run first grades the
course's own solution in the same sandbox (:mod:`grader.batch`).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import course_lib

from .cells import is_skipped

PACKAGE = Path(course_lib.__file__).resolve().parent
UNAVAILABLE_ERROR = "NotAvailableWhileGrading"  # the type name a call that reached a removed reference raises

STUB = f'''
class {UNAVAILABLE_ERROR}(ModuleNotFoundError):
    """A reference implementation of the notebook being graded: it does not exist while grading."""


class _CourseUnavailable:
    """Stands where a reference implementation was: any use raises {UNAVAILABLE_ERROR}."""

    def __init__(self, name):
        object.__setattr__(self, "_course_name", name)

    def _refuse(self, *args, **kwargs):
        raise {UNAVAILABLE_ERROR}(object.__getattribute__(self, "_course_name") + " is a reference implementation "
                                  "of this notebook: it is not available while grading (write your own)")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._refuse()

    __call__ = __mro_entries__ = __setattr__ = __getitem__ = __iter__ = __len__ = __contains__ = _refuse
    __float__ = __int__ = __index__ = __bool__ = __neg__ = __abs__ = __array__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __floordiv__ = __rfloordiv__ = __pow__ = __rpow__ = __mod__ = __matmul__ = __rmatmul__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = __instancecheck__ = __subclasscheck__ = _refuse
'''


class UnremovableReference(ValueError):
    """A declared reference that the grader cannot remove from the kernel (the message says which and why)."""


@dataclass
class Removal:
    """What the sandbox mounts for one notebook: ``files`` maps a real path to the text that replaces it;
    ``packages`` the real folders of whole packages replaced by a refusing package; ``empty`` the compiled
    files hidden behind an empty one."""
    files: dict[Path, str] = field(default_factory=dict)
    packages: dict[Path, str] = field(default_factory=dict)
    empty: list[Path] = field(default_factory=list)

    def write(self, folder: Path) -> list[tuple[str, str]]:
        """Write the replacements under ``folder`` (readable by the kernel's user); returns ``(source, target)``
        pairs for read-only mounts, in the order they must be mounted."""
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
        mounts: list[tuple[str, str]] = []
        for i, (target, text) in enumerate(sorted(self.packages.items())):
            stub = folder / f"package{i}"
            stub.mkdir(mode=0o755)
            (stub / "__init__.py").write_text(text)
            os.chmod(stub / "__init__.py", 0o644)
            mounts.append((str(stub), str(target)))
        for i, (target, text) in enumerate(sorted(self.files.items())):
            stub = folder / f"module{i}.py"
            stub.write_text(text)
            os.chmod(stub, 0o644)
            mounts.append((str(stub), str(target)))
        if self.empty:
            empty = folder / "empty"
            empty.write_bytes(b"")
            os.chmod(empty, 0o644)
            mounts += [(str(empty), str(p)) for p in sorted(self.empty)]
        return mounts


def declared(solution) -> list[str]:
    """Every reference the notebook's exercises declare (their union: none of them exists while grading)."""
    refs = solution.metadata.get("course", {}).get("references", {})
    return sorted({str(r) for names in refs.values() for r in names})


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _split(name: str) -> tuple[str, list[str]]:
    """``name`` as (the longest importable module, the attributes after it); course_lib's modules first."""
    for candidate in (f"course_lib.{name}", name):
        parts = candidate.split(".")
        for cut in range(len(parts), 0, -1):
            module = ".".join(parts[:cut])
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError, AttributeError):
                found = False
            if found and module != "course_lib":
                return module, parts[cut:]
    raise UnremovableReference(f"reference {name!r} names no module this environment has")


def _installed(name: str) -> bool:
    """Whether a top-level package the course does not install (``datasketch``) is here at all: one that is not
    needs no removing."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def methods(references: list[str]) -> dict[str, str]:
    """Method name -> reference, for the references that are methods (``decision.CostModel.training``)."""
    out = {}
    for name in references:
        head = name.split(".")[0]
        if "." not in name or not _installed(head) and not _installed(f"course_lib.{head}"):
            continue
        module, attrs = _split(name)
        if len(attrs) == 2 and isinstance(getattr(_module(module), attrs[0], None), type):
            out[attrs[1]] = name
    return out


def _compiled(source: Path) -> list[Path]:
    """The compiled files Python may keep for ``source`` (they hold the real code)."""
    cache = source.parent / "__pycache__"
    return sorted(cache.glob(f"{source.stem}.*.pyc")) if cache.is_dir() else []


def _rewrite(source: str, names: dict[str, str]) -> str:
    """``source`` with the top-level definitions (functions, classes, assignments) of ``names`` (name -> what the
    error calls it) replaced by stubs, or every top-level function and class where ``names`` is ``{"*": module}``."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    every = names.get("*")
    spans = []
    for node in tree.body:  # methods: ``Class.method`` replaced inside its class
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                qualified = f"{node.name}.{getattr(item, 'name', '')}"
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and qualified in names:
                    start = min([item.lineno] + [d.lineno for d in item.decorator_list])
                    indent = lines[item.lineno - 1][:item.col_offset]
                    spans.append((start, item.end_lineno, [qualified], indent))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound = [t.id for t in targets if isinstance(t, ast.Name)]
        else:
            continue
        hit = [b for b in bound if b in names or (every and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                           ast.ClassDef)) and not b.startswith("__"))]
        if hit:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            spans.append((start, node.end_lineno, hit, ""))
    missing = set(names) - {"*"} - {h for _, _, hit, _ in spans for h in hit}
    if missing:
        raise UnremovableReference(f"no top-level definition of {sorted(missing)} to remove")
    for start, end, hit, indent in sorted(spans, reverse=True):
        stub = "".join(f"{indent}{h.rpartition('.')[2]} = _CourseUnavailable({(names.get(h) or f'{every}.{h}')!r})\n"
                       for h in hit)
        lines[start - 1:end] = [stub]
    future = [n.end_lineno for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    at = max(future, default=0)
    return "".join(lines[:at]) + STUB + "".join(lines[at:])


def removal(references: list[str]) -> Removal:
    """What must be mounted so that none of ``references`` exists in the kernel. Raises
    :class:`UnremovableReference` for a reference that cannot be removed (a built-in, or a name that is not a
    top-level definition)."""
    out = Removal()
    per_file: dict[Path, dict[str, str]] = {}
    for name in references:
        if "." not in name and not _installed(name) and not _installed(f"course_lib.{name}"):
            continue  # not in this environment, so not in the kernel either
        module, attrs = _split(name)
        spec = importlib.util.find_spec(module)
        if not attrs:
            if module.startswith("course_lib."):
                per_file.setdefault(Path(spec.origin).resolve(), {})["*"] = name
                continue
            if module.split(".")[0] in ("torch", "numpy") or "." in module:
                raise UnremovableReference(f"reference {name!r}: only whole third-party packages can be removed, "
                                           "not torch, numpy or a submodule; name its functions instead")
            if spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    out.packages[Path(location).resolve()] = (
                        STUB + f"raise {UNAVAILABLE_ERROR}({name!r} + ' is a reference implementation of this "
                        "notebook: it is not available while grading')\n")
            else:
                out.files[Path(spec.origin).resolve()] = STUB + f"raise {UNAVAILABLE_ERROR}({name!r})\n"
                out.empty += _compiled(Path(spec.origin).resolve())
            continue
        obj = _module(module)
        for attr in attrs:
            obj = getattr(obj, attr, None)
        if isinstance(obj, (types.FunctionType, type)):
            target = inspect.unwrap(obj)
            defined = sys.modules.get(target.__module__)
            path = inspect.getsourcefile(target) if defined is not None else None
            if path is None or target.__qualname__.count(".") > 1 or "<" in target.__qualname__:
                raise UnremovableReference(f"reference {name!r} is not a top-level Python definition (or a method of "
                                           "one) in a source file")
            per_file.setdefault(Path(path).resolve(), {})[target.__qualname__] = name
        elif len(attrs) == 1 and not callable(obj) and spec.origin and spec.origin.endswith(".py"):
            per_file.setdefault(Path(spec.origin).resolve(), {})[attrs[0]] = name  # a constant
        else:
            raise UnremovableReference(f"reference {name!r} cannot be removed from the kernel (a built-in or compiled "
                                       "object): declare Python functions, classes, constants or whole packages")
    for path, names in per_file.items():
        out.files[path] = _rewrite(path.read_text(encoding="utf-8"), names)
        out.empty += _compiled(path)
    return out


# ---- the static proof: the cells grading runs never need a removed reference -------------------------------

def _aliases(tree: ast.AST, module: str | None) -> dict[str, str]:
    """Local name -> what it names (``quant`` -> ``quant``, ``nf4_quantize`` -> ``quant.nf4_quantize``,
    ``SentenceTransformer`` -> ``sentence_transformers.SentenceTransformer``), course_lib's modules short."""
    def short(name: str) -> str:
        return name.removeprefix("course_lib.") if name != "course_lib" else ""

    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = short(a.name if a.asname else a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if not node.level:
                base = short(base) if base == "course_lib" or base.startswith("course_lib.") else base
            for a in node.names:
                out[a.asname or a.name] = f"{base}.{a.name}" if base else a.name
    return out


def _reads(nodes, aliases: dict[str, str], own: set[str], module: str | None) -> set[str]:
    """Dotted names read under ``nodes``, resolved through ``aliases`` and the module's own top-level names."""
    out = set()
    for root in nodes:
        walked = list(ast.walk(root))
        notes = [n.annotation for n in walked if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation]
        notes += [n.returns for n in walked if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns]
        unread = {id(n) for note in notes for n in ast.walk(note)}  # annotations name types; nothing calls them
        walked = [n for n in walked if id(n) not in unread]
        inner = {id(n.value) for n in walked if isinstance(n, ast.Attribute)}  # chains are read from their outer end
        for node in walked:
            if isinstance(node, ast.Attribute):
                out.add("." + node.attr)  # a method or attribute of anything (see :func:`methods`)
            if id(node) in inner:
                continue
            if isinstance(node, ast.Attribute) or (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
                chain = []
                while isinstance(node, ast.Attribute):
                    chain.append(node.attr)
                    node = node.value
                if not isinstance(node, ast.Name):
                    continue
                if node.id in aliases:
                    head = aliases[node.id]
                elif module is not None and node.id in own:
                    head = f"{module}.{node.id}"
                else:
                    continue
                parts = [head, *reversed(chain)]
                out |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return out


def _matches(name: str, refs: dict[str, str]) -> str | None:
    if name.startswith("."):
        return refs.get(name)
    for ref, why in refs.items():
        if name == ref or name.startswith(ref + "."):
            return why
    return None


def _implicit(item: ast.stmt) -> bool:
    """Whether a class-body statement runs when an instance is made or used without naming it: all but the named
    methods (``__init__``, ``__post_init__``, ``__eq__``... and the class attributes; ``recipe.fit`` reads ``.fit``)."""
    return not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) or item.name.startswith("__")


def needing(references: list[str]) -> tuple[dict[str, str], list[str]]:
    """(course_lib name -> the reference it needs, for every top-level definition that calls one, directly or
    through others; problems: course_lib code that needs one when its module is imported).

    A class, or a module-level value, needs what any of its code needs (whoever holds one may call any method). Code
    run at import is judged more finely: making an instance runs only the class's implicit parts, and ``x.method``
    runs what a course_lib method of that name needs."""
    needs = {r: r for r in references}
    needs.update({"." + m: r for m, r in methods(references).items()})  # called on instances: any ``.method``
    graph: dict[str, set[str]] = {}
    made: dict[str, set[str]] = {}  # class -> what making an instance reads
    called: dict[str, set[str]] = {}  # ".method" -> what the course_lib methods of that name read
    values: set[str] = set()  # module-level assignments
    at_import: list[tuple[str, int, set[str]]] = []
    for path in sorted(PACKAGE.glob("*.py")):
        module = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = _aliases(tree, module)
        own = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        own |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                graph[f"{module}.{node.name}"] = _reads([node], aliases, own, module)
                now = node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d]
            elif isinstance(node, ast.ClassDef):
                graph[f"{module}.{node.name}"] = _reads([node], aliases, own, module)
                made[f"{module}.{node.name}"] = _reads(node.bases + [b for b in node.body if _implicit(b)], aliases,
                                                       own, module)
                for item in node.body:
                    if not _implicit(item):
                        called.setdefault(f".{item.name}", set()).update(_reads([item], aliases, own, module))
                now = node.bases + node.decorator_list + [b for b in node.body if not isinstance(
                    b, (ast.FunctionDef, ast.AsyncFunctionDef))]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            else:
                now = [node]
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        if isinstance(target, ast.Name):
                            graph[f"{module}.{target.id}"] = _reads([node.value], aliases, own, module)
                            values.add(f"{module}.{target.id}")
            at_import.append((f"course_lib/{path.name}", node.lineno, _reads(now, aliases, own, module)))
    changed = True
    while changed:
        changed = False
        for name, reads in graph.items():
            if name not in needs:
                why = next(filter(None, (_matches(r, needs) for r in reads)), None)
                if why:
                    needs[name], changed = why, True

    judging: set[str] = set()  # the names being judged (a method that calls its own name)

    def at_import_needs(name: str) -> str | None:
        """What reading ``name`` in code that runs at import needs: an instance made runs the class's implicit parts,
        ``.method`` the course_lib methods of that name, each judged the same way."""
        if name in judging:
            return None
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if prefix in values:  # reading a value runs nothing (its methods are read as ``.method``)
                return None
            if prefix in made or prefix in called:
                judging.add(prefix)
                why = needs.get(prefix) if prefix in called else None
                why = why or next(filter(None, map(at_import_needs, made[prefix] if prefix in made else called[prefix])), None)
                judging.discard(prefix)
                return why
        return _matches(name, needs)

    problems = []
    for where, line, reads in at_import:
        for why in sorted({at_import_needs(r) for r in reads} - {None}):
            problems.append(f"{where} line {line} needs {why} when it is imported")
    return needs, problems


def kernel_cells(nb) -> list[tuple[int, object]]:
    """The code cells a grading kernel runs (numbered from 1): all but the tests and the cells tagged
    skip-grading."""
    return [(i, c) for i, c in enumerate(nb.cells, start=1) if c.cell_type == "code" and not is_skipped(c)
            and not c.metadata.get("nbgrader", {}).get("grade")]


def unavailable_problems(nb) -> list[str]:
    """Every place where a cell the grading kernel runs (or course_lib when imported) needs one of the notebook's
    references, which do not exist there; and every reference that cannot be removed. Empty when grading is safe."""
    from IPython.core.inputtransformer2 import TransformerManager

    references = declared(nb)
    try:
        removal(references)
    except UnremovableReference as err:
        return [str(err)]
    needs, problems = needing(references)
    trees = {i: ast.parse(TransformerManager().transform_cell(c.source)) for i, c in kernel_cells(nb)}
    aliases = {}
    for tree in trees.values():
        aliases.update(_aliases(tree, None))
    for i, tree in trees.items():
        for name in sorted(_reads([tree], aliases, set(), None)):
            why, parent = _matches(name, needs), name.rpartition(".")[0]
            if why and not (parent and _matches(parent, needs)):
                problems.append(f"cell {i} uses {name}, which needs {why}: a reference of this notebook, which does "
                                "not exist while grading (tag the cell skip-grading, or do without it)")
    return problems
