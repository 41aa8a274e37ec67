"""Math grading: \\boxed{} extraction, math-verify and PRM800K-style equivalence, timeouts."""

import threading

import pytest

import powersampling.grading.math as gm
from powersampling.grading.math import (
    NO_BOX,
    TOO_LARGE,
    grade_extracted,
    grade_math,
    grade_math_both,
    grade_math_many,
    last_boxed,
    normalize_prm,
    prm_equal,
    too_large_expr,
    too_large_text,
)
from powersampling.grading.math_workers import JobQueue, Worker
from powersampling.grading.prm import parse_latex

# --------------------------------------------------------------------------- last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{5}.", "5"),
        (r"\boxed{1} first, then \boxed{2}", "2"),  # the last box wins
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces kept whole
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are content
        (r"$\boxed 7$ is it", "7"),  # brace-less form runs to the next $
        (r"\fbox{x+1}", "x+1"),
        (r"\boxed {  3 }", "3"),
        (r"\boxed{\boxed{4}}", "4"),
        (r"\boxed{}", ""),
        (r"\boxed{1", None),  # never closed
        ("no box here", None),
        (r"\boxedx{3}", None),  # a different command
        ("", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_rejects_non_strings():
    assert last_boxed(None) is None


# --------------------------------------------------------------------------- equivalence

EQUIVALENT = [
    ("5", "5"),
    ("-3", "-3"),
    (r"\frac{1}{2}", "0.5"),
    (r"\frac{1}{2}", r"\dfrac{1}{2}"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\frac{14}{3}", r"\frac{28}{6}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    ("[1,2)", "[1, 2)"),
    (r"(-\infty, 0]", r"(-\infty,0]"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"5\text{ cm}", "5"),
    (r"30^\circ", "30"),
    (r"50\%", "50"),
    ("1, 2", "2, 1"),  # math-verify compares answer lists as sets
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    ("x=5", "5"),
    ("10", "10.0"),
    ("1,000", "1000"),
    ("p - q", "p-q"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\$18.90", "18.90"),
]

NOT_EQUIVALENT = [
    ("5", "6"),
    ("-3", "3"),
    (r"\frac{1}{2}", r"\frac{1}{3}"),
    ("0.333", r"\frac{1}{3}"),
    ("(1,2]", "[1,2)"),  # interval ends matter
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\3\end{pmatrix}"),
    ("1, 2", "1"),
    (r"2\sqrt{2}", r"\sqrt{2}"),
    (r"\pi", "3.14159"),
    ("x+1", "x-1"),
]


@pytest.mark.parametrize("reference, answer", EQUIVALENT)
def test_math_verify_equivalent(reference, answer):
    grade = grade_math(f"Thus \\boxed{{{answer}}}.", reference)
    assert grade.correct, grade
    assert grade.extracted == answer and grade.compliant and grade.error is None
    assert grade.grader == "math-verify"


@pytest.mark.parametrize("reference, answer", NOT_EQUIVALENT)
def test_math_verify_not_equivalent(reference, answer):
    grade = grade_math(f"Thus \\boxed{{{answer}}}.", reference)
    assert not grade.correct, grade
    assert grade.extracted == answer and grade.error is None


@pytest.mark.parametrize(
    "raw, normal",
    [
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        (r"5 \text{ inches}", "5"),
        (r"90^{\circ}", "90"),
        (r"12\%", "12"),
        (r"\$5", "5"),
        ("x = 7", "7"),
        ("7.", "7"),
        (r"\sqrt3", r"\sqrt{3}"),
        ("1,234", "1234"),
        (".5", r"\frac{1}{2}"),
        ("3/4", r"\frac{3}{4}"),
        (r"\text{(B)}", "(B)"),
    ],
)
def test_normalize_prm(raw, normal):
    assert normalize_prm(raw) == normal


@pytest.mark.parametrize("reference, answer", [p for p in EQUIVALENT if p != ("1, 2", "2, 1")])
def test_prm_check_agrees_on_equivalent(reference, answer):
    assert prm_equal(answer, reference)


@pytest.mark.parametrize("reference, answer", NOT_EQUIVALENT)
def test_prm_check_agrees_on_not_equivalent(reference, answer):
    assert not prm_equal(answer, reference)


def test_prm_check_keeps_list_order_unlike_math_verify():
    grade, prm = grade_math_both(r"\boxed{2, 1}", "1, 2")
    assert grade.correct and not prm


def test_extraction_failures_are_reported_not_silently_wrong():
    grade, prm = grade_math_both("The answer is 5.", "5")
    assert grade.extracted is None and not grade.correct and not grade.compliant
    assert grade.error == NO_BOX and not prm
    empty = grade_math(r"\boxed{}", "5")
    assert empty.extracted == "" and not empty.correct and empty.error


@pytest.mark.parametrize("completion", [None, float("nan")])
def test_missing_completions_are_extraction_failures(completion):
    grade, prm = grade_math_both(completion, "1")
    assert grade.error == NO_BOX and not grade.correct and not prm


def test_soft_timeout_in_main_thread():
    # guards=False: the guards would refuse this answer before the timer is needed.
    grade, prm = grade_math_both(r"\boxed{9^{9^{9^{9}}}}", "7", timeout_s=0.5, guards=False)
    assert grade.error == "timeout" and not grade.correct and not prm
    assert grade.extracted == "9^{9^{9^{9}}}"


def test_grading_off_the_main_thread_works_without_a_timer():
    out = {}
    thread = threading.Thread(target=lambda: out.update(g=grade_math(r"\boxed{0.5}", r"\frac12")))
    thread.start()
    thread.join()
    assert out["g"].correct


def test_grade_math_many_matches_in_process_grading_and_kills_stuck_items():
    completions = [
        r"\boxed{\frac{1}{2}}",
        r"\boxed{9^{9^{9^{9}}}}",  # would run for hours without a limit
        "no box",
        r"\boxed{3}",
        r"\boxed{2, 1}",
    ]
    references = ["0.5", "7", "2", "4", "1, 2"]
    # No timer inside the workers (timeout_s=None) and no guards: only killing the worker at
    # the hard limit can end the second item, and the items after it need a replacement
    # worker. The call runs in a thread so that a broken hard limit fails here instead of
    # hanging.
    out = {}
    thread = threading.Thread(
        target=lambda: out.update(
            r=grade_math_many(
                completions,
                references,
                workers=2,
                timeout_s=None,
                hard_timeout_s=2,
                guards=False,
            )
        ),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=120)  # a liveness bound, ~30x the expected time; not a benchmark
    assert not thread.is_alive(), "a stuck item was not killed at the hard limit"
    results = out["r"]
    assert len(results) == len(completions)
    stuck, _ = results[1]
    assert stuck.error == "timeout" and not stuck.correct
    assert stuck.extracted == "9^{9^{9^{9}}}"
    for k in (0, 2, 3, 4):
        assert results[k] == grade_math_both(completions[k], references[k])
    assert [g.correct for g, _ in results] == [True, False, False, False, True]


def test_grade_math_many_empty_and_length_mismatch():
    assert grade_math_many([], []) == []
    with pytest.raises(ValueError):
        grade_math_many(["a"], [])


# --------------------------------------------------------------------------- guards

PATHOLOGICAL = [
    r"9^{9^{9^{9}}}",  # 9^(9^9) alone has 370 million digits
    r"9^{9^{9}}",
    r"99999999^{99999999}",
    r"(10^{100})!",
    r"\binom{10^{10}}{10^5}",
    r"x^{9^{9^{9}}}",
    r"\sin(10^{10^{10}})",
    r"\frac{1}{9^{9^{9}}}",
    r"(x+1)^{1000}",  # expanding a sum to a huge power
    "(" * 30 + "1" + ")" * 30,  # the LaTeX parser slows steeply with nesting
    "{" * 20 + "1" + "}" * 20,
    "3" * 5000,  # too long
]


@pytest.fixture
def no_expensive_steps(monkeypatch):
    """Replace math-verify's comparison and sympy's simplify by spies that record calls."""
    import math_verify
    import sympy

    calls = []
    monkeypatch.setattr(math_verify, "verify", lambda *a, **k: calls.append("verify"))
    monkeypatch.setattr(sympy, "simplify", lambda *a, **k: calls.append("simplify"))
    return calls


@pytest.mark.parametrize("answer", PATHOLOGICAL)
def test_pathological_answers_are_refused_before_the_expensive_steps(answer, no_expensive_steps):
    gm.warm_up()  # outside the spies' watch: warm-up compares two small answers
    no_expensive_steps.clear()
    grade, prm = grade_extracted(answer, "7", timeout_s=30)  # 30 s: a liveness bound only
    assert not grade.correct and not prm
    assert grade.error == TOO_LARGE  # refused by a guard, not by the timer ("timeout")
    assert grade.compliant and grade.extracted == answer
    assert not prm_equal(answer, "7")
    assert no_expensive_steps == []  # neither math-verify's verify nor sympy.simplify ran


@pytest.mark.parametrize("answer", PATHOLOGICAL[:9])
def test_pathological_answer_identical_to_the_reference_still_matches(answer):
    # math-verify settles identical parses by structure, before evaluating anything.
    grade, prm = grade_extracted(answer, answer, timeout_s=30)
    assert grade.correct and prm and grade.error is None


@pytest.mark.parametrize(
    "answer",
    [reference for pair in EQUIVALENT + NOT_EQUIVALENT for reference in pair]
    + ["2^{10}", "2^{100}", "3^{200}", "(x+1)^{2}", "(x+1)^{10}", "10!", r"\binom{10}{3}"]
    + ["x^{2015}", r"\frac{1}{2^{50}}", r"2^{2^{5}}", r"\sqrt{\sqrt{\sqrt{2}}}", "1" * 50],
)
def test_guards_pass_ordinary_answers(answer):
    assert not too_large_text(answer)
    for parsed in gm._mv_parse(answer):
        assert not too_large_expr(parsed)
    ok, parsed = parse_latex(normalize_prm(answer))
    assert not ok or not too_large_expr(parsed)


@pytest.mark.parametrize("reference, answer", EQUIVALENT + NOT_EQUIVALENT)
def test_guards_leave_ordinary_verdicts_unchanged(reference, answer):
    assert grade_extracted(answer, reference) == grade_extracted(answer, reference, guards=False)


# --------------------------------------------------------------------------- dedupe

ROWS = [  # (completion, reference), with many duplicate (answer, reference) pairs
    (r"Work. \boxed{\frac{1}{2}}", "0.5"),
    (r"Other work. \boxed{\frac{1}{2}}", "0.5"),  # same answer, different text
    (r"\boxed{0.5}", "0.5"),
    (r"\boxed{\frac{1}{2}}", r"\frac12"),  # same answer, another reference
    (r"\boxed{9^{9^{9^{9}}}}", "7"),
    (r"Again \boxed{9^{9^{9^{9}}}}", "7"),
    (r"\boxed{9^{9^{9^{9}}}}", "9^{9^{9^{9}}}"),
    ("no box", "7"),
    ("no box either", "7"),
    (r"\boxed{}", "7"),
    (r"\boxed{1", "7"),  # never closed
    (r"\boxed{2, 1}", "1, 2"),
    (r"so \boxed{2, 1}.", "1, 2"),
    (r"\boxed{3}", "4"),
    (r"\boxed{3}", "3"),
    (r"\boxed{3}", "3"),
    (None, "3"),
    (float("nan"), "3"),
]


def test_dedupe_gives_the_row_by_row_verdicts_grading_each_pair_once(monkeypatch):
    completions = [c for c, _ in ROWS] * 3
    references = [r for _, r in ROWS] * 3
    expected = [grade_math_both(c, r) for c, r in zip(completions, references, strict=True)]

    graded = []
    real = gm.grade_extracted

    def spy(extracted, reference, *args):
        graded.append((extracted, reference))
        return real(extracted, reference, *args)

    monkeypatch.setattr(gm, "grade_extracted", spy)
    got = grade_math_many(completions, references, workers=0)
    assert got == expected
    boxed = [(e, r) for e, r in graded if e]  # rows without a box are answered at once
    distinct = {(last_boxed(str(c)), r) for c, r in ROWS if last_boxed(str(c))}
    assert sorted(boxed) == sorted(distinct)  # every distinct pair exactly once
    assert got[4][0].error == TOO_LARGE and got[6][0].correct


def test_dedupe_in_workers_matches_row_by_row_grading():
    completions = [c for c, _ in ROWS] * 2
    references = [r for _, r in ROWS] * 2
    expected = [grade_math_both(c, r) for c, r in zip(completions, references, strict=True)]
    assert grade_math_many(completions, references, workers=2) == expected
    assert grade_math_many(completions, references, workers=2, dedupe=False) == expected


def test_workers_keep_to_one_reference_at_a_time():
    jobs = [{"reference": r} for r in "aaabbcddde"]
    queue = JobQueue(jobs)
    first, second = Worker(None), Worker(None)
    taken = {"first": [], "second": []}
    while queue:
        for name, worker in (("first", first), ("second", second)):
            if queue:
                taken[name].append(jobs[queue.pop(worker)]["reference"])
    assert sorted(taken["first"] + taken["second"]) == sorted("aaabbcddde")
    # each reference's jobs go to one worker until none is left untouched ("d" is shared)
    assert taken["first"][:3] == ["a", "a", "a"] and taken["second"][:2] == ["b", "b"]
