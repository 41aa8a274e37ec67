"""The synthetic task and its graders: worked answers and bare integers."""

import math

import pytest

from powersampling.errors import UserError
from powersampling.grading.synthetic import grade_integer, grade_worked, parse_solution
from powersampling.tasks import get_task, task_kinds
from powersampling.toy.problems import INSTRUCTION, format_prompt
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


SOLUTION = "3+2=5; 5-1=4; #4"  # for q=3, x=2, k=q+x, m=k-1. m=?


@pytest.mark.parametrize(
    "completion, extracted, correct, compliant, steps_right, error",
    [
        (SOLUTION, "4", True, True, 2, None),
        (SOLUTION + "\n", "4", True, True, 2, None),
        # A wrong chain, its (wrong) final answer following from it.
        ("3+2=6; 6-1=5; #5", "5", False, True, 0, None),
        ("3+2=5; 5-1=3; #3", "3", False, True, 1, None),
        # A right chain with a wrong final answer: graded from the mark, so wrong.
        ("3+2=5; 5-1=4; #5", "5", False, True, 2, None),
        # A wrong chain that lands on the right number: right, and its steps say otherwise.
        ("3+3=6; 6-2=4; #4", "4", True, True, 0, None),
        # The final number without the mark: not graded as an answer.
        ("3+2=5; 5-1=4; 4", None, False, False, 2, "no marked final answer"),
        ("4", None, False, False, 0, "no marked final answer"),
        # The answer in the mark but not the format: right, not compliant.
        ("#4", "4", True, False, 0, None),
        ("so 3+2=5; 5-1=4; #4", "4", True, False, 2, None),
        ("3+2=5; 5-1=4; #4; #4", "4", True, False, 2, None),
        ("3+2=5;5-1=4;#4", "4", True, False, 2, None),
        # Named steps are not the format; their arithmetic still counts as steps.
        ("k=3+2=5; m=5-1=4; #4", "4", True, False, 2, None),
        ("3+2=5; 5-1=4; #", None, False, False, 2, "no marked final answer"),
        ("", None, False, False, 0, "no marked final answer"),
        (None, None, False, False, 0, "missing completion"),
    ],
)
def test_grade_worked(completion, extracted, correct, compliant, steps_right, error):
    grade = grade_worked(completion, SOLUTION)
    assert grade.extracted == extracted
    assert grade.correct is correct
    assert grade.compliant is compliant
    assert grade.steps_correct == steps_right
    assert grade.error == error
    assert grade.grader == "worked-answer"


def test_parse_worked_answer():
    parsed = parse_solution("4*5=20; 20-3=17; #17")
    assert parsed.compliant and parsed.final == 17
    assert [(s.left, s.op, s.right, s.value) for s in parsed.steps] == [
        (4, "*", 5, 20),
        (20, "-", 3, 17),
    ]
    assert not parse_solution("#17").compliant  # a chain has at least one step
    assert grade_worked("4", "bad reference").error.startswith("bad reference")


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
        grade = task.grade(row["solution"], row)
        assert grade.correct and grade.compliant and grade.steps_correct == row["steps"]
        wrong = row["solution"].rsplit("#", 1)[0] + f"#{int(row['answer']) + 1}"
        assert not task.grade(wrong, row).correct
        assert not task.grade(row["answer"], row).correct  # the bare number is not the format
    instructed = get_task("toy", {"kind": "synthetic", "limit": 20, "prompt": "instruction"})
    for row in instructed.load().to_dict("records"):
        grade = instructed.grade(row["answer"], row)
        assert grade.correct and grade.compliant and grade.steps_correct is None
        assert not instructed.grade(row["solution"], row).compliant


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


def test_instruction_prompt_has_the_instruction_and_two_solved_examples():
    config = {"kind": "synthetic", "limit": 30, "prompt": "instruction"}
    task = get_task("toy", config, seed=0)
    problems = task.load()
    row = problems.iloc[0].to_dict()
    prompt = task.prompt(row)
    assert prompt.startswith(INSTRUCTION + "\n") and prompt.endswith(format_prompt(row["question"]))
    assert len(task.examples) == 2
    for question, answer in task.examples:
        assert f"Q: {question}\nA: {answer}\n" in prompt
        assert question not in set(problems["question"])  # never one of the task's questions
    assert task.prompt(problems.iloc[5].to_dict()).split("Q: ")[1:3] == prompt.split("Q: ")[1:3]
    chat = task.prompt(row, tokenizer=build_char_tokenizer(), chat_template=True)
    assert chat.startswith(INSTRUCTION) and chat.endswith(format_prompt(row["question"]))
    with pytest.raises(UserError, match="prompt must be one of"):
        get_task("toy", {**config, "prompt": "chatty"}).prompt(row)


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
