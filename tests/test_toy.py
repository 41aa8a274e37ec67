"""The toy world: problem generator, character tokenizer, model config and training."""

import json
import re
import string
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from powersampling.errors import UserError
from powersampling.grading.synthetic import format_solution, parse_solution
from powersampling.models import load_model
from powersampling.toy import train as toy_train
from powersampling.toy.model import build_toy_model, toy_model_config
from powersampling.toy.problems import (
    DEFAULT_GENERATOR,
    PROBLEM_COLUMNS,
    few_shot_examples,
    format_instruction_prompt,
    format_prompt,
    generate_problems,
)
from powersampling.toy.tokenizer import (
    EOS_ID,
    PAD_ID,
    UNK_ID,
    VOCAB_SIZE,
    build_char_tokenizer,
    token_id,
)
from powersampling.toy.train import (
    DEFAULT_TRAIN,
    TEST_TRAIN,
    fit_toy_model,
    train_config,
    train_toy_model,
    training_problems,
)

ROOT = Path(__file__).resolve().parents[1]

# --- problems ----------------------------------------------------------------------------


def _evaluate(question: str) -> int:
    """An independent solver: Python evaluates the expression or runs the assignments."""
    if question.endswith("=?"):
        assignments, target = question[: -len("=?")].rsplit(". ", 1)
        env: dict = {}
        exec(assignments.replace(", ", "\n"), {"__builtins__": {}}, env)  # noqa: S102
        return env[target]
    assert re.fullmatch(r"[\d+\-*()]+", question), question
    return eval(question, {"__builtins__": {}})  # noqa: S307


def test_problems_are_deterministic_and_seeded():
    a = generate_problems(60, seed=1)
    assert a.equals(generate_problems(60, seed=1))
    assert not a["question"].equals(generate_problems(60, seed=2)["question"])
    # Growing n keeps the problems (and ids) already there.
    assert generate_problems(100, seed=1).head(60).equals(a)


def test_problems_columns_and_answers_are_right():
    df = generate_problems(300, seed=0, num_range=(0, 20), steps=(1, 3), distractors=(0, 2))
    assert list(df.columns) == list(PROBLEM_COLUMNS)
    assert df["problem_id"].is_unique and df["question"].is_unique
    assert set(df["kind"]) == {"arithmetic", "binding"}
    assert (df["difficulty"] == df["steps"]).all()
    for row in df.itertuples():
        assert row.problem_id.startswith(row.kind)
        assert int(row.answer) == _evaluate(row.question), row.question
        assert 0 <= int(row.answer) <= DEFAULT_GENERATOR["max_value"]


def test_worked_answers_round_trip_and_follow_the_question():
    """Generator → parser gives back the same final answer and the same steps, and every
    step is one the question implies (values from the assignments or the previous step)."""
    df = generate_problems(200, seed=3, distractors=(0, 3))
    for row in df.itertuples():
        parsed = parse_solution(row.solution)
        assert parsed.compliant and parsed.final == int(row.answer), row.solution
        assert len(parsed.steps) == row.steps
        assert format_solution(parsed.steps, parsed.final) == row.solution
        for step in parsed.steps:
            assert {"+": step.left + step.right, "-": step.left - step.right}.get(
                step.op, step.left * step.right
            ) == step.value
            assert 0 <= step.value <= DEFAULT_GENERATOR["max_value"]
        assert parsed.steps[-1].value == int(row.answer)
        # Each step carries the previous step's value on (the chain), and the question
        # holds every step's other operand: a number written in it, or (binding) the value
        # of one of its variables.
        for before, after in zip(parsed.steps, parsed.steps[1:], strict=False):
            assert after.left == before.value
        numbers = {int(x) for x in re.findall(r"\d+", row.question)}
        if row.kind == "binding":
            env: dict = {}
            assignments = row.question[: -len("=?")].rsplit(". ", 1)[0]
            exec(assignments.replace(", ", "\n"), {"__builtins__": {}}, env)  # noqa: S102
            numbers |= set(env.values())
        assert all(step.right in numbers for step in parsed.steps)


def test_the_default_studys_chains_are_10_to_39_tokens():
    """The README's promise for config/config.yaml's tasks, and answers grow with steps."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for task in config["tasks"].values():
        df = generate_problems(300, seed=0, **task["generator"])
        tokens = df["solution"].str.len() + 1  # one token per character, then EOS
        assert tokens.between(10, 39).all()
        by_steps = tokens.groupby(df["steps"]).mean()
        assert by_steps.is_monotonic_increasing and len(by_steps) >= 2


@pytest.mark.parametrize(
    "num_range, steps, distractors", [((0, 5), (1, 1), (0, 0)), ((10, 30), (2, 4), (1, 3))]
)
def test_difficulty_knobs(num_range, steps, distractors):
    df = generate_problems(
        80, seed=0, num_range=num_range, steps=steps, distractors=distractors, max_value=999
    )
    assert df["steps"].between(*steps).all()
    assert set(df["steps"]) == set(range(steps[0], steps[1] + 1))  # every level appears
    binding = df[df["kind"] == "binding"]
    assert binding["distractors"].between(*distractors).all()
    assert (df.loc[df["kind"] == "arithmetic", "distractors"] == 0).all()
    for row in df.itertuples():
        numbers = [int(x) for x in re.findall(r"\d+", row.question)]
        assert all(num_range[0] <= x <= num_range[1] for x in numbers), row.question
        if row.kind == "arithmetic":  # one operator per step
            assert len(re.findall(r"[+\-*]", row.question)) == row.steps
        else:  # two given variables, one derived variable per step, and the distractors
            assert row.question.count("=") - 1 == 2 + row.steps + row.distractors


def test_distractors_are_not_needed():
    """Redefining a distractor leaves the answer as it was."""
    df = generate_problems(100, seed=1, kinds=["binding"], distractors=(1, 2))
    for row in df.itertuples():
        assignments, target = row.question[: -len("=?")].rsplit(". ", 1)
        statements = assignments.split(", ")
        # The chain: the asked variable and, recursively, the variables it is defined by.
        definitions = dict(s.split("=") for s in statements)
        needed, todo = set(), [target]
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo += re.findall(r"[a-z]", definitions[name])
        spare = [name for name in definitions if name not in needed]
        assert len(spare) >= row.distractors
        for name in spare:
            changed = [f"{name}=77" if s.split("=")[0] == name else s for s in statements]
            assert _evaluate(f"{', '.join(changed)}. {target}=?") == int(row.answer)


def test_problem_kinds_and_bad_arguments():
    assert set(generate_problems(10, seed=0, kinds=["binding"])["kind"]) == {"binding"}
    with pytest.raises(UserError, match="kinds"):
        generate_problems(5, seed=0, kinds=["algebra"])
    with pytest.raises(UserError, match="num_range"):
        generate_problems(5, seed=0, num_range=(5, 1))
    with pytest.raises(UserError, match="steps"):
        generate_problems(5, seed=0, steps=(0, 2))
    with pytest.raises(UserError, match="max_value"):
        generate_problems(5, seed=0, num_range=(0, 50), max_value=20)
    # 1-step arithmetic on {0, 1} has 12 distinct problems at most.
    with pytest.raises(UserError, match="distinct"):
        generate_problems(50, seed=0, kinds=["arithmetic"], num_range=(0, 1), steps=(1, 1))


def test_prompts():
    assert format_prompt("1+2") == "Q: 1+2\nA: "
    examples = few_shot_examples(0, exclude=["3+4"])
    assert len(examples) == 2 and all(a.isdigit() for _, a in examples)
    prompt = format_instruction_prompt("1+2", examples)
    assert prompt.startswith("Respond with only the final number.\nQ: ")
    assert prompt.endswith("Q: 1+2\nA: ") and prompt.count("\nA: ") == 3
    # The examples avoid the questions they are told to avoid.
    first = few_shot_examples(0)
    assert few_shot_examples(0, exclude=[first[0][0]])[0][0] != first[0][0]


# --- tokenizer ---------------------------------------------------------------------------

TEXTS = [string.printable, "Q: (4-2)*3\nA: ", "x=1, y=x+2. y=?", "  a\tb\n\n", "héllo ✓"]


def test_tokenizer_is_character_level():
    tokenizer = build_char_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE
    assert (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        UNK_ID,
        EOS_ID,
        PAD_ID,
    )
    assert PAD_ID != EOS_ID and tokenizer.padding_side == "left"
    prompt = format_prompt("12+3")
    assert tokenizer(prompt)["input_ids"] == [token_id(c) for c in prompt]
    assert len(set(tokenizer(string.printable)["input_ids"])) == len(string.printable)


def test_tokenizer_round_trip_through_save_and_auto_tokenizer(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    # A qwen2 config beside it makes AutoTokenizer rebuild it as Qwen2Tokenizer; the ids
    # must not change.
    toy_model_config(VOCAB_SIZE).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left"
    assert (loaded.eos_token_id, loaded.pad_token_id) == (EOS_ID, PAD_ID)
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert loaded(text)["input_ids"] == ids
        assert loaded.decode(ids) == text
    ids = tokenizer("42")["input_ids"] + [EOS_ID, PAD_ID, PAD_ID]
    assert loaded.decode(ids, skip_special_tokens=True) == "42"
    assert loaded.decode(ids) != "42"
    # Left padding with the pad token, not EOS.
    batch = loaded(["7", "123"], padding=True)["input_ids"]
    assert batch[0][:2] == [PAD_ID, PAD_ID]
    # The chat template gives the toy model its training prompt.
    chat = loaded.apply_chat_template(
        [{"role": "user", "content": "1+2"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == format_prompt("1+2")


# --- model config ------------------------------------------------------------------------


def test_toy_model_config_is_a_small_qwen2():
    config = toy_model_config(VOCAB_SIZE)
    assert config.model_type == "qwen2" and config.tie_word_embeddings
    assert (config.eos_token_id, config.pad_token_id) == (EOS_ID, PAD_ID)
    n_params = sum(p.numel() for p in build_toy_model(config, seed=0).parameters())
    assert 0.5e6 < n_params < 1.5e6
    assert toy_model_config(VOCAB_SIZE, num_hidden_layers=2).num_hidden_layers == 2
    with pytest.raises(UserError, match="hiden_size"):
        toy_model_config(VOCAB_SIZE, hiden_size=64)


# --- training ----------------------------------------------------------------------------

# Small enough that one run takes about a second; the properties tested do not depend on size.
SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 64,
}
BUDGET = {"n_problems": 256, "steps": 12, "batch_size": 8, "warmup_steps": 2, "log_every": 4}
HOLDOUT = set(generate_problems(40, seed=99)["question"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "model"
    lines = []
    info = train_toy_model(
        out, model_shape=SHAPE, train=BUDGET, holdout_questions=HOLDOUT, seed=5, log=lines.append
    )
    return out, info, lines


def test_train_config_merges_overrides():
    cfg = train_config(TEST_TRAIN)
    assert cfg["steps"] == TEST_TRAIN["steps"]
    assert cfg["learning_rate"] == DEFAULT_TRAIN["learning_rate"]
    cfg = train_config({"generator": {"num_range": [0, 3]}})
    assert cfg["generator"]["num_range"] == [0, 3]
    assert cfg["generator"]["kinds"] == DEFAULT_TRAIN["generator"]["kinds"]
    with pytest.raises(UserError, match="stpes"):
        train_config({"stpes": 3})
    with pytest.raises(UserError, match="batch_size"):
        train_config({"batch_size": 0})


def test_training_excludes_held_out_questions():
    cfg = train_config({"n_problems": 200})
    everything, n_dropped = training_problems(cfg, set(), seed=5)
    assert n_dropped == 0
    held = set(everything["question"].iloc[::7]) | {"not a generated question"}
    kept, n_dropped = training_problems(cfg, held, seed=5)
    assert n_dropped == len(held) - 1
    assert not set(kept["question"]) & held
    assert list(kept["question"]) == [q for q in everything["question"] if q not in held]


def test_trained_model_folder(trained):
    out, info, lines = trained
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= names
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # no temporary folders left
    assert json.loads((out / "training.json").read_text()) == json.loads(json.dumps(info))
    assert info["steps"] == BUDGET["steps"] and info["seed"] == 5
    assert info["final_loss"] < info["first_loss"]  # it learned something
    assert any("step 12/12" in line for line in lines)


def test_same_seed_same_weights_and_reload_gives_same_logits(trained):
    out, _, _ = trained
    model, tokenizer, _ = fit_toy_model(
        model_shape=SHAPE, train=BUDGET, holdout_questions=HOLDOUT, seed=5, log=lambda _: None
    )
    loaded, loaded_tokenizer = load_model(str(out), device="cpu")
    assert loaded.dtype == torch.float32
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    prompts = [format_prompt(q) for q in ["1+2", "a=3, b=4, c=a+b. c=?"]]
    batch = loaded_tokenizer(prompts, return_tensors="pt", padding=True)
    assert torch.equal(
        batch["input_ids"], tokenizer(prompts, return_tensors="pt", padding=True)["input_ids"]
    )
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_other_seed_other_weights(trained):
    out, _, _ = trained
    model, _, _ = fit_toy_model(model_shape=SHAPE, train=BUDGET, seed=6, log=lambda _: None)
    loaded, _ = load_model(str(out), device="cpu")
    assert not torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_failed_save_leaves_no_folder(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(toy_train.json, "dumps", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        train_toy_model(
            tmp_path / "model", model_shape=SHAPE, train={**BUDGET, "steps": 1}, log=print
        )
    assert list(tmp_path.iterdir()) == []


def test_retraining_replaces_an_existing_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    train_toy_model(out, model_shape=SHAPE, train={**BUDGET, "steps": 1}, log=lambda _: None)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_the_sparse_twin_has_the_dense_models_active_parameters():
    """A moe toy model is a Mixtral whose active MLP parameters per token (experts_per_token
    experts) equal the dense model's MLP; attention is the same but for Qwen2's biases."""
    from powersampling.toy.model import build_toy_model, toy_model_config

    dense = build_toy_model(toy_model_config(259), seed=0)
    sparse = build_toy_model(toy_model_config(259, architecture="moe"), seed=0)
    assert sparse.config.model_type == "mixtral" and dense.config.model_type == "qwen2"
    mlp = sum(p.numel() for p in dense.model.layers[0].mlp.parameters())
    experts = sparse.model.layers[0].mlp.experts
    per_expert = sum(p.numel() for p in experts.parameters()) / sparse.config.num_local_experts
    assert per_expert * sparse.config.num_experts_per_tok == mlp
    attention = [sum(p.numel() for p in m.model.layers[0].self_attn.parameters())
                 for m in (dense, sparse)]  # fmt: skip
    biases = sum(dense.model.layers[0].self_attn.get_submodule(n).bias.numel()
                 for n in ("q_proj", "k_proj", "v_proj"))  # fmt: skip
    assert attention[0] == attention[1] + biases  # Qwen2's q/k/v biases, Mixtral has none
    with pytest.raises(UserError, match="experts_per_token"):
        toy_model_config(259, architecture="moe", experts_per_token=5)


def test_a_sparse_toy_model_trains_and_loads_as_any_model(tmp_path):
    from powersampling.models import load_model

    shape = {**SHAPE, "architecture": "moe", "num_experts": 3, "experts_per_token": 2}
    out = tmp_path / "moe"
    info = train_toy_model(out, model_shape=shape, train=BUDGET, seed=1, log=lambda _: None)
    assert info["final_loss"] < info["first_loss"]
    model, _ = load_model(str(out), device="cpu", local_files_only=True)
    assert model.config.model_type == "mixtral" and model.config.num_local_experts == 3
