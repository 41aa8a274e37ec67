"""The synthetic task and its exact-integer grader."""

import math

import pytest

from powersampling.errors import UserError
from powersampling.grading.synthetic import grade_integer
from powersampling.tasks import get_task, task_kinds
from powersampling.toy.problems import format_prompt
from powersampling.toy.tokenizer import build_char_tokenizer


@pytest.mark.parametrize(
    "completion, answer, extracted, correct, compliant, error",
    [
        ("42", "42", "42", True, True, None),
        ("  42\n", "42", "42", True, True, None),
        ("-7", "-7", "-7", True, True, None),
        ("41", "42", "41", False, True, None),
        ("7", "-7", "7", False, True, None),
        ("007", "7", "7", True, True, None),
        ("The answer is 42.", "42", "42", True, False, None),
        ("12 then 42", "42", "42", True, False, None),
        ("42 then 12", "42", "12", False, False, None),
        ("so it is -3", "-3", "-3", True, False, None),
        ("10-3", "3", "3", True, False, None),  # a binary minus is no sign
        ("2.5", "5", "2.5", False, False, None),  # a decimal is not read as its last digits
        ("5.0", "5", "5", True, False, None),
        ("", "3", None, False, False, "no integer in completion"),
        ("   ", "3", None, False, False, "no integer in completion"),
        ("no idea", "3", None, False, False, "no integer in completion"),
        (None, "3", None, False, False, "missing completion"),
        (math.nan, "3", None, False, False, "missing completion"),
    ],
)
def test_grade_integer(completion, answer, extracted, correct, compliant, error):
    grade = grade_integer(completion, answer)
    assert grade.extracted == extracted
    assert grade.correct is correct
    assert grade.compliant is compliant
    assert grade.error == error
    assert grade.grader == "exact-integer"


def test_grade_integer_bad_reference_is_an_error_not_a_crash():
    grade = grade_integer("3", "three")
    assert not grade.correct and grade.error and "three" in grade.error


def test_task_is_registered_and_loads_seeded_problems():
    assert "synthetic" in task_kinds()
    config = {"kind": "synthetic", "limit": 30, "generator": {"num_range": [0, 5], "steps": [1, 1]}}
    task = get_task("toy", config, seed=3)
    df = task.load()
    assert len(df) == task.size == 30
    assert {"problem_id", "question", "answer"} <= set(df.columns)
    assert df["problem_id"].is_unique
    assert df.equals(get_task("toy", config, seed=3).load())
    assert not df.equals(get_task("toy", config, seed=4).load())
    assert (df["steps"] == 1).all()


def test_task_grades_its_own_answers_correct():
    task = get_task("toy", {"kind": "synthetic", "limit": 20}, seed=0)
    for row in task.load().to_dict("records"):
        assert task.grade(row["answer"], row).correct
        assert not task.grade(str(int(row["answer"]) + 1), row).correct


def test_task_prompts_plain_and_chat():
    task = get_task("toy", {"kind": "synthetic", "limit": 2}, seed=0)
    row = task.load().iloc[0].to_dict()
    tokenizer = build_char_tokenizer()
    plain = task.prompt(row)
    assert plain == format_prompt(row["question"])
    # The toy chat template renders a user turn as the plain prompt.
    assert task.prompt(row, tokenizer=tokenizer, chat_template=True) == plain
    with_instruction = get_task(
        "toy", {"kind": "synthetic", "limit": 2, "instruction": "Just the number."}, seed=0
    )
    chat = with_instruction.prompt(row, tokenizer=tokenizer, chat_template=True)
    assert row["question"] in chat and "Just the number." in chat


def test_task_config_errors():
    with pytest.raises(UserError, match="limit"):
        _ = get_task("toy", {"kind": "synthetic"}).size
    with pytest.raises(UserError, match="nmu_range"):
        get_task(
            "toy", {"kind": "synthetic", "limit": 3, "generator": {"nmu_range": [0, 3]}}
        ).load()
    with pytest.raises(UserError, match="chat_template"):
        get_task("toy", {"kind": "synthetic", "limit": 3}).prompt(
            {"question": "1+1"}, tokenizer=None, chat_template=True
        )
