"""The supervisor script: the sandbox's standard-library modules joined into one program.

The sandbox starts ``python -I -B -c <script>`` (see
:mod:`~powersampling.grading.sandbox_supervisor`). Passed with ``-c``, as text, the script
leaves the sandboxed code ``sys.argv == ["-c"]`` and no file name of ours in its tracebacks,
wherever the package is installed. The script is the text of the modules in
:data:`SCRIPT_PARTS`, in order, each without its ``from powersampling... import`` lines: in
the script all parts share one namespace, where the names those lines import are defined by
the parts before. Nothing else of ``powersampling`` may be imported there, which
:func:`supervisor_script` checks: the sandbox's interpreter may well find the package (an
editable install puts it on every ``sys.path``) and would then run it inside the sandbox.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

from powersampling.grading import sandbox_code_process, sandbox_kernel, sandbox_supervisor

# In the order they run: each part uses only names of those before it.
SCRIPT_PARTS = (sandbox_supervisor, sandbox_kernel, sandbox_code_process)
SUPERVISOR = Path(sandbox_supervisor.__file__).resolve()  # the script's first part


@functools.cache
def supervisor_script() -> str:
    """The script's text: read once, checked to import the standard library only."""
    parts = [_without_package_imports(Path(part.__file__).read_text()) for part in SCRIPT_PARTS]
    script = "\n\n".join(parts)
    foreign = {name.split(".")[0] for name in _imported_modules(script)}
    foreign -= set(sys.stdlib_module_names)
    if foreign:
        raise RuntimeError(f"the sandbox supervisor script would import {sorted(foreign)}")
    return script


def _without_package_imports(source: str) -> str:
    """``source`` without its top-level ``from powersampling... import`` statements."""
    lines = source.splitlines(keepends=True)
    for node in reversed(ast.parse(source).body):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("powersampling."):
            del lines[node.lineno - 1 : node.end_lineno]
    return "".join(lines)


def _imported_modules(source: str) -> set[str]:
    """Every module ``source`` imports, at any depth; a relative import as ``.name``."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
    return modules
