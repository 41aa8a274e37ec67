"""The sampler interface, the registry, and the greedy and temperature samplers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_models import EOS_ID, PAD_ID, one_torch_thread, tiny_model  # noqa: F401

from powersampling.engine import DecodingEngine
from powersampling.errors import UserError
from powersampling.io import GENERATION_SCHEMA
from powersampling.samplers import _REGISTRY, Sampler, completion_record, get_sampler
from powersampling.samplers.basic import GreedySampler, TemperatureSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = [[3, 4, 5, 6], [7], [8, 9, 10]]
# Fields a sampler reports; the rest of the schema describes the run and the prompt.
RECORD_KEYS = set(GENERATION_SCHEMA.names) - {
    "task", "problem_id", "model", "method", "sampler", "seed", "shard", "chain", "prompt",
    "completion", "n_prompt_tokens", "wall_time_s",
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
    assert "power" in _REGISTRY


@pytest.mark.parametrize(
    "method,message",
    [
        ({"sampler": "beam", "max_new_tokens": 8}, "unknown sampler 'beam'"),
        ({"max_new_tokens": 8}, "needs a 'sampler' key"),
        ({"sampler": "greedy", "max_new_tokens": 8, "T": 1.0}, "unknown parameter 'T'"),
        ({"sampler": "greedy"}, "missing parameter 'max_new_tokens'"),
        ({"sampler": "temperature", "max_new_tokens": 8}, "missing parameter 'T'"),
        ({"sampler": "temperature", "T": 0, "max_new_tokens": 8}, "T must be a number > 0"),
        ({"sampler": "temperature", "T": 1, "top_k": 0, "max_new_tokens": 8}, "top_k must be"),
        ({"sampler": "greedy", "max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ],
)
def test_bad_methods_are_user_errors(engine, method, message):
    with pytest.raises(UserError, match=message):
        get_sampler(method, engine)


def test_missing_sampler_module_is_a_user_error(engine, monkeypatch):
    monkeypatch.setitem(_REGISTRY, "ghost", "powersampling.samplers.no_such_module:Ghost")
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
        assert rec["block_trace"] is None


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


def test_empty_completion_record_has_nan_means():
    empty = torch.zeros(0, dtype=torch.float64)
    rec = completion_record(
        [], empty, empty, empty, "length", temperature=1.0, tokens_decoded=0, tokens_prefilled=3
    )
    assert rec["n_new_tokens"] == 0 and rec["logp_sum"] == 0.0
    assert math.isnan(rec["perplexity"]) and math.isnan(rec["mean_entropy"])


def test_sampler_is_abstract(engine):
    with pytest.raises(TypeError):
        Sampler(engine)
