"""PowerSampler: parameters, records, bookkeeping, reproducibility (exactness: separate file)."""

import math

import numpy as np
import pytest
import torch

from powersampling.engine import DecodingEngine, RollingDecoder
from powersampling.errors import UserError
from powersampling.samplers import get_sampler
from powersampling.samplers.power import PowerSampler, block_caps, log_acceptance
from powersampling.seeding import torch_generator
from powersampling.toy.enumerate import random_tiny_model

EOS = 5


@pytest.fixture(scope="module")
def engine():
    model = random_tiny_model(6, seed=1, init_std=0.2, hidden_size=32)
    return DecodingEngine(model, eos_token_ids=[EOS], pad_token_id=EOS)


@pytest.fixture(scope="module")
def no_eos_engine():
    """A model that can never emit EOS (its logit is pushed to -1e4 by a bias)."""
    model = random_tiny_model(6, seed=2, init_std=0.2, hidden_size=32)
    head = torch.nn.Linear(32, 6, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = -1e4
    model.lm_head = head
    return DecodingEngine(model, eos_token_ids=[EOS], pad_token_id=EOS)


PROMPTS = [[0, 1, 2], [3], [4, 4, 0, 1], [2, 2]]


def test_block_caps():
    assert block_caps(192, 3072) == [192 * k for k in range(1, 17)]
    assert block_caps(4, 10) == [4, 8, 10]
    assert block_caps(16, 5) == [5]


def test_defaults_and_registry(engine):
    sampler = get_sampler({"sampler": "power", "alpha": 2.0}, engine)
    assert isinstance(sampler, PowerSampler)
    assert sampler.params["proposal_temperature"] == 0.5
    assert sampler.params["block_size"] == 192 and sampler.params["mcmc_steps"] == 10
    assert PowerSampler(engine, alpha=4.0, proposal_temperature=1.0).temperature == 1.0


@pytest.mark.parametrize(
    "params",
    [
        {"alpha": 0},
        {"alpha": "4"},
        {"block_size": 0},
        {"max_new_tokens": 2.5},
        {"mcmc_steps": -1},
        {"mcmc_steps": True},
        {"proposal_temperature": -1.0},
        {"proposal_top_k": 0},
        {"greedy_accept": "yes"},
        {"stop_at_eos": 1},
        {"chains": 4},
    ],
)
def test_bad_params_are_user_errors(engine, params):
    with pytest.raises(UserError):
        PowerSampler(engine, **params)


def test_log_acceptance_by_hand():
    cur_p, cur_q = np.array([-1.0, -2.0]), np.array([-0.5, -0.5])
    prop_p, prop_q = np.array([-0.5]), np.array([-0.1])
    # α(-0.5 - -3) + (-1) - (-0.1) + log 4 - log 3
    expected = 2.0 * 2.5 - 1.0 + 0.1 + math.log(4) - math.log(3)
    assert log_acceptance(2.0, cur_p, cur_q, prop_p, prop_q, 4, 3) == pytest.approx(expected)


def test_records_are_consistent(engine):
    sampler = PowerSampler(engine, alpha=3.0, block_size=3, max_new_tokens=10, mcmc_steps=4)
    out = sampler.sample(PROMPTS * 8, torch_generator(0))
    assert len(out) == 32
    completions = [o["completion_ids"] for o in out]
    logp, _ = engine.score(PROMPTS * 8, completions)
    for k, (o, lp, prompt) in enumerate(zip(out, logp, PROMPTS * 8, strict=True)):
        n = len(o["completion_ids"])
        assert o["n_new_tokens"] == n and 1 <= n <= 10
        assert o["logp_sum"] == pytest.approx(float(lp.sum()), abs=1e-4)
        assert o["perplexity"] == pytest.approx(math.exp(-o["logp_sum"] / n))
        assert 0 < o["self_confidence"] <= 1 and o["mean_entropy"] >= 0
        assert o["temperature"] == pytest.approx(1 / 3)
        assert (o["finish_reason"] == "eos") == (o["completion_ids"][-1] == EOS)
        assert EOS not in o["completion_ids"][:-1]
        trace = o["sampler_trace"]
        blocks = len(trace)
        # a chain stops after the first block that ends with EOS, or at the last block
        assert [b["block"] for b in trace] == list(range(blocks))
        assert o["finish_reason"] == "eos" or blocks == 4
        assert all(b["length"] == [3, 6, 9, 10][b["block"]] for b in trace[:-1])
        assert trace[-1]["length"] == n and trace[-1]["logp"] == pytest.approx(o["logp_sum"])
        assert o["proposals"] == 4 * blocks
        assert o["acceptance_rate"] == pytest.approx(
            sum(b["accepted"] for b in trace) / o["proposals"]
        )
        assert o["tokens_decoded"] >= n
        # Each distinct prompt is encoded once (all but its last token, counted for its first
        # chain); every proposal (extensions included) then feeds one known token.
        prompt_cost = len(prompt) - 1 if k < len(PROMPTS) else 0
        assert o["tokens_prefilled"] == prompt_cost + o["proposals"] + blocks
        assert o["token_budget"] == 10
        assert o["chain_lifetime_s"] >= 0


def test_same_seed_same_output_and_different_seed_differs(engine):
    sampler = PowerSampler(engine, alpha=2.0, block_size=4, max_new_tokens=12, mcmc_steps=3)
    a = sampler.sample(PROMPTS * 4, torch_generator(7))
    b = sampler.sample(PROMPTS * 4, torch_generator(7))
    c = sampler.sample(PROMPTS * 4, torch_generator(8))
    key = ["completion_ids", "logp_sum", "acceptance_rate", "tokens_decoded", "sampler_trace"]
    assert [[o[k] for k in key] for o in a] == [[o[k] for k in key] for o in b]
    assert [o["completion_ids"] for o in a] != [o["completion_ids"] for o in c]


def test_a_chain_depends_on_its_seed_not_on_the_other_chains(engine):
    """Each chain draws from its own stream: alone, among others, in another order or
    through a smaller batch, a chain with the same prompt and seed gives the same answer
    (log p equal up to the float rounding of another batch layout)."""
    sampler = PowerSampler(engine, alpha=2.0, block_size=4, max_new_tokens=12, mcmc_steps=3)
    prompts = PROMPTS * 3
    seeds = list(range(100, 100 + len(prompts)))

    def chains(out):
        exact = [(o["completion_ids"], o["acceptance_rate"], o["tokens_decoded"]) for o in out]
        return exact, [o["logp_sum"] for o in out]

    together, logp = chains(sampler.sample(prompts, None, chain_seeds=seeds))
    for j in [0, 5, 11]:
        alone, alone_logp = chains(sampler.sample([prompts[j]], None, chain_seeds=[seeds[j]]))
        assert alone == [together[j]] and alone_logp == pytest.approx([logp[j]], rel=1e-5)
    order = list(reversed(range(len(prompts))))
    reordered, _ = chains(
        sampler.sample([prompts[j] for j in order], None, chain_seeds=[seeds[j] for j in order])
    )
    assert reordered[::-1] == together
    small = PowerSampler(
        DecodingEngine(engine.model, eos_token_ids=[EOS], pad_token_id=EOS, max_batch_size=2),
        alpha=2.0, block_size=4, max_new_tokens=12, mcmc_steps=3,
    )  # fmt: skip
    assert chains(small.sample(prompts, None, chain_seeds=seeds))[0] == together
    # another seed, another chain; a wrong number of seeds is refused
    many = PROMPTS * 4
    other = sampler.sample(many, None, chain_seeds=list(range(16)))
    pairs = {(tuple(p), tuple(o["completion_ids"])) for p, o in zip(many, other, strict=True)}
    assert len(pairs) > len(PROMPTS)  # some prompt got different answers from its seeds
    with pytest.raises(UserError, match="3 chain seeds for 2 prompts"):
        sampler.sample(PROMPTS[:2], None, chain_seeds=[1, 2, 3])


def test_length_cap_without_eos(no_eos_engine):
    sampler = PowerSampler(no_eos_engine, alpha=4.0, block_size=4, max_new_tokens=10, mcmc_steps=2)
    out = sampler.sample(PROMPTS, torch_generator(0))
    for o in out:
        assert o["finish_reason"] == "length" and o["n_new_tokens"] == 10
        assert [b["length"] for b in o["sampler_trace"]] == [4, 8, 10]
        assert o["proposals"] == 6


def test_zero_steps_is_plain_blockwise_sampling(engine):
    sampler = PowerSampler(engine, alpha=2.0, block_size=5, max_new_tokens=10, mcmc_steps=0)
    out = sampler.sample(PROMPTS, torch_generator(0))
    for o, prompt in zip(out, PROMPTS, strict=True):
        assert o["proposals"] == 0 and o["acceptance_rate"] is None
        assert o["tokens_decoded"] == o["n_new_tokens"]
        assert o["tokens_prefilled"] == len(prompt) - 1 + len(o["sampler_trace"])


def test_greedy_accept_never_lowers_the_likelihood(no_eos_engine):
    """With greedy acceptance the block's log p after its steps is at least the extension's."""
    greedy = PowerSampler(
        no_eos_engine, alpha=4.0, block_size=6, max_new_tokens=6, mcmc_steps=8, greedy_accept=True
    )
    plain = PowerSampler(no_eos_engine, alpha=4.0, block_size=6, max_new_tokens=6, mcmc_steps=0)
    g = greedy.sample(PROMPTS * 16, torch_generator(3))
    p = plain.sample(PROMPTS * 16, torch_generator(3))
    # same generator state → the same first extension; the MH steps can only go up
    for og, op in zip(g, p, strict=True):
        assert og["logp_sum"] >= op["logp_sum"] - 1e-9


def test_empty_prompt_list(engine):
    assert PowerSampler(engine).sample([], torch_generator(0)) == []


def test_chains_queue_for_a_small_batch(engine):
    """With max_batch_size 3, chains wait for a batch row; results stay consistent."""
    small = DecodingEngine(engine.model, eos_token_ids=[EOS], pad_token_id=EOS, max_batch_size=3)
    sizes = []
    hook = small.model.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        sampler = PowerSampler(small, alpha=2.0, block_size=4, max_new_tokens=8, mcmc_steps=3)
        a = sampler.sample(PROMPTS * 3, torch_generator(5))
        b = sampler.sample(PROMPTS * 3, torch_generator(5))
    finally:
        hook.remove()
    assert max(sizes) == 3
    assert [o["completion_ids"] for o in a] == [o["completion_ids"] for o in b]
    logp, _ = engine.score(PROMPTS * 3, [o["completion_ids"] for o in a])
    for o, lp in zip(a, logp, strict=True):
        assert o["logp_sum"] == pytest.approx(float(lp.sum()), abs=1e-4)
        assert o["proposals"] == 3 * len(o["sampler_trace"])


def test_per_row_budgets_cap_each_chain(no_eos_engine, monkeypatch):
    """Each chain grows in blocks up to its own budget; the rolling batch is sized for the
    longest prompt + its own budget, not the longest prompt + max_new_tokens."""
    max_lens = []
    init = RollingDecoder.__init__

    def spy(self, *args, **kwargs):
        max_lens.append(kwargs["max_len"])
        init(self, *args, **kwargs)

    monkeypatch.setattr(RollingDecoder, "__init__", spy)
    sampler = PowerSampler(no_eos_engine, alpha=4.0, block_size=4, max_new_tokens=10, mcmc_steps=2)
    budgets = [3, 10, 5, 8]  # prompts of 3, 1, 4, 2 tokens
    out = sampler.sample(PROMPTS, torch_generator(0), budgets=budgets)
    assert max_lens == [max(len(p) + b for p, b in zip(PROMPTS, budgets, strict=True))] == [11]
    for o, budget in zip(out, budgets, strict=True):
        assert o["token_budget"] == budget and o["n_new_tokens"] == budget  # no EOS possible
        assert [b["length"] for b in o["sampler_trace"]] == block_caps(4, budget)
        assert o["proposals"] == 2 * len(block_caps(4, budget))
    default = sampler.sample(PROMPTS, torch_generator(0))
    assert [o["token_budget"] for o in default] == [10] * 4
    with pytest.raises(UserError, match="token budget 11 is outside 1..10"):
        sampler.sample(PROMPTS, torch_generator(0), budgets=[3, 11, 5, 8])


def test_chains_store_only_their_answers_cache(engine, monkeypatch):
    """A proposal's prefix is the prompt's cache (one tensor shared by the prompt's chains)
    then the first ``cut`` columns of the chain's own answer cache; what a chain keeps after
    an extension or an accepted proposal is its answer's cache (one column per answer
    token), never a copy of the prompt's."""
    adds, kept = [], {}
    add, kv = RollingDecoder.add, RollingDecoder.kv

    def spy_add(self, pieces, token, budget, tag, stream=None):
        adds.append((tag, list(pieces)))
        add(self, pieces, token, budget, tag, stream)

    def spy_kv(self, row, skip=0):
        out = kv(self, row, skip)
        kept[row.tag] = (skip, out.shape[-2])
        return out

    monkeypatch.setattr(RollingDecoder, "add", spy_add)
    monkeypatch.setattr(RollingDecoder, "kv", spy_kv)
    sampler = PowerSampler(engine, alpha=2.0, block_size=4, max_new_tokens=8, mcmc_steps=3)
    prompts = PROMPTS * 3  # three chains per prompt
    out = sampler.sample(prompts, torch_generator(1))
    first_piece = {}
    for tag, pieces in adds:
        prompt = prompts[tag]
        assert pieces[0].shape[-2] == len(prompt) - 1
        first_piece.setdefault(tuple(prompt), pieces[0].data_ptr())
        assert pieces[0].data_ptr() == first_piece[tuple(prompt)]  # shared, never copied
        assert len(pieces) <= 2
    for j, o in enumerate(out):
        # the chain's final state came from its last kept cache: one column per token
        assert kept[j] == (len(prompts[j]) - 1, o["n_new_tokens"])


def test_host_kv_store_gives_the_same_chains(engine):
    """kv_store="host" only moves the stored caches (pinned host memory on CUDA); the
    chains are the same."""
    sampler = PowerSampler(engine, alpha=2.0, block_size=4, max_new_tokens=8, mcmc_steps=3)
    assert sampler.kv_store == "device"
    a = sampler.sample(PROMPTS * 2, torch_generator(3))
    sampler.kv_store = "host"
    b = sampler.sample(PROMPTS * 2, torch_generator(3))
    key = ["completion_ids", "logp_sum", "acceptance_rate", "sampler_trace"]
    assert [[o[k] for k in key] for o in a] == [[o[k] for k in key] for o in b]
    sampler.kv_store = "nowhere"
    with pytest.raises(UserError, match="kv_store must be one of"):
        sampler.sample(PROMPTS, torch_generator(3))
