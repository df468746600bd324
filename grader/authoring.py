"""Rules for exercise authors that the grader relies on, checked on the solution notebooks.

Cells that grading does not need (demos, training runs, measurements, widgets) carry the Jupyter cell tag
``skip-grading``; the grader does not run them (``--run-all-cells`` does), as otter-grader's ignored cells.
A skipped cell must not be the only place that defines a name which a cell the grader does run uses: the
set-up, the learner's solution cells, the visible tests and the tests' named objects (``model``, ``tokenizer``)
must all work without it. :func:`skip_problems` finds every such name, statically.
"""
from __future__ import annotations

import ast
import builtins

import nbformat

from .cells import is_skipped

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp,
           ast.DictComp, ast.GeneratorExp)


def _shallow(nodes):
    """Every node under ``nodes`` except what lies inside a nested scope (the scope's own node is yielded)."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def _binds(nodes) -> set[str]:
    """Names bound in one scope by ``nodes``: assignments, definitions, imports, exception names."""
    bound = set()
    for node in _shallow(nodes):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def _free_reads(nodes, local: set[str]) -> set[str]:
    """Names read under ``nodes`` that no enclosing function or comprehension scope binds (globals or builtins)."""
    read = set()
    for node in _shallow(nodes):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
            read.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            args = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}
            outer = list(a.defaults) + [d for d in a.kw_defaults if d] + getattr(node, "decorator_list", [])
            read |= _free_reads(outer, local)
            body = node.body if isinstance(node.body, list) else [node.body]
            read |= _free_reads(body, local | args | _binds(body))
        elif isinstance(node, ast.ClassDef):
            read |= _free_reads(node.bases + node.decorator_list + node.body, local)
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            targets = _binds([g.target for g in node.generators])
            read |= _free_reads([node.generators[0].iter], local)
            inner = [g.iter for g in node.generators[1:]] + [c for g in node.generators for c in g.ifs]
            inner += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            read |= _free_reads(inner, local | targets)
    return read


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names a cell binds at its top level, global names it reads, inside its functions too); magics become
    the Python IPython would run."""
    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))
    return _binds(tree.body), _free_reads(tree.body, set())


def skip_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Names that a cell the grader runs reads, and that only skipped cells define: each one a problem,
    ``"cell N reads 'name', which only skipped cells define"``. Empty when the skips are safe."""
    cells = [(i, c) for i, c in enumerate(nb.cells, start=1) if c.cell_type == "code"]
    names = {i: _names(c.source) for i, c in cells}
    run_defines = set().union(*(names[i][0] for i, c in cells if not is_skipped(c)))
    skip_defines = set().union(*(names[i][0] for i, c in cells if is_skipped(c)))
    problems = [f"cell {i} is an exercise or test cell: it can never be skipped" for i, c in cells
                if is_skipped(c) and c.metadata.get("nbgrader", {}).get("grade_id")]
    for i, c in cells:
        if is_skipped(c):
            continue
        bound, read = names[i]
        for name in sorted((read - bound - set(dir(builtins))) & (skip_defines - run_defines)):
            problems.append(f"cell {i} reads {name!r}, which only skipped cells define")
    return problems
