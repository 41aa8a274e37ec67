"""The final answer of a completion: the content of its last ``\\boxed{}``."""

from __future__ import annotations

import re


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at ``text[start] == '{'`` and its end index.

    Escaped braces (``\\{``, ``\\}``) are content, not structure.
    """
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None  # unbalanced


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in ``text``.

    Braces are matched (nested groups kept whole). Returns None when there is no box or
    the last one is never closed; ``\\boxed{}`` gives "".
    """
    if not isinstance(text, str):
        return None
    hits = list(re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", text))
    if not hits:
        return None
    end = hits[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        found = _braced(text, end + len(rest) - len(stripped))
        return None if found is None else found[0].strip()
    if rest[:1] == " ":
        # "\boxed 5$" form (no braces): the answer runs to the next "$" or line end.
        m = re.match(r"\s*([^$\n]*)", rest)
        value = m.group(1).strip() if m else ""
        return value or None
    return None
