"""The package's import graph keeps the layering of DESIGN.md section 2.

Module-level imports point down only: errors, kernels -> transforms -> elements -> dataset -> io
-> plan -> ops (datasets beside ops) -> plot -> jobs -> cli; no module-level import circle; no
import of jobs/ from below it, even inside a function; library modules import a name from the
module that defines it, not from a package's public face; no module grows far past 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spatialflow"

# rank of each top-level part of the package; an import may only go to an equal or lower rank
LAYERS: dict[str, int] = {
    "_version": 0,
    "errors": 0,
    "kernels": 1,
    "transforms": 2,
    "elements": 3,
    "dataset": 4,
    "io": 5,
    "plan": 6,
    "ops": 7,
    "datasets": 7,
    "plot": 8,
    "jobs": 9,
    "cli": 10,
    "__main__": 11,
    "": 11,  # the package's public face, spatialflow/__init__.py
}
MAX_LINES = 650


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module) -> list[tuple[ast.stmt, bool]]:
    """Every import statement with whether it runs at module import time."""
    found: list[tuple[ast.stmt, bool]] = []

    def walk(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, top))
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            walk(child, inner)

    walk(tree, True)
    return found


def _targets(stmt: ast.stmt, module: str, is_pkg: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) of one statement, spatialflow modules only."""
    if isinstance(stmt, ast.Import):
        return [(a.name, []) for a in stmt.names if a.name.split(".")[0] == "spatialflow"]
    assert isinstance(stmt, ast.ImportFrom)
    base = stmt.module or ""
    if stmt.level:
        anchor = module.split(".") if is_pkg else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (stmt.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    if base.split(".")[0] != "spatialflow":
        return []
    return [(base, [a.name for a in stmt.names])]


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in PACKAGE.rglob("*.py")}


SOURCES = _sources()


def _defined_in(module: str) -> set[str]:
    """Names a module defines itself (not the ones it imports)."""
    _, tree = SOURCES[module]
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _edges() -> list[tuple[str, str, list[str], bool, int]]:
    out = []
    for module, (path, tree) in SOURCES.items():
        is_pkg = path.name == "__init__.py"
        for stmt, top in _imports(tree):
            for target, names in _targets(stmt, module, is_pkg):
                out.append((module, target, names, top, stmt.lineno))
    return out


EDGES = _edges()


def test_every_part_of_the_package_has_a_layer():
    unknown = sorted({_layer(m) for m in SOURCES} - set(LAYERS))
    assert not unknown, f"place these in LAYERS (and DESIGN.md's order): {unknown}"


def test_module_level_imports_point_down():
    bad = [
        f"{src}:{line} imports {dst} ({_layer(src) or 'spatialflow'} -> {_layer(dst)})"
        for src, dst, _, top, line in EDGES
        if top and LAYERS[_layer(dst)] > LAYERS[_layer(src)]
    ]
    assert not bad, "upward module-level imports:\n" + "\n".join(bad)


def test_nothing_below_jobs_imports_jobs_even_lazily():
    bad = [
        f"{src}:{line} imports {dst}"
        for src, dst, _, _, line in EDGES
        if _layer(dst) == "jobs" and LAYERS[_layer(src)] < LAYERS["jobs"]
    ]
    assert not bad, "\n".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n == m or n not in graph:
                continue
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycles_among_module_level_imports():
    graph: dict[str, set[str]] = {m: set() for m in SOURCES}
    for src, dst, names, top, _ in EDGES:
        if not top:
            continue
        for name in names or [""]:
            sub = f"{dst}.{name}" if name else dst
            graph[src].add(sub if sub in SOURCES else dst)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_names_come_from_the_module_that_defines_them():
    bad = []
    for src, dst, names, _, line in EDGES:
        if src == "spatialflow" or dst not in SOURCES:
            continue
        if dst == "spatialflow" and src != "spatialflow":
            bad.append(f"{src}:{line} imports the public face 'spatialflow'")
            continue
        if SOURCES[dst][0].name != "__init__.py":
            continue
        defined = _defined_in(dst)
        for name in names:
            if name not in defined and f"{dst}.{name}" not in SOURCES:
                bad.append(f"{src}:{line} takes {name!r} from {dst}, which only re-exports it")
    assert not bad, "\n".join(bad)


def _bound_in(module: str) -> set[str]:
    """Every name a module binds at import time: defined or imported at its top level,
    including inside top-level if/try blocks (not inside functions or classes)."""
    names = set(_defined_in(module))
    _, tree = SOURCES[module]

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody"):
                    walk(getattr(node, field, []) or [])
                for handler in getattr(node, "handlers", []):
                    walk(handler.body)

    walk(tree.body)
    return names


def test_every_imported_name_exists():
    """``from spatialflow.x import name``: name is bound in x or is a submodule of it (a
    merge can leave imports of names that moved, which only fail when the line runs)."""
    bad = []
    for src, dst, names, _, line in EDGES:
        if dst not in SOURCES:
            bad.append(f"{src}:{line} imports missing module {dst}")
            continue
        bound = _bound_in(dst)
        for name in names:
            if name != "*" and name not in bound and f"{dst}.{name}" not in SOURCES:
                bad.append(f"{src}:{line} imports {name!r}, which {dst} does not have")
    assert not bad, "\n".join(bad)


def test_no_module_is_far_over_600_lines():
    big = {
        m: n for m, (p, _) in SOURCES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"split these modules: {big}"


def test_the_checker_sees_a_planted_violation():
    """The analysis itself works: an upward import and a cycle are found in a planted tree."""
    tree = ast.parse("from spatialflow.jobs.runner import run_job\n")
    [(stmt, top)] = _imports(tree)
    [(target, names)] = _targets(stmt, "spatialflow.kernels.pip", False)
    assert top and target == "spatialflow.jobs.runner" and names == ["run_job"]
    assert LAYERS[_layer(target)] > LAYERS[_layer("spatialflow.kernels.pip")]
    lazy = ast.parse("def f():\n    from spatialflow.io import read\n")
    assert _imports(lazy)[0][1] is False
    guarded = ast.parse("if TYPE_CHECKING:\n    from spatialflow.jobs import runner\n")
    assert _imports(guarded) == []
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
