"""Math answers: the last ``\\boxed{}`` judged by math-verify, one by one or in batches.

The primary verdict comes from ``math-verify`` (parse both answers to sympy, compare
sets, intervals, matrices, numbers and expressions). A second, PRM800K-style verdict
(normalise the strings, then compare with sympy: :mod:`~powersampling.grading.prm`) is kept
so numbers can be set beside published ones that used it. Extraction failures
(:mod:`~powersampling.grading.boxed`) are reported as such (``extracted=None`` plus an
error), never folded silently into "wrong".

Timeouts: math-verify and sympy can take unbounded time on adversarial answers
(``9^{9^{9^9}}``). In the main thread every check runs under a SIGALRM timer; signals
only work there, so in other threads no timer is set. :func:`grade_math_many` grades in
worker processes (:mod:`~powersampling.grading.math_workers`), where the timer works, and
also kills a worker outright when an item overruns a hard wall-clock limit (covers code
that never returns to the interpreter).

Guards: the timers are the last line of defence. Before them, answers no check can settle
in reasonable time are refused outright ("not equal", ``error="too large to compare"``):
strings too long or too deeply nested, and parsed expressions that would make sympy build
a huge exact number or expansion. The limits (:mod:`~powersampling.grading.math_guards`)
are far above any MATH or GSM8K answer, so verdicts on real answers are unchanged.

Batches: :func:`grade_math_many` grades each distinct (extracted answer, reference) pair
once and fans the verdict out to every row that has it (the verdict depends on nothing
else); seeds and methods often agree, so this removes much of the work.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import lru_cache

from powersampling.grading.boxed import last_boxed
from powersampling.grading.math_guards import (
    GradingTimeout,
    TooLarge,
    time_limit,
    too_large_expr,
    too_large_text,
)
from powersampling.grading.math_workers import run_in_workers
from powersampling.grading.prm import normalize_prm, prm_equal, sympy_equal
from powersampling.grading.verdict import Grade

GRADER = "math-verify"
NO_BOX = "no \\boxed{} in completion"
EMPTY_BOX = "empty \\boxed{}"
TOO_LARGE = "too large to compare"

__all__ = [
    "EMPTY_BOX",
    "GRADER",
    "NO_BOX",
    "TOO_LARGE",
    "grade_extracted",
    "grade_math",
    "grade_math_both",
    "grade_math_many",
    "last_boxed",
    "normalize_prm",
    "prm_equal",
    "too_large_expr",
    "too_large_text",
    "warm_up",
]

# math-verify warns once that its own timeouts are off; ours are on (see module doc).
logging.getLogger("math_verify").setLevel(logging.ERROR)


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
        sympy_equal("x+1", "1+x")
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


# --------------------------------------------------------------------------- batches


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


def _grade_job(job: dict, timeout_s: float | None, guards: bool) -> tuple[Grade, bool]:
    """A job is ``{"extracted", "reference"}`` (one distinct pair) or ``{"completion",
    "reference"}`` (one row, extraction done by the grader)."""
    if "extracted" in job:
        return grade_extracted(job["extracted"], job["reference"], timeout_s, guards)
    return grade_math_both(job["completion"], job["reference"], timeout_s, guards)


def _grade_jobs(
    jobs: list[dict],
    workers: int,
    timeout_s: float | None,
    hard_timeout_s: float | None,
    guards: bool,
) -> list[tuple[Grade, bool]]:
    """Grade jobs (see :func:`_grade_job`) in ``workers`` processes, or here when 0."""
    if workers <= 0:
        return [_grade_job(job, timeout_s, guards) for job in jobs]
    if hard_timeout_s is None:
        hard_timeout_s = 2 * timeout_s + 5 if timeout_s else 60.0
    settings = {"timeout_s": timeout_s, "guards": guards}
    replies = run_in_workers(jobs, workers, hard_timeout_s, settings, _worker_main)
    return [_verdict(job, reply) for job, reply in zip(jobs, replies, strict=True)]


def _verdict(job: dict, reply: dict | str) -> tuple[Grade, bool]:
    """A worker's reply to ``job`` as (Grade, PRM verdict); a string is why there is none
    (the worker died or overran): the item is then wrong, with that error."""
    if isinstance(reply, str):
        box = _job_box(job)
        return Grade(box, False, box is not None, GRADER, reply), False
    prm = reply.pop("prm")
    return Grade(**reply), prm


def _job_box(job: dict) -> str | None:
    return job["extracted"] if "extracted" in job else last_boxed(job["completion"])


def _worker_main() -> None:
    """A worker's loop (:mod:`~powersampling.grading.math_workers` starts it): one JSON job
    per stdin line, one JSON reply per stdout line."""
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
