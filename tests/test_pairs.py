"""Clean/corrupted pairs: the toy pairs' answers, the published file format, the task."""

import json

import pytest

from powersampling.errors import UserError
from powersampling.grading.synthetic import format_solution
from powersampling.tasks import get_task
from powersampling.toy.pairs import make_pairs, solve
from powersampling.toy.problems import generate_problems


def test_solve_reproduces_every_generated_solution():
    problems = generate_problems(300, seed=5, distractors=[0, 3], ops=["+", "-", "*"])
    for row in problems.itertuples():
        chain = solve(row.question, row.kind, max_value=20)
        assert format_solution(chain, chain[-1].value) == row.solution, row.question


def test_solve_refuses_out_of_range_values():
    assert solve("9-8-5", "arithmetic", max_value=20) is None  # 1-5 < 0
    assert solve("9+9+9", "arithmetic", max_value=20) is None  # 27 > 20
    assert [s.value for s in solve("a=2, b=3, c=a+b, d=c-1. d=?", "binding")] == [5, 4]


def test_pairs_change_one_number_and_the_answer():
    frame, dropped = make_pairs(60, seed=3, distractors=[0, 2])
    assert set(dropped) == {"same_answer", "out_of_range", "no_change_found"}
    assert sum(dropped.values()) > 0  # distractor numbers leave answers as they were
    for _, pair in frame.groupby("pair_id", sort=False):
        clean, corrupted = pair.itertuples()
        assert (clean.variant, corrupted.variant) == ("clean", "corrupted")
        assert clean.answer != corrupted.answer
        assert len(clean.question) == len(corrupted.question)  # single-digit numbers
        changed = [a != b for a, b in zip(clean.question, corrupted.question, strict=True)]
        assert sum(changed) == 1
        chain = solve(corrupted.question, corrupted.kind, max_value=20)
        assert corrupted.solution == format_solution(chain, chain[-1].value)


def test_pairs_are_seeded():
    assert make_pairs(10, seed=1)[0].equals(make_pairs(10, seed=1)[0])
    assert not make_pairs(10, seed=1)[0].equals(make_pairs(10, seed=2)[0])


def test_pairs_task_generates_rows_and_grades_them():
    task = get_task("pairs", {"kind": "pairs", "limit": 8, "prompt": "instruction"}, seed=4)
    frame = task.load()
    assert task.size == 16 and len(frame) == 16
    assert frame["problem_id"].is_unique
    assert list(frame["variant"][:2]) == ["clean", "corrupted"]
    row = frame.iloc[0].to_dict()
    assert task.prompt(row).endswith(f"Q: {row['question']}\nA: ")
    assert task.grade(row["answer"], row).correct
    worked = get_task("pairs", {"kind": "pairs", "limit": 8}, seed=4)
    assert worked.grade(row["solution"], row).correct


def _records(*pairs):
    return [
        {"pair_id": pid, "variant": variant, "question": q, "answer": a}
        for pid, (clean, corrupted) in pairs
        for variant, (q, a) in (("corrupted", corrupted), ("clean", clean))
    ]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_pairs_file_in_the_published_format(tmp_path, suffix):
    records = _records(
        ("b", (("2+2", "4"), ("2+3", "5"))),
        ("a", (("1+1", "2"), ("0+2", "2"))),  # equal answers: dropped and counted
        ("c", (("5-1", "4"), ("5-2", "3"))),
    )
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records))
    task = get_task("p", {"kind": "pairs", "limit": 5, "source": str(path)}, seed=0)
    frame, dropped = task.load_with_counts()
    assert dropped == {"same_answer": 1}
    assert list(frame["problem_id"]) == ["b:clean", "b:corrupted", "c:clean", "c:corrupted"]
    assert task.grade("5", frame.iloc[1].to_dict()).correct  # no solution: the last number


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"pair_id": "a", "variant": "clean", "question": "1+1"}], "missing ['answer']"),
        (
            [{"pair_id": "a", "variant": "dirty", "question": "1", "answer": "1"}],
            "variant must be one of",
        ),
        (
            [{"pair_id": "a", "variant": "clean", "question": "1", "answer": "1"}],
            "one clean and one corrupted",
        ),
    ],
)
def test_bad_pairs_files_are_refused(tmp_path, records, message):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(records))
    task = get_task("p", {"kind": "pairs", "limit": 5, "source": str(path)}, seed=0)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        task.load()
