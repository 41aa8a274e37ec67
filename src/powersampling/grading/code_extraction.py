"""HumanEval completions: the code a completion holds, and the program it makes.

Chat models answer with a fenced block, usually the whole function; base models continue
the prompt with the function's body. :func:`extract_code` reads either, and
:func:`build_program` puts it after the prompt: the program the sandbox runs (the prompt
and the completion, never the tests).
"""

from __future__ import annotations

import re
from typing import Any

# Codex paper's stop sequences for raw (base-model) continuations of the prompt.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def truncate_at_stops(text: str, stops: tuple[str, ...] = STOP_SEQUENCES) -> str:
    """Cut a raw continuation at the first stop sequence (the function body ends there)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _is_blank(line: str) -> bool:
    """Whether a line holds nothing but whitespace (Python skips it: it ends no block)."""
    return not line.strip()


def _is_indented(line: str) -> bool:
    """Whether a non-blank line starts with whitespace, i.e. belongs inside a block."""
    return line[:1].isspace()


def _first_nonblank(text: str) -> str:
    """The first line of ``text`` that is not blank, or "" when there is none."""
    return next((line for line in text.splitlines() if not _is_blank(line)), "")


def truncate_at_dedent(text: str) -> str:
    """Cut a function body just before its first non-blank line that is not indented.

    Whatever follows the body at the top level (prose, a closing code fence, a call, an
    ``assert``) is not part of it. The cut falls on the newline before that line, as
    :func:`truncate_at_stops` does; blank lines, even unindented ones, end nothing.
    """
    offset = 0
    for line in text.split("\n"):
        if not _is_blank(line) and not _is_indented(line):
            return text[: max(0, offset - 1)]
        offset += len(line) + 1
    return text


def _continues_body(completion: str) -> bool:
    """Whether a completion starts as a raw continuation of the function body: its first
    non-blank line is indented code, not an (indented) code fence."""
    first = _first_nonblank(completion)
    return _is_indented(first) and not first.lstrip().startswith("```")


def extract_code(completion: str, entry_point: str) -> tuple[str, bool]:
    """The code to append to the prompt, and whether it is a whole program part.

    Chat models answer with a fenced block, usually holding the whole function (it then
    replaces the prompt's stub, which is still valid Python with its docstring as body):
    the first block defining ``entry_point`` wins, else the first block. Base models
    continue the prompt with the body (the completion's first non-blank line is indented
    and is not a fence); such a body ends

    1. at the first Codex stop sequence (:data:`STOP_SEQUENCES`), and
    2. at the first non-blank line that is not indented (:func:`truncate_at_dedent`),
       the rule of Karan & Du's HumanEval grader: prose, a stray closing fence or a
       top-level statement after the body is not code of the body.

    Each cut drops the newline before the line it falls on; a continuation that contains
    a fence is still read this way, unless a fenced block defines ``entry_point``.
    Anything else (a fenced block, an unfenced whole function) is kept as it is.
    Returns (code, whole) where ``whole`` means top-level code rather than a body.
    """
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[^\n]*\n(.*?)(?:```|\Z)", completion, re.S)
    named = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
    fenced = bool(named) or (bool(blocks) and not _continues_body(completion))
    code = (named or blocks)[0] if fenced else completion
    first = _first_nonblank(code)
    whole = bool(first) and not _is_indented(first)
    if not fenced and not whole:
        code = truncate_at_dedent(truncate_at_stops(code))
    return code, whole


def build_program(row: dict[str, Any], completion: str) -> tuple[str, str]:
    """(program the code process runs, the code taken from the completion) for a
    HumanEval row: the prompt and the completion, never the tests."""
    code, whole = extract_code(completion, row["entry_point"])
    body = ("\n" + code) if whole else code
    return row["prompt"] + body + "\n", code
