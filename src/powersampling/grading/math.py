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
"""

from __future__ import annotations

import json
import logging
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
from pathlib import Path

from powersampling.grading.verdict import Grade

GRADER = "math-verify"
NO_BOX = "no \\boxed{} in completion"

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


def _math_verify_equal(extracted: str, reference: str) -> bool:
    from math_verify import parse, verify

    # Both sides go through the same "\boxed{...}" parsing path, so formatting choices
    # (\left, \dfrac, units, degrees, percent) are treated alike.
    gold = parse("\\boxed{" + reference + "}", parsing_timeout=None)
    pred = parse("\\boxed{" + extracted + "}", parsing_timeout=None)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


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


def _sympy_equal(a: str, b: str) -> bool:
    """Equal as sympy objects (parsed by latex2sympy2, the parser math-verify ships)."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    # A symbolic comparison of long strings of letters is the PRM800K "too many unknowns"
    # case: refuse rather than call "abc" equal to "cab".
    for s in (a, b):
        if len(re.findall(r"(?<!\\)\b[a-zA-Z]\b", re.sub(r"\\[a-zA-Z]+", " ", s))) > 2:
            return False
    try:
        x, y = latex2sympy(a), latex2sympy(b)
    except Exception:
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


def prm_equal(extracted: str, reference: str) -> bool:
    """PRM800K-style equivalence: normalised strings equal, else sympy-equal element by
    element (tuples and intervals need the same brackets; lists keep their order)."""
    a, b = normalize_prm(extracted), normalize_prm(reference)
    if not a or not b:
        return False
    if a == b:
        return True
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
    return all(p == q or _sympy_equal(p, q) for p, q in zip(pa, pb, strict=True))


# --------------------------------------------------------------------------- grading


def grade_math_both(
    completion: str, reference: str, timeout_s: float | None = 5.0
) -> tuple[Grade, bool]:
    """Grade ``completion`` against ``reference``; returns (math-verify Grade, PRM verdict).

    Each of the two checks gets ``timeout_s`` seconds (main thread only, see module doc);
    a math-verify timeout gives ``Grade(correct=False, error="timeout")``.
    """
    extracted = last_boxed(completion)
    if extracted is None:
        return Grade(None, False, False, GRADER, NO_BOX), False
    if not extracted:
        return Grade("", False, True, GRADER, "empty \\boxed{}"), False
    warm_up()
    correct, error = False, None
    try:
        with time_limit(timeout_s):
            correct = _math_verify_equal(extracted, str(reference))
    except GradingTimeout:
        error = "timeout"
    except Exception as exc:  # a grader bug must not take the batch down; record it
        error = f"math-verify failed: {type(exc).__name__}"
    prm = False
    try:
        with time_limit(timeout_s):
            prm = prm_equal(extracted, str(reference))
    except GradingTimeout:
        prm = False
    return Grade(extracted, correct, True, GRADER, error), prm


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
        grade, prm = grade_math_both(req["completion"], req["reference"], req["timeout_s"])
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


def grade_math_many(
    completions: list[str],
    references: list[str],
    workers: int = 2,
    timeout_s: float | None = 5.0,
    hard_timeout_s: float | None = None,
) -> list[tuple[Grade, bool]]:
    """Grade many completions in worker processes; returns (Grade, PRM verdict) per item.

    ``timeout_s`` is the per-check timer inside a worker (None: no timer);
    ``hard_timeout_s`` (default ``2 * timeout_s + 5``: both checks plus slack) is the
    wall-clock limit per item, after which the worker is killed, the item graded
    ``error="timeout"`` and a fresh worker started. A worker that dies mid-item gives
    ``error="grader worker died"``.
    """
    if len(completions) != len(references):
        raise ValueError("completions and references differ in length")
    n = len(completions)
    if n == 0:
        return []
    if hard_timeout_s is None:
        hard_timeout_s = 2 * timeout_s + 5 if timeout_s else 60.0
    results: list[tuple[Grade, bool] | None] = [None] * n
    pending = list(range(n - 1, -1, -1))  # a stack, so items go out in order
    pool: list[_Worker] = []
    sel = selectors.DefaultSelector()

    def spawn() -> None:
        w = _start_worker()
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        pool.append(w)

    def retire(w: _Worker, why: str) -> None:
        if w.item is None:  # died before it was ready: nothing to blame it on
            raise RuntimeError(f"a math grading worker failed to start ({why})")
        box = last_boxed(str(completions[w.item]))
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
                    i = pending.pop()
                    req = {"i": i, "completion": str(completions[i])}
                    req |= {"reference": str(references[i]), "timeout_s": timeout_s}
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
