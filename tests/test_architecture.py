"""Architecture rules of the package, checked on the source (AST), not by importing it.

1. No import cycles between the modules of ``sbc_onnx``.  Every import statement counts, at module level
   or inside a function (a function-local import hides a cycle, it does not remove it), except imports
   guarded by ``if TYPE_CHECKING:`` (they never run).  Relative imports are resolved; ``from P import x``
   is an import of the submodule ``P.x`` when that is a module, else of ``P``.  Importing ``a.b.c`` also
   runs the ``__init__`` of ``a.b`` and ``a``: those count as imported too, except the importer's own
   ancestor packages (already initialised, or being initialised, when the importer runs).
2. No private names across modules: ``from M import _x`` (or ``import M._x`` / ``M._x`` via an import)
   where ``_x`` is a name defined in another module is a violation; dunder names are not private.
   A private *module* (``_obs_kernel``, ``_sweep``, ``_common``: a path component starting with ``_``)
   may be imported only from inside its own package (the package ``__init__``, its siblings and their
   subpackages), and never for a private name of it.
3. The wheel installs exactly one top-level package, ``sbc_onnx``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PKG = "sbc_onnx"


# ---------------------------------------------------------------------------------------------------
# module table and import extraction
# ---------------------------------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (packages by their __init__)."""
    mods = {}
    for path in sorted((ROOT / PKG).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _is_package(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def _package_of(mod: str) -> str:
    """The package a module lives in (a package's own package is itself: its relative imports resolve there)."""
    return mod if _is_package(mod) else mod.rpartition(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, wherever it is, skipping the bodies of `if TYPE_CHECKING:`; in
    source order."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


class Import:
    """One imported thing: `target` (a module of the package), `name` (an attribute taken from it, or
    None), at `where` (file:line)."""

    def __init__(self, target: str, name: str | None, where: str):
        self.target, self.name, self.where = target, name, where


def _resolve_from(mod: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _package_of(mod).split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(mod: str) -> list[Import]:
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT)
    out = []
    for node in _import_nodes(tree):
        where = f"{rel}:{node.lineno}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PKG or alias.name.startswith(PKG + "."):
                    out.append(Import(alias.name, None, where))
            continue
        base = _resolve_from(mod, node)
        if not (base == PKG or base.startswith(PKG + ".")):
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:  # `from P import x` with x a submodule
                out.append(Import(sub, None, where))
            else:
                out.append(Import(base, None if alias.name == "*" else alias.name, where))
    for imp in out:
        assert imp.target in MODULES, f"{imp.where}: import of {imp.target}, which is not a module of {PKG}"
    return out


def _ancestors(mod: str) -> list[str]:
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, dict[str, str]]:
    """module -> {imported module: where (first occurrence)}."""
    graph: dict[str, dict[str, str]] = {}
    for mod in MODULES:
        own = set(_ancestors(mod)) | {mod}
        edges: dict[str, str] = {}
        for imp in imports_of(mod):
            for t in _ancestors(imp.target) + [imp.target]:
                if t not in own:
                    edges.setdefault(t, imp.where)
        graph[mod] = edges
    return graph


def tangles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a self-import (Tarjan)."""
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def strong(v):  # recursion depth is bounded by the number of modules (< 100)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sccs


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One concrete cycle through each tangle: a shortest one from the tangle's first module (BFS)."""
    cycles = []
    for comp in tangles(graph):
        start, members = comp[0], set(comp)
        prev, frontier = {start: None}, [start]
        cycle = None
        while frontier and cycle is None:  # BFS back to start inside the component
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:  # start ... v, then the edge v -> start closes it
                        cycle = []
                        while v is not None:
                            cycle.append(v)
                            v = prev[v]
                        cycle.reverse()
                        break
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def _describe(cycle: list[str], graph) -> str:
    hops = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:] + cycle[:1])]
    return "\n    ".join(hops)


def _private_violations(mod: str, imports: list[Import]) -> list[str]:
    out = []
    pkg = _package_of(mod) if mod in MODULES else mod.rpartition(".")[0]
    for imp in imports:
        if imp.target == mod:
            continue
        # a private module component: allowed only from inside the package that holds it
        parts = imp.target.split(".")
        for i, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__"):
                holder = ".".join(parts[:i])
                if not (pkg == holder or pkg.startswith(holder + ".")):
                    out.append(f"{imp.where}: {mod} imports private module {imp.target}")
                break
        name = imp.name
        if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            out.append(f"{imp.where}: {mod} imports private name {name} from {imp.target}")
    return out


def private_violations() -> list[str]:
    return [v for mod in MODULES for v in _private_violations(mod, imports_of(mod))]


# ---------------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------------
def test_no_import_cycles():
    graph = import_graph()
    msgs = []
    for comp, cycle in zip(tangles(graph), find_cycles(graph)):
        msg = "cycle:\n    " + _describe(cycle, graph)
        if len(comp) > len(cycle):
            msg += f"\n    (one of the cycles among {', '.join(comp)})"
        msgs.append(msg)
    assert not msgs, "import cycles between modules of sbc_onnx:\n  " + "\n  ".join(msgs)


def test_no_private_imports_across_modules():
    bad = private_violations()
    assert not bad, "private names/modules imported from another module:\n  " + "\n  ".join(bad)


def test_wheel_has_only_the_sbc_onnx_package():
    from setuptools import find_namespace_packages, find_packages

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    explicit = conf.get("packages")
    if isinstance(explicit, list):
        packages = explicit
    else:
        find = dict(explicit.get("find", {})) if isinstance(explicit, dict) else {}
        finder = find_namespace_packages if find.get("namespaces", True) else find_packages
        where = find.get("where", ["."])
        packages = []
        for w in where:
            packages += finder(where=str(ROOT / w), include=find.get("include", ("*",)),
                               exclude=find.get("exclude", ()))
    assert PKG in packages
    tops = sorted({p.split(".")[0] for p in packages})
    assert tops == [PKG], f"the wheel would install top-level packages {tops}"


# ---------------------------------------------------------------------------------------------------
# the checkers themselves must catch what they are for
# ---------------------------------------------------------------------------------------------------
def test_cycle_finder_reports_a_cycle():
    g = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:2"}, "c": {"a": "c.py:3"}, "d": {"a": "d.py:1"}}
    assert find_cycles(g) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b": "x"}, "b": {}}) == []


def test_import_extraction_sees_local_and_relative_imports():
    # calibrate's imports include function-local ones, e.g. tqdm is external (ignored) but graph/sim are
    # resolved; `from . import x` resolves to the submodule; TYPE_CHECKING-only imports are skipped.
    prim = {i.target for i in imports_of("sbc_onnx.primitives")}
    assert "sbc_onnx.sim.config" not in prim  # annotation-only import under TYPE_CHECKING
    assert "sbc_onnx.errors" in prim
    src = "def f():\n    from .sim import walker\n    from ..x import y\n"
    tree = ast.parse(src)
    nodes = list(_import_nodes(tree))
    assert len(nodes) == 2 and _resolve_from("sbc_onnx.calibrate", nodes[0]) == "sbc_onnx.sim"
    assert _resolve_from("sbc_onnx.compress.gptq", nodes[1]) == "sbc_onnx.x"
    assert _resolve_from("sbc_onnx.compress", ast.parse("from . import obs").body[0]) == "sbc_onnx.compress"


def test_private_rule_catches_violations():
    imps = [Import("sbc_onnx.evaluate", "_output_source", "x.py:1"),
            Import("sbc_onnx.compress._obs_kernel", "trace_rows", "x.py:2"),
            Import("sbc_onnx.compress._obs_kernel", "_diag_inverse", "x.py:3"),
            Import("sbc_onnx.errors", "__all__", "x.py:4"),
            Import("sbc_onnx.evaluate", "evaluate", "x.py:5")]
    outside = _private_violations("sbc_onnx.pipeline", imps)
    assert [v.split(":")[1] for v in outside] == ["1", "2", "3", "3"]
    inside = _private_violations("sbc_onnx.compress.obs", imps)  # a sibling may use the private module
    assert [v.split(":")[1] for v in inside] == ["1", "3"]
