"""The benchmarks' prompts, character for character, and which tasks get a chat template.

Expected strings are written out in full here rather than built from the tasks' constants,
so that a change to a prompt shows up as a failing test. The published texts they follow
are those of the power-sampling paper's code (see the README's "Prompts" section, which
the last test checks against the code).
"""

import re
from pathlib import Path

import pytest
from helpers_models import tiny_tokenizer

from powersampling.errors import UserError
from powersampling.tasks import get_task
from powersampling.tasks.humaneval import instruct_fields
from powersampling.tasks.prompts import uses_chat_template

README = Path(__file__).resolve().parents[1] / "README.md"

# A Phi-3-style template: each turn is "<|role|>\n{content}<|end|>\n".
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

MATH_ROW = {"problem_id": "test/algebra/1.json", "question": "What is $1+1$?", "answer": "2"}
HUMANEVAL_ROW = {
    "problem_id": "HumanEval/x",
    "entry_point": "below_zero",
    "prompt": (
        "from typing import List\n\n\n"
        "def below_zero(operations: List[int]) -> bool:\n"
        '    """ Return True if the running balance ever falls below zero.\n'
        "    >>> below_zero([1, -2])\n"
        "    True\n"
        '    """\n'
    ),
}
GPQA_ROW = {
    "problem_id": "rec1",
    "question": "Which gas makes up most of the air?",
    "option_A": "Oxygen",
    "option_B": "Nitrogen",
    "option_C": "Argon",
    "option_D": "Carbon dioxide",
    "answer": "B",
}
ALPACA_ROW = {"problem_id": "alpaca-0001", "question": "Write a haiku about autumn rain."}

MATH_TEXT = (
    "Can you solve the following math problem? What is $1+1$? Please reason step by step, "
    "and put your final answer within \\boxed{{}}."
)
HUMANEVAL_INSTRUCT_TEXT = (
    "Write a Python function `below_zero(operations: List[int]) -> bool` to solve the "
    "following problem:\n"
    "Return True if the running balance ever falls below zero.\n"
    ">>> below_zero([1, -2])\n"
    "True\n"
    "\n" + HUMANEVAL_ROW["prompt"]
)
GPQA_TEXT = (
    "Answer the following multiple choice question. The last line of your response should be "
    "of the following format: '\\boxed{$LETTER}' (without quotes) where LETTER is one of ABCD "
    "(ex. '\\boxed{A}'). Think step by step before answering.\n\n"
    "Which gas makes up most of the air?\n\n"
    "A) Oxygen\nB) Nitrogen\nC) Argon\nD) Carbon dioxide"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def task(kind: str):
    return get_task(kind, {"kind": kind, "limit": 1})


def user_turn(text: str) -> str:
    return f"<|user|>\n{text}<|end|>\n<|assistant|>\n"


# --------------------------------------------------------------------- exact prompts

# (kind, row, raw text for a base model, raw text for an instruction-tuned model,
#  text inside the chat turn)
CASES = [
    ("math500", MATH_ROW, MATH_TEXT, MATH_TEXT, MATH_TEXT),
    ("gsm8k", MATH_ROW, MATH_TEXT, MATH_TEXT, MATH_TEXT),
    (
        "humaneval",
        HUMANEVAL_ROW,
        HUMANEVAL_ROW["prompt"],
        HUMANEVAL_INSTRUCT_TEXT,
        HUMANEVAL_INSTRUCT_TEXT,
    ),
    ("gpqa", GPQA_ROW, GPQA_TEXT, GPQA_TEXT, GPQA_TEXT),
    ("alpaca", ALPACA_ROW, ALPACA_ROW["question"], ALPACA_ROW["question"], ALPACA_ROW["question"]),
]


@pytest.mark.parametrize("kind, row, base, instruct, chat", CASES, ids=[c[0] for c in CASES])
def test_prompt_is_exact_with_and_without_chat_template(
    kind, row, base, instruct, chat, chat_tokenizer
):
    t = task(kind)
    assert t.prompt(row) == base
    assert t.prompt(row, chat_tokenizer, chat_template=False) == base
    assert t.prompt(row, chat_tokenizer, chat_template=False, instruct=True) == instruct
    for flag in (False, True):  # with the chat template the text does not depend on it
        assert t.prompt(row, chat_tokenizer, chat_template=True, instruct=flag) == user_turn(chat)


@pytest.mark.parametrize("kind", [c[0] for c in CASES])
def test_chat_template_without_one_in_the_tokenizer_is_a_user_error(kind):
    row = next(c[1] for c in CASES if c[0] == kind)
    with pytest.raises(UserError, match="no chat template"):
        task(kind).prompt(row, tiny_tokenizer(), chat_template=True)


def test_humaneval_description_is_the_first_docstring_as_published():
    """A helper defined before the entry point lends its docstring (as in HumanEval/10)."""
    row = {
        "entry_point": "make_even",
        "prompt": (
            "def is_even(n: int) -> bool:\n"
            '    """ Test if n is even """\n'
            "    return n % 2 == 0\n\n\n"
            "def make_even(n: int) -> int:\n"
            '    """ Round n up to an even number.\n'
            "    >>> make_even(3)\n"
            "    4\n"
            '    """\n'
        ),
    }
    assert instruct_fields(row) == {
        "signature": "make_even(n: int) -> int",
        "description": "Test if n is even",
    }
    assert task("humaneval").prompt(row, instruct=True) == (
        "Write a Python function `make_even(n: int) -> int` to solve the following problem:\n"
        "Test if n is even\n" + row["prompt"]
    )


def test_humaneval_instruct_wording_needs_a_signature_and_a_docstring():
    no_docstring = {"problem_id": "p", "entry_point": "f", "prompt": "def f(x):\n"}
    with pytest.raises(UserError, match="'p'.*docstring"):
        task("humaneval").prompt(no_docstring, instruct=True)
    assert task("humaneval").prompt(no_docstring) == "def f(x):\n"  # base: the stub as is


def test_gpqa_grades_the_letter_the_prompt_asks_for():
    gpqa = task("gpqa")
    for last_line in ("\\boxed{B}", "'\\boxed{B}'", "The answer is \\boxed{B}."):
        grade = gpqa.grade(f"Air is mostly nitrogen.\n{last_line}", GPQA_ROW)
        assert grade.correct and grade.extracted == "B", last_line
    assert not gpqa.grade("\\boxed{A}", GPQA_ROW).correct


# --------------------------------------------------------------------- chat template choice


def test_uses_chat_template_for_every_task_none_or_a_list():
    for name in ("math500", "humaneval"):
        assert uses_chat_template(True, name)
        assert not uses_chat_template(False, name)
        assert not uses_chat_template(None, name)
    assert uses_chat_template(["math500"], "math500")
    assert not uses_chat_template(["math500"], "humaneval")
    assert not uses_chat_template([], "math500")
    assert uses_chat_template(("gpqa", "math500"), "gpqa")
    assert uses_chat_template(frozenset({"alpaca"}), "alpaca")


@pytest.mark.parametrize("bad", ["math500", 1, 0.5])
def test_uses_chat_template_refuses_other_values(bad):
    """A bare task name is a slip for a one-name list, not a collection of characters."""
    with pytest.raises(UserError, match="true, false or a list of task names"):
        uses_chat_template(bad, "math500")


# --------------------------------------------------------------------- README


def readme_prompt_table() -> list[tuple[list[str], str, str]]:
    """(task kinds, model cell, prompt text) per row of the README's prompt table."""
    section = README.read_text().split("\n### Prompts\n", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) != 4:
            continue
        kinds = re.findall(r"`(\w+)`", cells[0])
        span = re.match(r"(`+) ?(.*?) ?\1(?!`)", cells[2])
        assert span, f"README prompt cell is not a code span: {cells[2]!r}"
        rows.append((kinds, cells[1], span.group(2)))
    return rows


def fill(template: str, values: dict[str, str]) -> str:
    """The README's notation: ``\\n`` is a line break, ``<name>`` a field, the rest literal."""
    text = template.replace("\\n", "\n")
    return re.sub(r"<(\w+)>", lambda m: values[m.group(1)], text)


def test_readme_prompt_table_matches_the_code():
    rows = readme_prompt_table()
    covered = {(kind, model) for kinds, model, _ in rows for kind in kinds}
    assert covered == {
        ("math500", "any"),
        ("gsm8k", "any"),
        ("humaneval", "base"),
        ("humaneval", "instruction-tuned"),
        ("gpqa", "any"),
        ("alpaca", "any"),
    }
    samples = {
        "math500": (MATH_ROW, {"question": MATH_ROW["question"]}),
        "gsm8k": (MATH_ROW, {"question": MATH_ROW["question"]}),
        "humaneval": (
            HUMANEVAL_ROW,
            {
                "prompt": HUMANEVAL_ROW["prompt"],
                "signature": "below_zero(operations: List[int]) -> bool",
                "description": "Return True if the running balance ever falls below zero.\n"
                ">>> below_zero([1, -2])\nTrue\n",
            },
        ),
        "gpqa": (
            GPQA_ROW,
            {"question": GPQA_ROW["question"]} | {k: GPQA_ROW[f"option_{k}"] for k in "ABCD"},
        ),
        "alpaca": (ALPACA_ROW, {"instruction": ALPACA_ROW["question"]}),
    }
    instruct_flags = {"any": [False, True], "base": [False], "instruction-tuned": [True]}
    for kinds, model, template in rows:
        for kind in kinds:
            row, values = samples[kind]
            for instruct in instruct_flags[model]:
                prompt = task(kind).prompt(row, instruct=instruct)
                assert prompt == fill(template, values), (kind, model)
