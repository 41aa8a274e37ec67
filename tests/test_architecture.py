"""The library's shape: imports flow one way, and modules use each other's public names only.

Both checks read the source with :mod:`ast` (nothing is imported), so they see imports
inside functions too, the ones a lazy import would otherwise hide from a runtime check.
"""

from __future__ import annotations

import ast
import re
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


# --------------------------------------------------------------------------------------
# Samplers and studies: nothing outside their own modules branches on their names, and a
# registry string is an import like any other.

ROOT = PACKAGE.parents[1]
REGISTRY_STRING = re.compile(r"^(powersampling(?:\.\w+)+):\w+$")


def _registry_names(module: str, registry: str) -> list[str]:
    """The keys of a ``NAME: dict[str, str] = {...}`` registry, read with ast."""
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == registry:
            return [key.value for key in node.value.keys]
    raise AssertionError(f"no registry {registry} in {module}")


SAMPLER_NAMES = _registry_names("powersampling.samplers", "SAMPLERS")
STUDY_NAMES = _registry_names("powersampling.studies", "STUDIES")


def _owns(module: str, name: str) -> bool:
    """Whether ``module`` may speak of the sampler or study ``name``: its own modules (a
    path component named after it), the registries, and samplers/ for sampler names."""
    parts = module.split(".")
    if name in parts or module in ("powersampling.samplers", "powersampling.studies"):
        return True
    return name in SAMPLER_NAMES and parts[:2] == ["powersampling", "samplers"]


# An expression that reads which sampler a method uses or which studies a config runs.
_SELECTORS = ("sampler", "studies", "SAMPLERS", "STUDIES")


def _name_branches(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) wherever code compares with a sampler or study name: ``x == "power"``,
    ``x in ("power", "smc")``, ``"dps" in config["studies"]``, ``studies.get("dps")``,
    ``config["studies"]["dps"]``."""

    def constants(node) -> list[str]:
        if isinstance(node, ast.Constant) and node.value in names:
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
        return []

    def selects(node) -> bool:
        return any(word in ast.unparse(node) for word in _SELECTORS)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for i, (op, right) in enumerate(zip(node.ops, node.comparators, strict=True)):
                left = sides[i]
                if isinstance(op, (ast.Eq, ast.NotEq)):
                    found += [(node.lineno, n) for n in constants(left) + constants(right)]
                elif isinstance(op, (ast.In, ast.NotIn)):
                    found += [(node.lineno, n) for n in constants(right)]
                    if selects(right):
                        found += [(node.lineno, n) for n in constants(left)]
        elif isinstance(node, ast.Subscript) and selects(node.value):
            found += [(node.lineno, n) for n in constants(node.slice)]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and selects(node.func.value)
            and node.args
        ):
            found += [(node.lineno, n) for n in constants(node.args[0])]
    return found


# Modules allowed to name samplers, and why.
NAMES_ALLOWED = {
    # The exact toy study compares samplers by construction: its table labels each row by
    # the sampler that made it, and its figure draws each label in its own style.
    "powersampling.toy.study_frontier",
}


def _foreign_name_branches(module: str, tree: ast.AST) -> list[str]:
    names = set(SAMPLER_NAMES) | set(STUDY_NAMES)
    if module in NAMES_ALLOWED:
        return []
    return [
        f"{module} line {line}: branches on {name!r}"
        for line, name in _name_branches(tree, names)
        if not _owns(module, name)
    ]


# Rule files named after a study may name it; these must name none.
GENERIC_RULE_FILES = ["Snakefile", *(f"rules/{n}.smk" for n in (
    "common", "data", "models", "generate", "grade", "metrics", "plots", "report"))]  # fmt: skip


def _quoted_names(text: str) -> list[str]:
    names = sorted(set(SAMPLER_NAMES) | set(STUDY_NAMES))
    alternatives = "|".join(map(re.escape, names))
    return re.findall(rf"""["']({alternatives})["']""", text)


def test_no_sampler_or_study_name_is_branched_on_outside_its_own_module():
    problems = []
    for name, path in MODULES.items():
        problems += _foreign_name_branches(name, ast.parse(path.read_text()))
    for rule_file in GENERIC_RULE_FILES:
        problems += [
            f"{rule_file}: names {n!r}" for n in _quoted_names((ROOT / rule_file).read_text())
        ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("powersampling.generation", "if sampler.name == 'power':\n    pass\n", 1),
        ("powersampling.memory.items", "x = sampler in ('power', 'smc')\n", 2),
        ("powersampling.config", "if 'dps' in config['studies']:\n    pass\n", 1),
        ("powersampling.config", "study = config['studies'].get('reliability')\n", 1),
        ("powersampling.config", "study = config['studies']['logit_lens']\n", 1),
        ("powersampling.samplers.dps", "ok = pool['sampler'] == 'power'\n", 0),
        ("powersampling.studies.dps", "s = config['studies']['dps']\n", 0),
        ("powersampling.config", "x = row['temperature']\n", 0),  # a column, not a branch
    ],
)
def test_name_branch_check_has_power(module, source, expected):
    assert len(_foreign_name_branches(module, ast.parse(source))) == expected


def test_rule_file_check_has_power():
    assert _quoted_names('study = config["studies"].get("dps")') == ["dps"]
    assert _quoted_names('path = "results/tables/accuracy.parquet"') == []


def _registry_edges(name: str) -> set[str]:
    """Modules a module names in registry strings ("powersampling.x.y:Class")."""
    targets = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = REGISTRY_STRING.match(node.value)
            if match and match.group(1) in MODULES:
                targets.add(match.group(1))
    return targets


def test_import_graph_with_registry_strings_has_no_cycle():
    graph = {name: _imported_modules(name) | _registry_edges(name) for name in MODULES}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle (registry strings included): " + " → ".join(cycle)


def test_registry_cycle_check_has_power(tmp_path, monkeypatch):
    """A registry naming a module that imports the registry's package is a cycle."""
    registry = tmp_path / "registry.py"
    registry.write_text('THINGS: dict[str, str] = {"x": "powersampling.probe_x:X"}\n')
    member = tmp_path / "member.py"
    member.write_text("from powersampling.probe_registry import THINGS\n")
    monkeypatch.setitem(MODULES, "powersampling.probe_registry", registry)
    monkeypatch.setitem(MODULES, "powersampling.probe_x", member)
    graph = {
        name: _imported_modules(name) | _registry_edges(name)
        for name in ("powersampling.probe_registry", "powersampling.probe_x")
    }
    assert _find_cycle(graph) is not None
