"""Math grading: \\boxed{} extraction, math-verify and PRM800K-style equivalence, timeouts."""

import threading

import pytest

from powersampling.grading.math import (
    NO_BOX,
    grade_math,
    grade_math_both,
    grade_math_many,
    last_boxed,
    normalize_prm,
    prm_equal,
)

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
    grade, prm = grade_math_both(r"\boxed{9^{9^{9^{9}}}}", "7", timeout_s=0.5)
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
    # No timer inside the workers (timeout_s=None): only killing the worker at the hard
    # limit can end the second item, and the items after it need a replacement worker.
    # The call runs in a thread so that a broken hard limit fails here instead of hanging.
    out = {}
    thread = threading.Thread(
        target=lambda: out.update(
            r=grade_math_many(completions, references, workers=2, timeout_s=None, hard_timeout_s=2)
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
