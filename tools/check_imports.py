#!/usr/bin/env python3
"""Check the import structure of the project: no circles, no private cross-package imports, the
library (``probes``) never imports the daemon (``exporter``), and no module imports a test module.

    python tools/check_imports.py [ROOT]      # ROOT: the project directory (default: this checkout)

Prints one line per problem (``file:line: kind: message``) and exits 1 if there is any; stdlib only
(``ast``), nothing is imported or executed.

What counts:

- Modules: every ``*.py`` under ``exporter/``, ``probes/``, ``tools/``, ``tests/`` and ``bench/``. A folder
  without ``__init__.py`` (``tools/``) holds scripts: they import their neighbours by bare name.
- Circles: among module-level imports **and** function-local imports. A function-local import runs late,
  so it cannot fail while modules load, but a circle through it is still two modules that need each
  other (the kinds table and the metrics renderer were such a pair): it is reported. Imports under
  ``if TYPE_CHECKING:`` are left out: they never run, and with ``from __future__ import annotations``
  they only name types for mypy. Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``:
  those count as edges too (a package that re-exports its modules can close a circle), except the
  packages that contain the importing module (they are loaded before it, whatever it imports).
- Private modules: a module whose dotted name has a part starting with ``_`` (``probes.wire._x``, not
  ``__init__``) may be imported only from inside the package that holds it. Test code (``tests/``) may
  import private modules: a test exercises the module it tests.
- ``probes`` importing ``exporter`` (any import, TYPE_CHECKING included): the library never depends on
  the daemon.
- Test modules (``test_*.py`` under ``tests/``) imported by any module (a test, a benchmark, a tool): a
  test file is for pytest to collect, and can then be run, moved or deleted on its own. What tests share
  lives in ``tests/support`` (helpers) and ``conftest.py`` (fixtures).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

TREES = ("exporter", "probes", "tools", "tests", "bench")
SKIP_DIRS = {"__pycache__", ".venv", "node_modules", "fixtures", "data"}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    script_dir: bool  # lives in a folder without __init__.py: imports neighbours by bare name
    imports: list[Import] = field(default_factory=list)


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # the module named (a project module)
    explicit: bool  # False: only the __init__ of a package on the way to the target
    runs: bool  # False: under `if TYPE_CHECKING:`


def discover(root: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for tree in TREES:
        base = root / tree
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root)
            if SKIP_DIRS & set(rel.parts[:-1]):
                continue
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            script_dir = not (path.parent / "__init__.py").exists()
            name = ".".join(parts)
            modules[name] = Module(name, path, is_package, script_dir)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _package_of(mod: Module) -> str:
    return mod.name if mod.is_package else mod.name.rpartition(".")[0]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class _Collector(ast.NodeVisitor):
    def __init__(self, mod: Module, modules: dict[str, Module]) -> None:
        self.mod = mod
        self.modules = modules
        self.type_checking = 0

    def _resolve_bare(self, name: str) -> str:
        """A bare name from a script folder means its neighbour, if there is one."""
        if self.mod.script_dir:
            folder = self.mod.name.rpartition(".")[0]
            local = f"{folder}.{name}" if folder else name
            if local in self.modules or local.split(".")[0] in self.modules:
                return local
        return name

    def _add(self, line: int, target: str) -> None:
        runs = self.type_checking == 0
        known = target
        while known and known not in self.modules:
            known = known.rpartition(".")[0]
        if not known:
            return
        for anc in _ancestors(known):
            if anc in self.modules:
                self.mod.imports.append(Import(line, anc, False, runs))
        self.mod.imports.append(Import(line, known, True, runs))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking += 1
            for stmt in node.body:
                self.visit(stmt)
            self.type_checking -= 1
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, self._resolve_bare(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = _package_of(self.mod).split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            parent = ".".join([*base, node.module] if node.module else base)
        else:
            parent = self._resolve_bare(node.module or "")
        for alias in node.names:
            sub = f"{parent}.{alias.name}"
            self._add(node.lineno, sub if sub in self.modules else parent)


def collect(modules: dict[str, Module]) -> None:
    for mod in modules.values():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), filename=str(mod.path))
        _Collector(mod, modules).visit(tree)


def _edges(mod: Module) -> dict[str, int]:
    """Targets that run when ``mod`` is imported (or when its functions run), with a line number."""
    own = set(_ancestors(mod.name)) | ({mod.name} if mod.is_package else set())
    out: dict[str, int] = {}
    for imp in mod.imports:
        if not imp.runs or imp.target == mod.name:
            continue
        if not imp.explicit and imp.target in own:
            continue
        out.setdefault(imp.target, imp.line)
    return out


def _circles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components (Tarjan) with more than one module, as one concrete circle each."""
    graph = {name: _edges(mod) for name, mod in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    circles = []
    for comp in sorted(sccs):
        members = set(comp)
        start = comp[0]
        # shortest way back to start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w not in members:
                        continue
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found or start
        back = []
        while v != start:
            back.append(v)
            v = prev[v]
        path += reversed(back)
        circles.append([*path, start])
    return circles


def _is_test_module(mod: Module) -> bool:
    """A module pytest collects: ``test_*.py`` under ``tests/``."""
    parts = mod.name.split(".")
    return parts[0] == "tests" and not mod.is_package and parts[-1].startswith("test_")


def problems(root: Path) -> list[str]:
    modules = discover(root)
    collect(modules)
    out: list[str] = []
    for mod in modules.values():
        rel = mod.path.relative_to(root)
        own_pkg = _package_of(mod)
        for imp in mod.imports:
            if not imp.explicit:
                continue
            if mod.name.split(".")[0] == "probes" and imp.target.split(".")[0] == "exporter":
                out.append(f"{rel}:{imp.line}: library imports daemon: {mod.name} imports {imp.target}")
            if _is_test_module(modules[imp.target]):
                out.append(
                    f"{rel}:{imp.line}: test module imported: {mod.name} imports {imp.target} "
                    "(shared helpers go to tests/support, shared fixtures to a conftest.py)"
                )
            parts = imp.target.split(".")
            private = [i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")]
            if not private or mod.name.split(".")[0] == "tests":
                continue
            owner = ".".join(parts[: private[0]])
            if own_pkg != owner and not own_pkg.startswith(owner + "."):
                out.append(
                    f"{rel}:{imp.line}: private import: {mod.name} imports {imp.target} (private to {owner})"
                )
    for circle in _circles(modules):
        first = modules[circle[0]]
        line = _edges(first)[circle[1]]
        out.append(f"{first.path.relative_to(root)}:{line}: import circle: {' -> '.join(circle)}")
    return sorted(set(out))


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    found = problems(root.resolve())
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
