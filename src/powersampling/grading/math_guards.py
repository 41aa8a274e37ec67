"""Bounds on the time a math check takes: size guards first, a timer behind them.

Guards: answers no check can settle in reasonable time are refused outright ("not equal",
``error="too large to compare"``): strings over :data:`MAX_CHARS` characters or nested
deeper than :data:`MAX_NESTING` brackets (the LaTeX parser's time grows steeply with both),
and parsed expressions that would make sympy build an exact number of more than
:data:`MAX_DIGITS` digits (``9^{9^{9^9}}``, ``(10^{100})!``) or expand a sum to a power above
:data:`MAX_EXPAND_EXPONENT` (``(x+1)^{1000}``). The limits are far above any MATH or GSM8K
answer, so verdicts on real answers are unchanged.

Timer: the guards' last line of defence, as math-verify and sympy can take unbounded time on
adversarial answers. :func:`time_limit` sets a SIGALRM timer, which works in the main thread
only (see :mod:`powersampling.grading.math` for the hard limit of batches in worker
processes).
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager

# Guard limits (see the module doc). MATH-500 answers are at most 53 characters, nest at
# most 2 deep and hold small numbers; every limit is far above that.
MAX_CHARS = 1000  # longer answers are refused before parsing
MAX_NESTING = 10  # (, [, { nested deeper are refused before parsing
MAX_DIGITS = 10**6  # exact numbers with more digits are refused before comparing
MAX_EXPAND_EXPONENT = 300  # a sum raised to a higher integer power is refused


# --------------------------------------------------------------------------- guards


class TooLarge(Exception):
    """An answer no check can settle in reasonable time (see the module doc)."""


def too_large_text(s: str) -> bool:
    """True when ``s`` is longer than :data:`MAX_CHARS` or nests (, [, { deeper than
    :data:`MAX_NESTING`: checked on the string, before any parser sees it."""
    if len(s) > MAX_CHARS:
        return True
    depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif ch in ")]}":
            depth -= 1
    return False


def _int_log10(n: int) -> float:
    """An upper bound on log10 |n| (0 for 0)."""
    return abs(n).bit_length() * math.log10(2)


def _magnitude(e) -> tuple[float | None, bool]:
    """(an upper bound on log10 |value| of ``e`` or None if it is not a plain number,
    whether ``e`` holds floats or constants, whose arithmetic is cheap and inexact).

    Walks the whole tree and raises :class:`TooLarge` at the first node whose exact value
    would have more than :data:`MAX_DIGITS` digits, or that raises a sum to an integer
    power above :data:`MAX_EXPAND_EXPONENT`. Nothing is evaluated.
    """
    import sympy
    from sympy.functions.combinatorial.factorials import (
        binomial,
        factorial,
        factorial2,
        subfactorial,
    )

    if isinstance(e, sympy.MatrixBase):
        for x in e:
            _magnitude(x)
        return None, False
    if not isinstance(e, sympy.Basic):
        return None, False
    if isinstance(e, sympy.Integer):
        return _int_log10(e.p), False
    if isinstance(e, sympy.Rational):
        return max(_int_log10(e.p), _int_log10(e.q)), False
    if isinstance(e, sympy.Float):
        try:
            return math.log10(abs(float(e))) if e else 0.0, True
        except (OverflowError, ValueError):
            return math.inf, True
    if isinstance(e, sympy.NumberSymbol) or e is sympy.I:
        return 1.0, True  # pi, e, i: sympy keeps their powers symbolic
    if e.is_Atom:
        return None, False  # symbols, infinities, nan
    parts = [_magnitude(a) for a in e.args]
    bounds = [b for b, _ in parts]
    inexact = any(f for _, f in parts)
    known = all(b is not None for b in bounds)
    value: float | None = None
    if isinstance(e, sympy.Add):
        value = max(bounds) + math.log10(len(bounds)) if known else None
    elif isinstance(e, sympy.Mul):
        value = sum(max(b, 0.0) for b in bounds) if known else None
    elif isinstance(e, sympy.Pow):
        base, exp = e.args
        (b, _), (x, _) = parts
        if x is not None and isinstance(base, sympy.Add):
            power = abs(exp.p) if isinstance(exp, sympy.Integer) else 10 ** min(x, 300)
            if power > MAX_EXPAND_EXPONENT:
                raise TooLarge("a sum to a huge power")
        if known:
            value = 0.0 if b <= 0 else (math.inf if x > 300 else b * 10**x)
    elif isinstance(e, (factorial, factorial2, subfactorial)):
        n = bounds[0]
        value = None if n is None else (math.inf if n > 300 else 10**n * max(n, 1.0))
    elif isinstance(e, binomial):
        n = bounds[0]
        value = None if n is None else (math.inf if n > 300 else 10**n * math.log10(2))
    elif isinstance(
        e,
        (sympy.Abs, sympy.floor, sympy.ceiling, sympy.Max, sympy.Min, sympy.UnevaluatedExpr),
    ):
        value = max(bounds) if known else None
    if value is not None and value > MAX_DIGITS and not inexact:
        raise TooLarge("a huge exact number")
    return value, inexact


def too_large_expr(expr) -> bool:
    """True when comparing the parsed ``expr`` could build a huge exact number or expand a
    sum to a huge power (see :func:`_magnitude`); False for strings and other non-sympy
    values."""
    try:
        _magnitude(expr)
    except (TooLarge, RecursionError):
        return True
    return False


# --------------------------------------------------------------------------- timeouts


class GradingTimeout(BaseException):
    """Raised by the SIGALRM timer. A BaseException, so libraries' ``except Exception``
    clauses (math-verify and sympy have many) cannot swallow it."""


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`GradingTimeout` after ``seconds`` of wall time (main thread only).

    Elsewhere, or with ``seconds=None``, no limit is set: signals cannot be delivered to
    other threads, and a silent non-limit beats crashing the caller.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _fire(signum, frame):
        raise GradingTimeout()

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
