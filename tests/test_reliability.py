"""The temperature-reliability measures: failure taxonomy, calibration, agreement, and the
sampling the engine really does (no shipped generation defaults, deterministic greedy)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from powersampling.reliability import (
    FAILURES,
    agreement,
    annotate,
    equal_mass_ece,
    failure_category,
    lenient_answer,
    reliability_tables,
)


@pytest.mark.parametrize(
    ("text", "finish", "compliant", "only_number", "expected"),
    [
        ("   \n", "eos", False, True, "empty"),
        ("12+5=17; 17-", "length", False, True, "truncated"),
        ("ab ab ab ab ab", "eos", False, True, "repetition"),
        ("I'm sorry, I can't help with that.", "eos", False, True, "refusal"),
        ("3+4=7", "eos", False, True, "reasoning"),
        ("First 3\nthen 7", "eos", False, True, "reasoning"),
        ("seven", "eos", False, True, "no_number"),
        ("The answer is 7.", "eos", False, True, "extra_text"),
        ("8", "eos", True, True, "wrong_number"),
        # could match two rules: the earlier rule wins
        ("", "length", False, True, "empty"),  # empty and truncated
        ("x=1; x=1; x=1; x=1; x=1;", "length", False, True, "truncated"),  # and repetition
        ("so so so so so 4", "eos", False, True, "repetition"),  # and extra text
        ("I cannot: 3+4=7", "eos", False, True, "refusal"),  # and reasoning
        ("1111", "eos", True, True, "wrong_number"),  # digits repeated are a number
        # a worked answer is expected to reason: its wrong format is extra text
        ("3+4=7; #8", "eos", True, False, "wrong_number"),
        ("3+4=7 so 7", "eos", False, False, "extra_text"),
    ],
)
def test_failure_taxonomy_on_hand_written_outputs(text, finish, compliant, only_number, expected):
    assert failure_category(text, finish, compliant=compliant, only_number=only_number) == expected


def test_every_category_is_reachable_and_documented():
    reached = {
        failure_category(t, f, compliant=c, only_number=True)
        for t, f, c in [
            ("", "eos", False), ("1", "length", False), ("abababab", "eos", False),
            ("as an AI I won't", "eos", False), ("1+1", "eos", False), ("no", "eos", False),
            ("it is 2", "eos", False), ("2", "eos", True),
        ]
    }  # fmt: skip
    assert reached == set(FAILURES) and all(FAILURES.values())


def test_lenient_answer_is_the_last_integer():
    assert lenient_answer("3+4=7; #7") == 7
    assert lenient_answer("x is -12.") == -12
    assert lenient_answer("none") is None and lenient_answer(None) is None


def test_ece_of_calibrated_and_miscalibrated_confidence():
    """Calibrated: outcomes drawn with the stated probability; 20,000 of them put ECE far
    below 0.03 (10 bins of 2,000: each bin's accuracy has a standard error under 0.012).
    Miscalibrated: stated 0.2 too high, ECE near 0.2."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.75, 20_000)
    outcome = rng.random(p.size) < p
    ece, bins = equal_mass_ece(p, outcome)
    assert ece < 0.03 and len(bins) == 10 and (bins["n"] == 2000).all()
    over, _ = equal_mass_ece(p + 0.2, outcome)
    assert over == pytest.approx(0.2, abs=0.03)
    # by hand: two bins, confidences 0.9 / 0.1, accuracies 0.5 / 0.5
    ece, _ = equal_mass_ece([0.1, 0.1, 0.9, 0.9], [0, 1, 0, 1], bins=2)
    assert ece == pytest.approx(0.4)


def test_agreement_across_runs():
    runs = pd.DataFrame(
        {
            "problem_id": ["a", "a", "a", "b", "b", "b"],
            "seed": [0, 1, 2, 0, 1, 2],
            "answer": [1, 1, 1, 2, None, 2],
            "text": ["1", "1", " 1", "2", "x", "2"],
        }
    )
    assert agreement(runs, "answer") == 0.5  # b: a missing answer differs from 2
    assert agreement(runs, "text") == 0.0  # a: " 1" is another string
    assert np.isnan(agreement(runs[runs["seed"] == 0], "answer"))  # one run: not measurable


def graded_rows():
    """Two settings of one task: greedy (one run) and T = 1 (two runs), two questions."""
    rows = []
    for method, temperature, seeds, texts in [
        ("greedy", 0.0, [0], {"a": "7", "b": "3"}),
        ("temp_1.0", 1.0, [0, 1], {"a": "The answer is 7", "b": "5"}),
    ]:
        for seed in seeds:
            for pid, text in texts.items():
                reference = {"a": "7", "b": "5"}[pid]
                number = lenient_answer(text)
                rows.append(
                    {
                        "task": "binding", "model": "toy", "method": method, "seed": seed,
                        "problem_id": pid, "completion": text, "reference": reference,
                        "correct": number == int(reference), "compliant": text.isdigit(),
                        "finish_reason": "eos", "n_new_tokens": 2, "logp_sum": -0.2 * (seed + 1),
                        "min_token_logp": -0.15 * (seed + 1), "sampled_logq_sum": 0.0,
                        "temperature": temperature,
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_reliability_tables_by_hand():
    rows = annotate(graded_rows(), {"binding": True})
    assert rows["strict"].tolist() == [True, False, False, True, False, True]
    assert rows["lenient"].tolist() == [True, False, True, True, True, True]
    failures = [None if pd.isna(f) else f for f in rows["failure"]]  # right: no category
    assert failures == [None, "wrong_number", "extra_text", None, "extra_text", None]
    tables = reliability_tables(rows, n_boot=100)
    summary = tables["reliability"].set_index("method")
    assert summary.loc["greedy", "accuracy_strict"] == 0.5
    assert summary.loc["temp_1.0", "accuracy_strict"] == 0.5
    assert summary.loc["temp_1.0", "accuracy_lenient"] == 1.0
    assert summary.loc["temp_1.0", "answer_agreement"] == 1.0
    assert np.isnan(summary.loc["greedy", "answer_agreement"])
    assert summary.loc["temp_1.0", "logp_t1_mean"] == pytest.approx(-0.15)
    failures = tables["failures"].set_index(["method", "category"])
    # rates per generation: greedy 1 of 2, temperature 2 of 4, though 1 and 2 failures
    assert failures.loc[("greedy", "wrong_number"), "rate"] == 0.5
    assert failures.loc[("temp_1.0", "extra_text"), "rate"] == 0.5
    assert failures.groupby("method")["rate"].sum().le(1).all()


# --------------------------------------------------------------------------------------
# What the engine really samples


def test_a_models_shipped_generation_config_is_not_applied(tmp_path):
    """A model whose generation_config.json sets top-k 2, top-p 0.1 and a repetition
    penalty, saved and loaded as any model: temperature 1 samples the full distribution
    (log q equals log p token for token) and draws tokens outside the top 2."""
    from transformers import GenerationConfig

    from powersampling.engine import DecodingEngine
    from powersampling.models import load_model
    from powersampling.samplers import get_sampler
    from powersampling.seeding import torch_generator
    from powersampling.toy.enumerate import random_tiny_model
    from powersampling.toy.tokenizer import build_char_tokenizer

    model = random_tiny_model(8, seed=1, hidden_size=16, init_std=0.05)
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=2, top_p=0.1, repetition_penalty=3.0
    )
    model.save_pretrained(tmp_path)
    loaded, _ = load_model(
        str(tmp_path), device="cpu", local_files_only=True, tokenizer=build_char_tokenizer()
    )
    assert loaded.generation_config.top_k == 2  # shipped, and read
    engine = DecodingEngine(loaded, eos_token_ids=[7], pad_token_id=7)
    sampler = get_sampler({"sampler": "temperature", "T": 1.0, "max_new_tokens": 6}, engine)
    out = sampler.sample([[1, 2]] * 64, torch_generator(0))
    ext = engine.extend([[1, 2]] * 64, 6, temperature=1.0, generator=torch_generator(0))
    for i, rec in enumerate(out):
        assert rec["sampled_logq_sum"] == pytest.approx(rec["logp_sum"])
        assert torch.equal(ext.logq[i], ext.logp[i])
    # outside the top 2 of its step: impossible under the shipped top-k
    ranks = []
    for i in range(64):
        ids = [1, 2] + ext.tokens[i]
        with torch.no_grad():
            logits = loaded(torch.tensor([ids])).logits[0]
        for t, tok in enumerate(ext.tokens[i]):
            ranks.append(int((logits[1 + t] > logits[1 + t, tok]).sum()))
    assert max(ranks) >= 2


def test_sampling_settings_are_recorded_with_every_row():
    from powersampling.engine import DecodingEngine
    from powersampling.generation import sampling_record
    from powersampling.samplers import get_sampler
    from powersampling.toy.enumerate import random_tiny_model

    engine = DecodingEngine(random_tiny_model(6), eos_token_ids=[5], pad_token_id=5)
    sampler = get_sampler({"sampler": "temperature", "T": 0.5, "max_new_tokens": 4}, engine)
    record = json.loads(sampling_record(sampler))
    assert record == {
        "sampler": "temperature", "T": 0.5, "top_k": None, "max_new_tokens": 4,
        "generation_config": "ignored",
    }  # fmt: skip


def test_greedy_is_bit_identical_across_runs_and_seeds():
    from powersampling.engine import DecodingEngine
    from powersampling.samplers import get_sampler
    from powersampling.seeding import torch_generator
    from powersampling.toy.enumerate import random_tiny_model

    engine = DecodingEngine(random_tiny_model(9, seed=2, init_std=0.3), eos_token_ids=[8],
                            pad_token_id=8)  # fmt: skip
    greedy = get_sampler({"sampler": "greedy", "max_new_tokens": 10}, engine)
    prompts = [[1, 2, 3], [4], [5, 6]]
    runs = [greedy.sample(prompts, torch_generator(seed)) for seed in (0, 1, 2, 0)]
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            assert a["completion_ids"] == b["completion_ids"]
            assert a["logp_sum"] == b["logp_sum"]  # bit for bit, not approximately


def test_4bit_loading_says_what_it_needs(tmp_path):
    from powersampling.errors import UserError
    from powersampling.models import load_model
    from powersampling.toy.enumerate import random_tiny_model
    from powersampling.toy.tokenizer import build_char_tokenizer

    random_tiny_model(8).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="4-bit loading needs a CUDA GPU"):
        load_model(str(tmp_path), device="cpu", local_files_only=True,
                   tokenizer=build_char_tokenizer(), quantization="4bit")  # fmt: skip
    with pytest.raises(UserError, match="quantization must be 4bit or null"):
        load_model(str(tmp_path), device="cpu", local_files_only=True,
                   tokenizer=build_char_tokenizer(), quantization="2bit")  # fmt: skip
