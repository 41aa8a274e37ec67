"""Math answers: last ``\\boxed{}`` extraction and two equivalence checks.

The primary verdict comes from ``math-verify`` (parse both answers to sympy, compare
sets, intervals, matrices, numbers and expressions). A second, PRM800K-style verdict
(normalise the strings, then compare with sympy) is kept so numbers can be set beside
published ones that used it. Extraction failures are reported as such
(``extracted=None`` plus an error), never folded silently into "wrong".

Timeouts: math-verify and sympy can take unbounded time on adversarial answers
(``9^{9^{9^9}}``). In the main thread every check runs under a SIGALRM timer; signals
only work there, so in other threads no timer is set. :func:`grade_math_many` grades in
worker processes, where the timer works, and also kills a worker outright when an item
overruns a hard wall-clock limit (covers code that never returns to the interpreter).

Guards: the timers are the last line of defence. Before them, answers no check can settle
in reasonable time are refused outright ("not equal", ``error="too large to compare"``):
strings over :data:`MAX_CHARS` characters or nested deeper than :data:`MAX_NESTING`
brackets (the LaTeX parser's time grows steeply with both), and parsed expressions that
would make sympy build an exact number of more than :data:`MAX_DIGITS` digits
(``9^{9^{9^9}}``, ``(10^{100})!``) or expand a sum to a power above
:data:`MAX_EXPAND_EXPONENT` (``(x+1)^{1000}``). The limits are far above any MATH or
GSM8K answer, so verdicts on real answers are unchanged.

Batches: :func:`grade_math_many` grades each distinct (extracted answer, reference) pair
once and fans the verdict out to every row that has it (the verdict depends on nothing
else); seeds and methods often agree, so this removes much of the work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from powersampling.grading.verdict import Grade

GRADER = "math-verify"
NO_BOX = "no \\boxed{} in completion"
EMPTY_BOX = "empty \\boxed{}"
TOO_LARGE = "too large to compare"

# Guard limits (see the module doc). MATH-500 answers are at most 53 characters, nest at
# most 2 deep and hold small numbers; every limit is far above that.
MAX_CHARS = 1000  # longer answers are refused before parsing
MAX_NESTING = 10  # (, [, { nested deeper are refused before parsing
MAX_DIGITS = 10**6  # exact numbers with more digits are refused before comparing
MAX_EXPAND_EXPONENT = 300  # a sum raised to a higher integer power is refused

# math-verify warns once that its own timeouts are off; ours are on (see module doc).
logging.getLogger("math_verify").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- extraction


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


# --------------------------------------------------------------------------- math-verify

_WARM = False


def warm_up() -> None:
    """Import the parsers and run one comparison, outside any timer.

    The first call costs about a second (imports, grammar set-up); charged to an item's
    time limit, it would time out the first item of every process.
    """
    global _WARM
    if not _WARM:
        _math_verify_equal("\\frac{1}{2}", "0.5")
        _sympy_equal("x+1", "1+x")
        _WARM = True


@lru_cache(maxsize=4096)
def _mv_parse(answer: str) -> tuple:
    """math-verify's parse of ``\\boxed{answer}`` (a pure function of the string, cached:
    a reference is compared with every distinct answer to its problem)."""
    from math_verify import parse

    # Both sides go through the same "\boxed{...}" parsing path, so formatting choices
    # (\left, \dfrac, units, degrees, percent) are treated alike.
    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=None))


def _math_verify_equal(extracted: str, reference: str, guards: bool = True) -> bool:
    """math-verify's verdict; raises :class:`TooLarge` (with ``guards``) on answers it
    cannot settle in reasonable time."""
    from math_verify import verify

    if guards and (too_large_text(extracted) or too_large_text(reference)):
        raise TooLarge("answer too long or too deeply nested")
    gold, pred = _mv_parse(reference), _mv_parse(extracted)
    if not gold or not pred:
        return False
    if guards and any(too_large_expr(x) for x in gold + pred):
        # math-verify settles identical expressions by structure, without evaluating them.
        if any(_same(g, x) for g in gold for x in pred):
            return True
        raise TooLarge("a huge number or power")
    return bool(verify(list(gold), list(pred), timeout_seconds=None))


def _same(a, b) -> bool:
    """Structurally equal parses (no evaluation), as math-verify checks first."""
    if isinstance(a, str) or isinstance(b, str):
        return (
            isinstance(a, str) and isinstance(b, str) and bool(a.strip()) and a.strip() == b.strip()
        )
    try:
        return bool(a == b)
    except Exception:
        return False


# --------------------------------------------------------------------------- PRM800K-style

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
def _latex2sympy(s: str) -> tuple[bool, object]:
    """(parsed, the sympy object or None): latex2sympy2's parse of ``s``, cached (a pure
    function of the string; references recur with every distinct answer)."""
    from latex2sympy2_extended import latex2sympy

    try:
        return True, latex2sympy(s)
    except Exception:
        return False, None


def _sympy_equal(a: str, b: str, guards: bool = True) -> bool:
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
    (ok_x, x), (ok_y, y) = _latex2sympy(a), _latex2sympy(b)
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
    return all(p == q or _sympy_equal(p, q, guards) for p, q in zip(pa, pb, strict=True))


# --------------------------------------------------------------------------- grading


def grade_extracted(
    extracted: str | None, reference: str, timeout_s: float | None = 5.0, guards: bool = True
) -> tuple[Grade, bool]:
    """Grade an already extracted answer (None: no box) against ``reference``; returns
    (math-verify Grade, PRM verdict). The verdict depends on these arguments only.

    Each of the two checks gets ``timeout_s`` seconds (main thread only, see module doc);
    a math-verify timeout gives ``Grade(correct=False, error="timeout")``. With ``guards``,
    an answer no check can settle quickly is not equal at once, with
    ``error="too large to compare"`` (see the module doc); ``guards=False`` leaves only the
    timers (the behaviour before the guards, kept for benchmarks).
    """
    if extracted is None:
        return Grade(None, False, False, GRADER, NO_BOX), False
    if not extracted:
        return Grade("", False, True, GRADER, EMPTY_BOX), False
    warm_up()
    reference = str(reference)
    correct, error = False, None
    try:
        with time_limit(timeout_s):
            correct = _math_verify_equal(extracted, reference, guards)
    except GradingTimeout:
        error = "timeout"
    except TooLarge:
        error = TOO_LARGE
    except Exception as exc:  # a grader bug must not take the batch down; record it
        error = f"math-verify failed: {type(exc).__name__}"
    prm = False
    try:
        with time_limit(timeout_s):
            prm = prm_equal(extracted, reference, guards)
    except GradingTimeout:
        prm = False
    return Grade(extracted, correct, True, GRADER, error), prm


def grade_math_both(
    completion: str, reference: str, timeout_s: float | None = 5.0, guards: bool = True
) -> tuple[Grade, bool]:
    """Grade ``completion`` (its last ``\\boxed{}``) against ``reference``; returns
    (math-verify Grade, PRM verdict). See :func:`grade_extracted`."""
    return grade_extracted(last_boxed(completion), reference, timeout_s, guards)


def grade_math(completion: str, reference: str, timeout_s: float | None = 5.0) -> Grade:
    """The math-verify verdict alone (see :func:`grade_math_both`)."""
    return grade_math_both(completion, reference, timeout_s)[0]


# --------------------------------------------------------------------------- worker pool
#
# Workers are plain subprocesses of this interpreter speaking JSON lines on stdin/stdout.
# Not multiprocessing: its fork start method is unsafe once torch threads exist, and its
# spawn/forkserver methods re-import the caller's __main__ (a workflow script without a
# main guard would run again in every worker). A stuck worker is killed and replaced.


def _worker_main() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    warm_up()
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        grade, prm = _grade_job(req, req["timeout_s"], req.get("guards", True))
        reply = {"i": req["i"], "prm": prm, **grade.__dict__}
        out.write(json.dumps(reply) + "\n")
        out.flush()


STARTUP_S = 120.0  # a worker must be ready (imports done) within this


@dataclass
class _Worker:
    proc: subprocess.Popen
    buf: bytes = b""
    ready: bool = False
    item: int | None = None
    deadline: float = 0.0  # startup deadline until ready, then the current item's
    group: str | None = None  # the reference whose items this worker is grading


class _Queue:
    """Pending jobs grouped by reference. A worker keeps to one reference until its jobs
    are done, then takes a reference nobody has started, and only when none is left helps
    with the one with most jobs left: each worker then parses (and caches) about its
    share of the references, not all of them."""

    def __init__(self, jobs: list[dict]):
        self.groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            self.groups.setdefault(job["reference"], []).append(i)
        for items in self.groups.values():
            items.reverse()  # stacks, so items go out in order
        self.fresh = list(reversed(self.groups))

    def __bool__(self) -> bool:
        return bool(self.groups)

    def pop(self, w: _Worker) -> int:
        if w.group not in self.groups:
            while self.fresh and self.fresh[-1] not in self.groups:
                self.fresh.pop()
            if self.fresh:
                w.group = self.fresh.pop()
            else:
                w.group = max(self.groups, key=lambda k: len(self.groups[k]))
        items = self.groups[w.group]
        i = items.pop()
        if not items:
            del self.groups[w.group]
        return i


def _start_worker() -> _Worker:
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = "from powersampling.grading.math import _worker_main; _worker_main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    os.set_blocking(proc.stdout.fileno(), False)
    return _Worker(proc, deadline=time.monotonic() + STARTUP_S)


def _stop(worker: _Worker) -> None:
    if worker.proc.poll() is None:
        worker.proc.kill()
    worker.proc.wait()
    for stream in (worker.proc.stdin, worker.proc.stdout):
        try:
            stream.close()
        except OSError:
            pass


def _grade_job(job: dict, timeout_s: float | None, guards: bool) -> tuple[Grade, bool]:
    """A job is ``{"extracted", "reference"}`` (one distinct pair) or ``{"completion",
    "reference"}`` (one row, extraction done by the grader)."""
    if "extracted" in job:
        return grade_extracted(job["extracted"], job["reference"], timeout_s, guards)
    return grade_math_both(job["completion"], job["reference"], timeout_s, guards)


def _job_box(job: dict) -> str | None:
    return job["extracted"] if "extracted" in job else last_boxed(job["completion"])


def grade_math_many(
    completions: list[str],
    references: list[str],
    workers: int = 2,
    timeout_s: float | None = 5.0,
    hard_timeout_s: float | None = None,
    dedupe: bool = True,
    guards: bool = True,
) -> list[tuple[Grade, bool]]:
    """Grade many completions in worker processes; returns (Grade, PRM verdict) per item.

    ``timeout_s`` is the per-check timer inside a worker (None: no timer);
    ``hard_timeout_s`` (default ``2 * timeout_s + 5``: both checks plus slack) is the
    wall-clock limit per item, after which the worker is killed, the item graded
    ``error="timeout"`` and a fresh worker started. A worker that dies mid-item gives
    ``error="grader worker died"``. ``workers=0`` grades in this process instead (the
    timers only, and only in the main thread; no hard limit).

    With ``dedupe`` (the default) the answers are extracted here and each distinct
    (extracted answer, reference) pair is graded once, its verdict given to every row that
    has it: the verdict depends on nothing else (:func:`grade_extracted`), so this gives
    the same verdicts as grading row by row, in the time of the distinct pairs.
    ``dedupe=False`` sends every row to the graders as before; ``guards`` as in
    :func:`grade_extracted`.
    """
    if len(completions) != len(references):
        raise ValueError("completions and references differ in length")
    n = len(completions)
    if n == 0:
        return []
    if not dedupe:
        jobs = [
            {"completion": str(c), "reference": str(r)}
            for c, r in zip(completions, references, strict=True)
        ]
        return _grade_jobs(jobs, workers, timeout_s, hard_timeout_s, guards)
    # Rows without a (non-empty) box need no grader; the others are keyed by exactly what
    # the verdict depends on.
    results: list[tuple[Grade, bool] | None] = [None] * n
    job_of: dict[tuple[str, str], int] = {}
    row_job: list[int] = [-1] * n
    for i, (c, r) in enumerate(zip(completions, references, strict=True)):
        box = last_boxed(str(c))
        if not box:
            results[i] = grade_extracted(box, str(r), timeout_s, guards)
        else:
            row_job[i] = job_of.setdefault((box, str(r)), len(job_of))
    jobs = [{"extracted": box, "reference": ref} for box, ref in job_of]
    graded = _grade_jobs(jobs, workers, timeout_s, hard_timeout_s, guards) if jobs else []
    for i, k in enumerate(row_job):
        if k >= 0:
            results[i] = graded[k]
    return results  # type: ignore[return-value]


def _grade_jobs(
    jobs: list[dict],
    workers: int,
    timeout_s: float | None,
    hard_timeout_s: float | None,
    guards: bool,
) -> list[tuple[Grade, bool]]:
    """Grade jobs (see :func:`_grade_job`) in ``workers`` processes, or here when 0."""
    n = len(jobs)
    if workers <= 0:
        return [_grade_job(job, timeout_s, guards) for job in jobs]
    if hard_timeout_s is None:
        hard_timeout_s = 2 * timeout_s + 5 if timeout_s else 60.0
    results: list[tuple[Grade, bool] | None] = [None] * n
    pending = _Queue(jobs)
    pool: list[_Worker] = []
    sel = selectors.DefaultSelector()

    def spawn() -> None:
        w = _start_worker()
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        pool.append(w)

    def retire(w: _Worker, why: str) -> None:
        if w.item is None:  # died before it was ready: nothing to blame it on
            raise RuntimeError(f"a math grading worker failed to start ({why})")
        box = _job_box(jobs[w.item])
        results[w.item] = (Grade(box, False, box is not None, GRADER, why), False)
        sel.unregister(w.proc.stdout)
        _stop(w)
        pool.remove(w)
        spawn()

    for _ in range(max(1, min(workers, n))):
        spawn()
    try:
        while True:
            for w in list(pool):
                if w.ready and w.item is None and pending:
                    i = pending.pop(w)
                    req = {"i": i, **jobs[i], "timeout_s": timeout_s, "guards": guards}
                    w.item, w.deadline = i, time.monotonic() + hard_timeout_s
                    try:
                        w.proc.stdin.write((json.dumps(req) + "\n").encode())
                        w.proc.stdin.flush()
                    except BrokenPipeError:
                        retire(w, "grader worker died")
            waiting = [w for w in pool if not w.ready or w.item is not None]
            if not pending and all(w.item is None for w in pool):
                break
            wait = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            for key, _ in sel.select(timeout=wait):
                w = key.data
                chunk = os.read(w.proc.stdout.fileno(), 1 << 20)
                if not chunk:  # EOF: the worker died
                    retire(w, "grader worker died")
                    continue
                w.buf += chunk
                while b"\n" in w.buf:
                    line, w.buf = w.buf.split(b"\n", 1)
                    reply = json.loads(line)
                    if reply.pop("ready", False):
                        w.ready = True
                        continue
                    prm, i = reply.pop("prm"), reply.pop("i")
                    results[i] = (Grade(**reply), prm)
                    w.item = None
            now = time.monotonic()
            for w in list(pool):
                if (not w.ready or w.item is not None) and now >= w.deadline:
                    retire(w, "timeout")
    finally:
        for w in pool:
            sel.unregister(w.proc.stdout)
            _stop(w)
        sel.close()
    return results  # type: ignore[return-value]
