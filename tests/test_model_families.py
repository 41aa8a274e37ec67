"""Both engines, the power sampler and SMC on every model family the project names.

Tiny random models (built in-process, seeded) of Qwen2, Llama, Phi-3, OPT, the
mixture-of-experts Qwen2-MoE, Qwen3-MoE, Mixtral and OLMoE, and the ALiBi models BLOOM and
Falcon (``alibi=True``): greedy decoding through the rolling decoder and the static engine
must equal argmax decoding with plain uncached forward passes, and power sampling and SMC
(resampling at every step, so KV caches are copied between rows) must run and return
well-formed records. ALiBi models build their biases from a 2D mask, which the buffer
decoders (rolling, SMC's particles) cannot pass: those refuse them before any forward, with
a message naming the model type, while the static engine decodes them through a
DynamicCache. Also: Phi-3's LongRoPE switch and finished rows, sliding-window models
refused, and no deprecated cache argument (a FutureWarning fails every test here).
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
import transformers as tf
from helpers_models import one_torch_thread  # noqa: F401

from powersampling.engine import DecodingEngine, RollingDecoder
from powersampling.errors import UserError
from powersampling.samplers.power import PowerSampler
from powersampling.samplers.smc import SMCSampler
from powersampling.seeding import torch_generator

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("error::FutureWarning"),
]

VOCAB, EOS, PAD = 24, 1, 0
PREFIXES = [[3, 4, 5, 6, 7], [8], [9, 10, 3]]
BUDGETS = [8, 10, 6]
LATE = {2: [([11, 12, 13, 14], 9, "late-a")], 5: [([15, 3], 7, "late-b")]}  # join after step k


def family_config(family: str, **extra):
    """A config of about ten thousand parameters: 2 layers, width 16, 2 heads of 8."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        initializer_range=0.4,  # peaked distributions: well-separated greedy choices
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    common.update(extra)
    moe = dict(num_experts_per_tok=2, num_key_value_heads=1)
    configs = {
        "qwen2": lambda: tf.Qwen2Config(intermediate_size=32, num_key_value_heads=1, **common),
        "llama": lambda: tf.LlamaConfig(intermediate_size=32, num_key_value_heads=1, **common),
        "phi3": lambda: tf.Phi3Config(intermediate_size=32, num_key_value_heads=1, **common),
        "opt": lambda: tf.OPTConfig(
            ffn_dim=32,
            word_embed_proj_dim=16,
            init_std=0.4,
            **{k: v for k, v in common.items() if k != "initializer_range"},
        ),
        "qwen2moe": lambda: tf.Qwen2MoeConfig(
            intermediate_size=32,
            moe_intermediate_size=8,
            shared_expert_intermediate_size=16,
            num_experts=4,
            **moe,
            **common,
        ),
        "qwen3moe": lambda: tf.Qwen3MoeConfig(
            intermediate_size=32,
            moe_intermediate_size=8,
            num_experts=4,
            head_dim=8,
            **moe,
            **common,
        ),
        "mixtral": lambda: tf.MixtralConfig(
            intermediate_size=16, num_local_experts=4, **moe, **common
        ),
        "olmoe": lambda: tf.OlmoeConfig(intermediate_size=8, num_experts=4, **moe, **common),
        "bloom": lambda: tf.BloomConfig(**common),  # ALiBi, eager attention
        "falcon-alibi": lambda: tf.FalconConfig(
            alibi=True, new_decoder_architecture=False, parallel_attn=True, **common
        ),  # ALiBi, sdpa attention
    }
    return configs[family]()


MODEL_CLASSES = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "opt": "OPTForCausalLM",
    "qwen2moe": "Qwen2MoeForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "bloom": "BloomForCausalLM",
    "falcon-alibi": "FalconForCausalLM",
}
# ALiBi families: the static engine decodes them, the buffer decoders refuse them.
ALIBI_FAMILIES = ["bloom", "falcon-alibi"]
# The families every part of the project supports; truncation, logit-lens and patching tests
# parametrize over them too.
FAMILIES = [family for family in MODEL_CLASSES if family not in ALIBI_FAMILIES]


def build(family: str, seed: int = 0, config=None):
    config = config if config is not None else family_config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(tf, MODEL_CLASSES[family])(config).eval()


@pytest.fixture(scope="module", params=FAMILIES + ALIBI_FAMILIES)
def model(request):
    return build(request.param)


@contextlib.contextmanager
def buffer_decoding(model):
    """Nothing for a model the buffer decoders serve; for an ALiBi model, expect the
    UserError that names its type and why, raised before any forward pass."""
    if not (model.config.model_type == "bloom" or getattr(model.config, "alibi", False)):
        yield
        return
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with pytest.raises(UserError, match=f"{model.config.model_type} models add ALiBi"):
            yield
    finally:
        handle.remove()
    assert not forwards  # refused before the prefill


def engine_for(model, eos=(EOS,)):
    return DecodingEngine(model, list(eos), PAD)


def check_argmax_decoding(model, prefix, tokens, logp, finish_reason, budget):
    """``tokens`` are what argmax decoding with uncached full forward passes gives, and
    ``logp`` their log-probabilities: one forward over prefix + tokens checks every step."""
    assert 1 <= len(tokens) <= budget
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prefix + tokens]), use_cache=False).logits[0]
    ref = torch.log_softmax(logits.float(), -1)[len(prefix) - 1 : -1].double()  # [n, V]
    chosen = ref.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    # Each token is a maximum of its step's distribution (up to float rounding: ties between
    # random logits closer than 1e-5 would be a coin flip, and never happen with these seeds).
    assert torch.all(chosen >= ref.max(-1).values - 1e-5), (tokens, ref.argmax(-1).tolist())
    torch.testing.assert_close(logp, chosen, atol=2e-5, rtol=1e-5)
    assert EOS not in tokens[:-1]
    assert finish_reason == ("eos" if tokens[-1] == EOS else "length")
    if finish_reason == "length":
        assert len(tokens) == budget


def roll(decoder, rows, late=None):
    """Queue ``rows`` (prefix, budget, tag); more rows join after step k; step to the end."""
    late = dict(late or {})

    def add(prefix, budget, tag):
        decoder.add(decoder.prefill([prefix[:-1]])[0], prefix[-1], budget, tag)

    for row in rows:
        add(*row)
    done, k = {}, 0
    while decoder.has_work or late:
        for row in decoder.step():
            done[row.tag] = row
        k += 1
        for row in late.pop(k, []):
            add(*row)
    return done


def test_rolling_decoder_greedy_is_uncached_argmax_decoding(model):
    with buffer_decoding(model):
        check_rolling_greedy(model)


def check_rolling_greedy(model):
    """Rows join at different times, wait for slots, run beside other paddings; each decodes
    as uncached argmax decoding of ``model`` would."""
    decoder = RollingDecoder(engine_for(model), slots=2, max_len=20, greedy=True)
    rows = [(p, b, i) for i, (p, b) in enumerate(zip(PREFIXES, BUDGETS, strict=True))]
    done = roll(decoder, rows, LATE)
    want = rows + [row for joined in LATE.values() for row in joined]
    assert set(done) == {tag for _, _, tag in want}
    for prefix, budget, tag in want:
        row = done[tag]
        check_argmax_decoding(model, prefix, row.tokens, row.stats.logp, row.finish_reason, budget)


def test_static_engine_greedy_is_uncached_argmax_decoding(model):
    check_static_greedy(model)


def check_static_greedy(model):
    """The static engine's greedy rows are uncached argmax decoding of ``model``."""
    prefixes = PREFIXES + [p for joined in LATE.values() for p, _, _ in joined]
    budgets = BUDGETS + [b for joined in LATE.values() for _, b, _ in joined]
    ext = engine_for(model).extend(prefixes, budgets, greedy=True)
    for i, (prefix, budget) in enumerate(zip(prefixes, budgets, strict=True)):
        check_argmax_decoding(
            model, prefix, ext.tokens[i], ext.logp[i], ext.finish_reason[i], budget
        )


def test_power_sampling_runs_and_records_are_well_formed(model):
    with buffer_decoding(model):
        check_power_sampling(model)


def check_power_sampling(model):
    """Power sampling runs on ``model`` and its records are well formed (log p rescored)."""
    engine = engine_for(model)
    sampler = PowerSampler(engine, alpha=2.0, block_size=3, max_new_tokens=7, mcmc_steps=2)
    prompts = PREFIXES * 2
    out = sampler.sample(prompts, torch_generator(0), budgets=[7, 5, 7, 4, 7, 6])
    logp, _ = engine.score(prompts, [o["completion_ids"] for o in out])
    for o, lp, budget in zip(out, logp, [7, 5, 7, 4, 7, 6], strict=True):
        n = o["n_new_tokens"]
        assert o["token_budget"] == budget and 1 <= n <= budget
        assert o["completion_ids"] and min(o["completion_ids"]) >= 0
        assert (o["finish_reason"] == "eos") == (o["completion_ids"][-1] == EOS)
        assert o["finish_reason"] == "eos" or n == budget
        assert o["logp_sum"] == pytest.approx(float(lp.sum()), abs=1e-4)
        assert o["proposals"] == 2 * len(o["sampler_trace"])


def test_smc_runs_and_records_are_well_formed(model):
    with buffer_decoding(model):
        check_smc_sampling(model)


def check_smc_sampling(model):
    """SMC runs on ``model``, resampling at every step; each answer is rescored exactly."""
    engine = engine_for(model)
    sampler = SMCSampler(engine, alpha=2.0, particles=4, ess_threshold=1.0, max_new_tokens=7)
    prompts = PREFIXES * 2
    budgets = [7, 5, 7, 4, 7, 6]
    swarms = sampler.sample_swarms(prompts, budgets=budgets, chain_seeds=list(range(6)))
    out = [s.record for s in swarms]
    logp, _ = engine.score(prompts, [o["completion_ids"] for o in out])
    for o, lp, budget in zip(out, logp, budgets, strict=True):
        n = o["n_new_tokens"]
        assert o["token_budget"] == budget and 1 <= n <= budget
        assert (o["finish_reason"] == "eos") == (o["completion_ids"][-1] == EOS)
        assert o["finish_reason"] == "eos" or n == budget
        assert o["logp_sum"] == pytest.approx(float(lp.sum()), abs=1e-4)
    assert sum(s.resamples for s in swarms) > 0


def test_no_deprecated_cache_argument_or_attribute(caplog):
    """Neither engine passes ``past_key_values`` to a model that takes ``cache`` (a
    FutureWarning, an error here) nor reads it back from the output (a logged warning,
    issued once per process: the once-cache is cleared first)."""
    from transformers.utils import logging as tf_logging

    if hasattr(tf_logging.warning_once, "cache_clear"):
        tf_logging.warning_once.cache_clear()
    model = build("llama")
    engine = engine_for(model)
    with caplog.at_level(logging.WARNING):
        engine.extend(PREFIXES, 4, greedy=True)
        decoder = RollingDecoder(engine, slots=2, max_len=16, greedy=True)
        roll(decoder, [(p, 4, i) for i, p in enumerate(PREFIXES)])
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


# ---------------------------------------------------------------------- Phi-3 LongRoPE


def longrope_phi3():
    """Phi-3 with LongRoPE switching to its long factors once a position passes 7."""
    config = family_config("phi3")
    config.original_max_position_embeddings = 8
    config.rope_parameters = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 1.0,
        "original_max_position_embeddings": 8,
        "short_factor": [1.0, 1.0, 1.0, 1.0],
        "long_factor": [3.0, 5.0, 9.0, 17.0],
    }
    return build("phi3", seed=1, config=config)


def test_phi3_longrope_switch_is_live_and_finished_rows_leave_it():
    """Three long rows (positions up to 24, past the switch) end together; then two short
    rows (positions below 8) decode beside the three freed slots. They must get the
    log-probs they get alone: a free slot's old position must not flip the batch to the
    long factors."""
    model = longrope_phi3()
    engine = engine_for(model, eos=())
    # The switch is real: scoring a short continuation inside a long batch changes it.
    short, cont = [3, 4, 5], [6, 7, 8]
    alone, _ = engine.score([short], [cont])
    mixed, _ = engine.score([short, [9] * 20], [cont, [3]])
    assert (alone[0] - mixed[0]).abs().max() > 1e-3

    long_rows = [([3 + k, 4, 5, 6, 7], 20, f"long{k}") for k in range(3)]
    short_rows = [([8, 9, 10], 4, "s0"), ([11, 12], 5, "s1")]
    decoder = RollingDecoder(engine, slots=3, max_len=26, greedy=True)
    first = roll(decoder, long_rows)
    assert {first[t].step for _, _, t in long_rows} == {20}  # they end at the same step
    steps = []  # batch size of each decode step (the prefills pass a 2D mask)

    def hook(module, args, kwargs):
        if kwargs["attention_mask"].ndim == 4:
            steps.append(kwargs["input_ids"].shape[0])

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    rows = roll(decoder, short_rows)
    handle.remove()
    assert steps[0] == 3  # the short rows ran beside a freed slot
    ref = engine.extend([p for p, _, _ in short_rows], [b for _, b, _ in short_rows], greedy=True)
    for i, (_, _, tag) in enumerate(short_rows):
        assert rows[tag].tokens == ref.tokens[i]
        torch.testing.assert_close(rows[tag].stats.logp, ref.logp[i], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- refused models


@pytest.mark.parametrize(
    "family,extra,max_len,message",
    [
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
         16, "sliding_attention layers"),
        ("phi3", {"sliding_window": 12}, 16, "sliding window of 12 tokens"),
        ("mixtral", {"sliding_window": 8}, 9, "sliding window of 8 tokens"),
    ],
)  # fmt: skip
def test_sliding_window_models_are_refused(family, extra, max_len, message):
    engine = engine_for(build(family, config=family_config(family, **extra)))
    with pytest.raises(UserError, match=message):
        RollingDecoder(engine, slots=2, max_len=max_len)


@pytest.mark.parametrize(
    "family,extra",
    [
        ("qwen2", {"use_sliding_window": False, "sliding_window": 4}),  # carried, unused
        ("phi3", {"sliding_window": 262144}),  # Phi-3.5-mini: longer than any row
        ("mixtral", {"sliding_window": 16}),  # as long as the rows
    ],
)
def test_windows_that_cover_the_rows_are_accepted(family, extra):
    engine = engine_for(build(family, config=family_config(family, **extra)))
    decoder = RollingDecoder(engine, slots=2, max_len=16, greedy=True)
    done = roll(decoder, [(PREFIXES[0], 6, "a")])
    check_argmax_decoding(
        engine.model, PREFIXES[0], done["a"].tokens, done["a"].stats.logp,
        done["a"].finish_reason, 6,
    )  # fmt: skip


@pytest.mark.parametrize(
    "family,extra",
    [
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
        ("mixtral", {"sliding_window": 3}),
    ],
)
def test_static_engine_keeps_sliding_windows_shorter_than_a_row(family, extra):
    """The buffer decoders refuse these; the static engine decodes them through the
    DynamicCache, window and all: greedy rows are uncached argmax decoding."""
    check_static_greedy(build(family, config=family_config(family, **extra)))
