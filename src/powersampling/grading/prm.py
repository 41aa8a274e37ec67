"""The PRM800K-style verdict on a math answer: normalise both strings, then compare with sympy.

It is a second opinion beside math-verify's (:mod:`powersampling.grading.math`), kept so
that numbers can be set beside published ones that used it.
"""

from __future__ import annotations

import re
from functools import lru_cache

from powersampling.grading.math_guards import too_large_expr, too_large_text

_TEXT_CMDS = r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|operatorname)"


def _fix_fracs(s: str) -> str:
    # "\frac12" -> "\frac{1}{2}", "\frac1{2}" -> "\frac{1}{2}", "\frac{1}2" -> "\frac{1}{2}"
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)


def normalize_prm(answer: str) -> str:
    """PRM800K / Hendrycks-style string normalisation of a final answer.

    Strips ``\\left``/``\\right``, ``\\dfrac``/``\\tfrac`` → ``\\frac``, unit words, degrees,
    percent and dollar signs, thin spaces, spaces, trailing periods, an ``x =`` prefix,
    thousands separators; writes ``\\sqrt3`` as ``\\sqrt{3}``, ``\\frac12`` as
    ``\\frac{1}{2}``, ``a/b`` (integers) as ``\\frac{a}{b}`` and ``0.5`` as ``\\frac{1}{2}``.
    """
    s = answer.strip()
    s = s.replace("\n", " ").replace("\\!", "")
    s = re.sub(r"(?<!\\)\\[,;: ]", " ", s)  # thin spaces, not the "\\" row break
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    # Units: a trailing "\text{ cm}" / "\mbox{ inches}" after something else goes.
    s = re.sub(rf"(?<=\S)\s*{_TEXT_CMDS}\{{\s*[a-zA-Z][a-zA-Z ^{{}}0-9]*\}}\s*$", "", s)
    # Remaining text wrappers keep their content.
    for _ in range(3):
        s = re.sub(rf"{_TEXT_CMDS}\{{([^{{}}]*)\}}", r"\1", s)
    s = s.strip()
    # "x = 5" -> "5" (only a short left side, as in PRM800K)
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if len(lhs.strip()) <= 2:
            s = rhs
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", s)  # ".5" -> "0.5"
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside (), [], {}."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


@lru_cache(maxsize=4096)
def parse_latex(s: str) -> tuple[bool, object]:
    """(parsed, the sympy object or None): latex2sympy2's parse of ``s``, cached (a pure
    function of the string; references recur with every distinct answer)."""
    from latex2sympy2_extended import latex2sympy

    try:
        return True, latex2sympy(s)
    except Exception:
        return False, None


def sympy_equal(a: str, b: str, guards: bool = True) -> bool:
    """Equal as sympy objects (parsed by latex2sympy2, the parser math-verify ships).

    With ``guards``, expressions that could build a huge number or expansion are not
    compared (False) before sympy evaluates anything (see :func:`too_large_expr`).
    """
    import sympy

    # A symbolic comparison of long strings of letters is the PRM800K "too many unknowns"
    # case: refuse rather than call "abc" equal to "cab".
    for s in (a, b):
        if len(re.findall(r"(?<!\\)\b[a-zA-Z]\b", re.sub(r"\\[a-zA-Z]+", " ", s))) > 2:
            return False
    (ok_x, x), (ok_y, y) = parse_latex(a), parse_latex(b)
    if not (ok_x and ok_y):
        return False
    if guards and (too_large_expr(x) or too_large_expr(y)):
        return False
    try:
        if isinstance(x, sympy.MatrixBase) or isinstance(y, sympy.MatrixBase):
            if not (isinstance(x, sympy.MatrixBase) and isinstance(y, sympy.MatrixBase)):
                return False
            if x.shape != y.shape:
                return False
            return all(sympy.simplify(p - q) == 0 for p, q in zip(x, y, strict=True))
        if isinstance(x, sympy.Expr) and isinstance(y, sympy.Expr):
            return bool(sympy.simplify(x - y) == 0)
    except Exception:
        return False
    return False


def prm_equal(extracted: str, reference: str, guards: bool = True) -> bool:
    """PRM800K-style equivalence: normalised strings equal, else sympy-equal element by
    element (tuples and intervals need the same brackets; lists keep their order).

    With ``guards``, answers too long, too deeply nested or too large to compare (see the
    module doc) are not equal unless their normalised strings are.
    """
    a, b = normalize_prm(extracted), normalize_prm(reference)
    if not a or not b:
        return False
    if a == b:
        return True
    if guards and (too_large_text(a) or too_large_text(b)):
        return False
    brackets = "([", ")]"
    if (
        a[0] in brackets[0]
        and b[0] in brackets[0]
        and a[-1] in brackets[1]
        and b[-1] in brackets[1]
    ):
        if a[0] != b[0] or a[-1] != b[-1]:
            return False  # (1,2] is not [1,2)
        a, b = a[1:-1], b[1:-1]
    pa, pb = _split_top_level(a), _split_top_level(b)
    if len(pa) != len(pb):
        return False
    return all(p == q or sympy_equal(p, q, guards) for p, q in zip(pa, pb, strict=True))
