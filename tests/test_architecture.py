"""The library's shape: imports flow one way, and modules use each other's public names only.

Both checks read the source with :mod:`ast` (nothing is imported), so they see imports
inside functions too, the ones a lazy import would otherwise hide from a runtime check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "powersampling"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imported_modules(name: str) -> set[str]:
    """powersampling modules that ``name`` imports, at any depth of its code.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``
    (a name from the package's ``__init__``). Importing ``a.b.c`` also runs the package
    ``a.b`` first, but that is no dependency on it: Python finishes a package that imports
    its own submodules, unless a submodule needs a name from the package's ``__init__``,
    which is an explicit ``from a.b import name`` and counted.
    """
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in MODULES else base)
    return {t for t in targets if t in MODULES and t not in (name, "powersampling")}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_import_graph_has_no_cycle():
    graph = {name: _imported_modules(name) for name in MODULES}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    """The check has power: a planted cycle is found, an acyclic graph passes."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_tasks_grading_loop_is_gone():
    grading = [n for n in MODULES if n.startswith("powersampling.grading")]
    assert grading
    for name in grading:
        imported = _imported_modules(name)
        assert not any(m.startswith("powersampling.tasks") for m in imported), name


def _private_names(name: str) -> set[str]:
    """Underscored names a module defines: functions, classes, module globals, attributes."""
    names = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _foreign_private_uses(name: str, private_elsewhere: set[str]) -> list[str]:
    """Places where ``name`` uses an underscored name that only other modules define."""
    own = _private_names(name)
    uses = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("powersampling"):
            uses += [
                f"line {node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.startswith("__")
            ]
        elif isinstance(node, ast.Attribute) and node.attr in private_elsewhere - own:
            uses.append(f"line {node.lineno}: .{node.attr}")
    return uses


def test_no_module_uses_another_modules_underscored_names():
    private = {name: _private_names(name) for name in MODULES}
    problems = []
    for name in MODULES:
        elsewhere = set().union(*(p for other, p in private.items() if other != name))
        problems += [f"{name} {use}" for use in _foreign_private_uses(name, elsewhere)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from powersampling.engine import _pick\n", 1),
        ("def f(engine):\n    return engine._check_rows([], [], '')\n", 1),
        ("def f(self):\n    self._own = 1\n    return self._own\n", 0),
    ],
)
def test_private_use_check_has_power(tmp_path, source, expected, monkeypatch):
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "powersampling.probe", path)
    uses = _foreign_private_uses("powersampling.probe", {"_pick", "_check_rows", "_own"})
    assert len(uses) == expected


# --------------------------------------------------------------------------------------
# Size: a module holds one idea, a function one step.

MAX_MODULE_LINES = 500
MAX_FUNCTION_CODE_LINES = 80


def _code_lines(source_lines: list[str], node: ast.AST) -> int:
    """Lines of a function that hold code: docstring, blank and comment-only lines aside."""
    skip = set()
    body = getattr(node, "body", [])
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    count = 0
    for number in range(node.lineno, node.end_lineno + 1):
        text = source_lines[number - 1].strip()
        if number not in skip and text and not text.startswith("#"):
            count += 1
    return count


def _long_functions(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    return [
        f"{node.name} (line {node.lineno}): {n} code lines"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (n := _code_lines(lines, node)) > MAX_FUNCTION_CODE_LINES
    ]


def test_modules_and_functions_are_small():
    problems = []
    for name, path in MODULES.items():
        n_lines = len(path.read_text().splitlines())
        if n_lines > MAX_MODULE_LINES:
            problems.append(f"{name}: {n_lines} lines (at most {MAX_MODULE_LINES})")
        problems += [f"{name}.{long}" for long in _long_functions(path)]
    assert not problems, "\n".join(problems)


def test_size_check_has_power(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_CODE_LINES + 1))
    long = tmp_path / "long.py"
    long.write_text(f'def f():\n    """Doc.\n\n    More."""\n    # why\n{body}\n')
    assert len(_long_functions(long)) == 1
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_CODE_LINES - 1))
    short = tmp_path / "short.py"
    short.write_text(f'def f():\n    """Doc.\n\n    More.\n    """\n\n    # why\n{body}\n')
    assert _long_functions(short) == []
