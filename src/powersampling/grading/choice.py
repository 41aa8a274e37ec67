"""Multiple choice: the option letter from the last ``\\boxed{}``.

The prompt asks for the letter in ``\\boxed{}``. Optionally (config ``letter_fallback``)
a completion without one is read by its last standalone capital letter A–D; such a
verdict is marked non-compliant so the two can be told apart.
"""

from __future__ import annotations

import re

from powersampling.grading.math import last_boxed
from powersampling.grading.verdict import Grade

GRADER = "choice"
LETTERS = "ABCD"


def _letter_in_box(content: str) -> str | None:
    """ "B", "(B)", "B)", "B.", "\\text{B}", "\\textbf{(B)}", "B) text of option" → "B"."""
    s = content.strip()
    for _ in range(2):
        s = re.sub(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$", r"\1", s).strip()
    m = re.fullmatch(r"\(?([A-D])[).:]?(?:\s.*)?", s, re.S)
    return m.group(1) if m else None


def grade_choice(completion: str, correct_letter: str, letter_fallback: bool = False) -> Grade:
    """Grade a multiple-choice completion against ``correct_letter`` (one of A–D)."""
    if correct_letter not in LETTERS or len(correct_letter) != 1:
        raise ValueError(f"correct_letter must be one of {LETTERS}, got {correct_letter!r}")
    completion = completion if isinstance(completion, str) else ""  # None / NaN: no answer
    boxed = last_boxed(completion)
    if boxed is not None:
        letter = _letter_in_box(boxed)
        if letter is not None:
            return Grade(letter, letter == correct_letter, True, GRADER)
    if letter_fallback:
        hits = re.findall(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])", completion)
        if hits:
            return Grade(hits[-1], hits[-1] == correct_letter, False, GRADER)
    if boxed is not None:
        return Grade(boxed, False, False, GRADER, "\\boxed{} does not hold a letter A-D")
    return Grade(None, False, False, GRADER, "no \\boxed{} in completion")
