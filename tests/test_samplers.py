"""The sampler interface, the registry, and the greedy and temperature samplers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers_models import EOS_ID, PAD_ID, one_torch_thread, tiny_model  # noqa: F401

from powersampling.config import validate_config
from powersampling.engine import DecodingEngine, log_q
from powersampling.errors import UserError
from powersampling.io import GENERATION_SCHEMA
from powersampling.samplers import (
    SAMPLERS,
    Param,
    Sampler,
    completion_record,
    get_sampler,
    sampler_class,
    sampler_names,
)
from powersampling.samplers.basic import GreedySampler, TemperatureSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[3, 4, 5, 6], [7], [8, 9, 10]]
# Fields a sampler reports; the rest of the schema describes the run and the prompt.
RECORD_KEYS = set(GENERATION_SCHEMA.names) - {
    "task", "problem_id", "model", "method", "sampler", "seed", "shard", "chain", "prompt",
    "completion", "n_prompt_tokens", "shard_decode_time_s", "chain_lifetime_s", "sampling",
}  # fmt: skip


@pytest.fixture(scope="module")
def engine():
    return DecodingEngine(tiny_model(seed=1), [EOS_ID], PAD_ID)


def test_registry_builds_the_basic_samplers(engine):
    greedy = get_sampler({"sampler": "greedy", "max_new_tokens": 8}, engine)
    temp = get_sampler(
        {"sampler": "temperature", "T": 0.5, "top_k": None, "max_new_tokens": 8}, engine
    )
    assert isinstance(greedy, GreedySampler) and isinstance(temp, TemperatureSampler)
    assert temp.params == {"T": 0.5, "top_k": None, "max_new_tokens": 8}
    assert (
        get_sampler({"sampler": "temperature", "T": 2, "max_new_tokens": 3}, engine).params["top_k"]
        is None
    )  # default
    assert "power" in SAMPLERS


@pytest.mark.parametrize(
    "method,message",
    [
        ({"sampler": "beam", "max_new_tokens": 8}, "unknown sampler 'beam'"),
        ({"max_new_tokens": 8}, "needs a 'sampler' key"),
        ({"sampler": "greedy", "max_new_tokens": 8, "T": 1.0}, "unknown parameter 'T'"),
        ({"sampler": "greedy"}, "missing parameter 'max_new_tokens'"),
        ({"sampler": "temperature", "max_new_tokens": 8}, "missing parameter 'T'"),
        (
            {"sampler": "temperature", "T": 0, "max_new_tokens": 8},
            "T: 0 is less than or equal to the minimum of 0",
        ),
        (
            {"sampler": "temperature", "T": 1, "top_k": 0, "max_new_tokens": 8},
            "top_k: 0 is less than the minimum of 1",
        ),
        (
            {"sampler": "greedy", "max_new_tokens": 0},
            "max_new_tokens: 0 is less than the minimum of 1",
        ),
    ],
)
def test_bad_methods_are_user_errors(engine, method, message):
    with pytest.raises(UserError, match=message):
        get_sampler(method, engine)


@pytest.mark.parametrize(
    "method",
    [
        {"sampler": "greedy", "max_new_tokens": 8.0},  # an integer must be an int
        {"sampler": "greedy", "max_new_tokens": True},
        {"sampler": "power", "alpha": 4, "stop_at_eos": "yes"},
        {"sampler": "power", "alpha": 4, "mcmc_steps": -1},
        {"sampler": "power", "alpha": 4, "proposal_temperature": 0},
    ],
)
def test_sampler_and_config_reject_the_same_values(engine, method):
    """One parameter spec: building the sampler and validating a config agree."""
    with pytest.raises(UserError):
        get_sampler(method, engine)
    config = {
        "models": {"toy": {"source": "toy"}},
        "tasks": {"t": {"kind": "synthetic", "limit": 2}},
        "methods": {"m": method},
        "experiments": [{"tasks": ["t"], "models": ["toy"], "methods": ["m"]}],
    }
    with pytest.raises(UserError, match="methods.m"):
        validate_config(config, ROOT / "config" / "schema.yaml")


class EchoSampler(Sampler):
    """A sampler defined outside the package: returns the prompt as the completion."""

    name = "echo"
    PARAMS = {
        "repeat": Param({"type": "integer", "minimum": 1}, "Copies of the prompt."),
        "note": Param({"type": "string"}, "Free text.", default=""),
    }

    def sample(self, prompts, generator=None):
        raise NotImplementedError


def test_a_new_sampler_is_one_class_and_one_registry_line(engine, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "echo", "test_samplers:EchoSampler")
    assert get_sampler({"sampler": "echo", "repeat": 2}, engine).params == {
        "repeat": 2,
        "note": "",
    }
    config = {
        "models": {"toy": {"source": "toy"}},
        "tasks": {"t": {"kind": "synthetic", "limit": 2}},
        "methods": {"ok": {"sampler": "echo", "repeat": 1}, "bad": {"sampler": "echo"}},
        "experiments": [{"tasks": ["t"], "models": ["toy"], "methods": ["ok"]}],
    }
    with pytest.raises(UserError, match="methods.bad: 'repeat' is a required property"):
        validate_config(config, ROOT / "config" / "schema.yaml")
    del config["methods"]["bad"]
    validated = validate_config(config, ROOT / "config" / "schema.yaml")
    assert validated["methods"]["ok"] == {"sampler": "echo", "repeat": 1}  # defaults: at run time


@pytest.mark.parametrize("name", sampler_names())
def test_every_parameter_is_described_and_its_default_is_valid(engine, name):
    cls = sampler_class(name)
    for key, param in cls.PARAMS.items():
        assert param.description, f"{name}.{key} has no description"
    # 1 fits every schema here but an enum's, which gets its first value
    required = {k: p.schema.get("enum", [1])[0] for k, p in cls.PARAMS.items() if p.required}
    sampler = cls(engine, **required)
    assert set(sampler.params) == set(cls.PARAMS)


def test_missing_sampler_module_is_a_user_error(engine, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "ghost", "powersampling.samplers.no_such_module:Ghost")
    with pytest.raises(UserError, match="sampler 'ghost' is not available"):
        get_sampler({"sampler": "ghost"}, engine)


def test_greedy_records_are_consistent_with_the_engine(engine):
    records = GreedySampler(engine, max_new_tokens=10).sample(PROMPTS, torch.Generator())
    ext = engine.extend(PROMPTS, 10, greedy=True)
    assert len(records) == len(PROMPTS)
    for i, rec in enumerate(records):
        assert set(rec) == RECORD_KEYS
        assert rec["completion_ids"] == ext.tokens[i]
        assert rec["n_new_tokens"] == len(ext.tokens[i]) == rec["tokens_decoded"]
        assert rec["tokens_prefilled"] == len(PROMPTS[i])
        assert rec["finish_reason"] == ext.finish_reason[i]
        assert rec["logp_sum"] == pytest.approx(float(ext.logp[i].sum()))
        assert rec["perplexity"] == pytest.approx(math.exp(-rec["logp_sum"] / rec["n_new_tokens"]))
        assert rec["mean_entropy"] == pytest.approx(float(ext.entropy[i].mean()))
        assert rec["self_confidence"] == pytest.approx(float(ext.top1[i].mean()))
        assert rec["temperature"] == 0.0
        assert rec["acceptance_rate"] is None and rec["proposals"] is None
        assert rec["sampler_trace"] is None
        assert rec["token_budget"] == 10


def test_temperature_sampler_is_seeded(engine):
    sampler = TemperatureSampler(engine, T=1.3, top_k=5, max_new_tokens=12)
    a = sampler.sample(PROMPTS, torch.Generator().manual_seed(0))
    b = sampler.sample(PROMPTS, torch.Generator().manual_seed(0))
    c = sampler.sample(PROMPTS, torch.Generator().manual_seed(1))
    assert [r["completion_ids"] for r in a] == [r["completion_ids"] for r in b]
    assert [r["completion_ids"] for r in a] != [r["completion_ids"] for r in c]
    assert all(r["temperature"] == 1.3 for r in a)
    for r in a:  # EOS, when produced, is the last token and counted
        if r["finish_reason"] == "eos":
            assert r["completion_ids"][-1] == EOS_ID
        else:
            assert r["n_new_tokens"] == 12


@pytest.mark.parametrize("name", ["greedy", "temperature"])
def test_per_row_budgets(engine, name):
    """Each row gets its own budget (e.g. less room left in the model's context), and every
    record says which budget it had."""
    method = {"sampler": name, "max_new_tokens": 9} | ({"T": 1.0} if name == "temperature" else {})
    sampler = get_sampler(method, engine)
    budgets = [2, 9, 5]
    records = sampler.sample(PROMPTS, torch.Generator().manual_seed(0), budgets=budgets)
    ext = engine.extend(
        PROMPTS, budgets, greedy=name == "greedy", generator=torch.Generator().manual_seed(0)
    )
    for rec, budget, tokens in zip(records, budgets, ext.tokens, strict=True):
        assert rec["token_budget"] == budget and rec["completion_ids"] == tokens
        assert rec["n_new_tokens"] <= budget
        assert rec["finish_reason"] == "eos" or rec["n_new_tokens"] == budget
    default = sampler.sample(PROMPTS, torch.Generator().manual_seed(0))
    assert [r["token_budget"] for r in default] == [9, 9, 9]


@pytest.mark.parametrize(
    "budgets,message",
    [
        ([4, 4], "2 token budgets for 3 prompts"),
        ([4, 0, 4], "row 1: token budget 0 is outside 1..9"),
        ([4, 10, 4], "row 1: token budget 10 is outside 1..9"),
        ([4, 4, 2.0], "row 2: the token budget must be an integer"),
        ([True, 4, 4], "row 0: the token budget must be an integer"),
    ],
)
def test_bad_budgets_are_user_errors(engine, budgets, message):
    sampler = GreedySampler(engine, max_new_tokens=9)
    with pytest.raises(UserError, match=message):
        sampler.sample(PROMPTS, None, budgets=budgets)


def test_temperature_top_k_restricts_the_support(engine):
    """top_k: tokens outside the k most likely never appear, and the draws follow q on the
    truncated distribution (the engine's extend with that top_k, same generator)."""
    prompts = [[3, 4, 5]] * 400
    logits = engine.model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
    top3 = set(logits.topk(3).indices.tolist())
    sampler = TemperatureSampler(engine, T=3.0, top_k=3, max_new_tokens=1)
    records = sampler.sample(prompts, torch.Generator().manual_seed(0))
    drawn = {r["completion_ids"][0] for r in records}
    assert drawn == top3
    ext = engine.extend(
        prompts, 1, temperature=3.0, top_k=3, generator=torch.Generator().manual_seed(0)
    )
    assert [r["completion_ids"] for r in records] == ext.tokens
    want = log_q(logits[None], 3.0, 3)[0].double()  # log q over the truncated distribution
    for r, lq in zip(records, ext.logq, strict=True):
        torch.testing.assert_close(lq, want[r["completion_ids"]], atol=1e-5, rtol=1e-5)
    # without top_k the same temperature reaches beyond the top 3 (so the check has power)
    full = TemperatureSampler(engine, T=3.0, max_new_tokens=1)
    wide = {r["completion_ids"][0] for r in full.sample(prompts, torch.Generator().manual_seed(0))}
    assert wide - top3


def test_empty_completion_record_has_nan_means():
    empty = torch.zeros(0, dtype=torch.float64)
    rec = completion_record(
        [], empty, empty, empty, "length",
        temperature=1.0, tokens_decoded=0, tokens_prefilled=3, token_budget=5,
    )  # fmt: skip
    assert rec["n_new_tokens"] == 0 and rec["logp_sum"] == 0.0
    assert math.isnan(rec["perplexity"]) and math.isnan(rec["mean_entropy"])


def test_sampler_is_abstract(engine):
    with pytest.raises(TypeError):
        Sampler(engine)
