"""The batched KV-cached decoding engine against plain teacher-forced forward passes."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from helpers_models import EOS_ID, PAD_ID, VOCAB_SIZE, full_logits, one_torch_thread, tiny_model  # noqa: F401
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import Qwen2Config, Qwen2ForCausalLM

from powersampling.engine import DecodingEngine, TokenStats, log_q, pick_tokens
from powersampling.engine.batch import cache_argument
from powersampling.errors import UserError

# Prefixes of different lengths, so a batch of them needs left padding.
pytestmark = pytest.mark.usefixtures("one_torch_thread")
PREFIXES = [[3, 4, 5, 6, 7, 8, 9], [10], [11, 12, 3], [4, 4, 4, 4, 4, 13, 14, 15, 3, 5], [6, 7]]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def engine_for(model, eos=(), max_batch_size=None):
    return DecodingEngine(model, list(eos), PAD_ID, max_batch_size=max_batch_size)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def record_forwards(model):
    """Record (batch size, fed tokens, mask width) of every forward call; returns (calls, hook
    handle). The width is the mask's last dimension: the prefill passes a 2D mask [B, L], a
    decode step from the preallocated buffer a 4D one [B, 1, 1, W]."""
    calls = []

    def hook(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        calls.append((ids.shape[0], ids.shape[1], mask.shape[-1]))

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_greedy_is_argmax_of_teacher_forced_forward(model):
    ext = engine_for(model).extend(PREFIXES, 12, greedy=True)
    for prefix, tokens, logp, ent, top1, lq in zip(
        PREFIXES, ext.tokens, ext.logp, ext.entropy, ext.top1, ext.logq, strict=True
    ):
        assert len(tokens) == 12
        logits = full_logits(model, prefix + tokens)[len(prefix) - 1 : -1]  # predicts tokens
        ref = torch.log_softmax(logits, -1).double()
        # The choices are separated by far more than float32 rounding (~1e-6), so exact
        # agreement is the right test.
        top2 = ref.topk(2, -1).values
        assert (top2[:, 0] - top2[:, 1]).min() > 1e-5
        assert tokens == ref.argmax(-1).tolist()
        ref_logp = ref.gather(1, torch.tensor(tokens)[:, None])[:, 0]
        torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(top1, ref.exp().max(-1).values, atol=1e-6, rtol=1e-5)
        assert torch.all(lq == 0)
    assert ext.finish_reason == ["length"] * len(PREFIXES)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, None), (1.6, 4)])
def test_sampled_log_probs_match_teacher_forcing(model, temperature, top_k):
    engine = engine_for(model)
    ext = engine.extend(PREFIXES, 10, temperature=temperature, top_k=top_k, generator=gen(1))
    score_p, score_q = engine.score(PREFIXES, ext.tokens, temperature=temperature, top_k=top_k)
    for i, prefix in enumerate(PREFIXES):
        tokens = torch.tensor(ext.tokens[i])[:, None]
        logits = full_logits(model, prefix + ext.tokens[i])[len(prefix) - 1 : -1]
        ref_p = torch.log_softmax(logits, -1).gather(1, tokens)[:, 0].double()
        z = logits / temperature
        if top_k is not None:  # independent top-k: keep the k largest (no ties here)
            z = torch.full_like(z, float("-inf")).scatter(
                1, z.topk(top_k, -1).indices, z.topk(top_k, -1).values
            )
        ref_q = torch.log_softmax(z, -1).gather(1, tokens)[:, 0].double()
        for got in (ext.logp[i], score_p[i]):
            torch.testing.assert_close(got, ref_p, atol=1e-5, rtol=1e-5)
        for got in (ext.logq[i], score_q[i]):
            torch.testing.assert_close(got, ref_q, atol=1e-5, rtol=1e-5)
        if temperature == 1.0 and top_k is None:
            assert torch.equal(ext.logq[i], ext.logp[i])
        else:
            assert not torch.allclose(ext.logq[i], ext.logp[i])


def test_top_k_never_leaves_the_top_k(model):
    prefix = [3, 4, 5]
    logits = full_logits(model, prefix)[-1]
    allowed = set(logits.topk(3).indices.tolist())
    ext = engine_for(model).extend([prefix] * 500, 1, temperature=2.0, top_k=3, generator=gen(2))
    drawn = {t[0] for t in ext.tokens}
    assert drawn <= allowed and len(drawn) == 3


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """Goodness-of-fit p-value, pooling cells whose expected count is below 5 into one."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def spread_prefix(model, temperature: float) -> list[int]:
    """The two-token prefix whose next-token distribution at ``temperature`` has the most
    entropy, so that a goodness-of-fit test checks many cells, not one dominant token."""

    def entropy(prefix):
        p = torch.softmax(full_logits(model, prefix)[-1] / temperature, -1)
        return float(-(p * p.log()).sum())

    return max(([a, b] for a in range(3, VOCAB_SIZE) for b in range(3, VOCAB_SIZE)), key=entropy)


def test_temperature_sampling_frequencies_match_softmax_over_t(model):
    # False-alarm rate 1e-3 (fixed seed, so the outcome is deterministic); the same draws must
    # reject the T=1 distribution at the same level, which shows the test has power.
    T, n = 0.5, 6000
    prefix = spread_prefix(model, T)
    logits = full_logits(model, prefix)[-1].double()
    ext = engine_for(model).extend([prefix] * n, 1, temperature=T, generator=gen(3))
    counts = np.bincount([t[0] for t in ext.tokens], minlength=VOCAB_SIZE)
    assert (counts >= 5).sum() >= 5  # a real multi-cell test
    assert chi_square_p(counts, torch.softmax(logits / T, -1).numpy()) > 1e-3
    assert chi_square_p(counts, torch.softmax(logits, -1).numpy()) < 1e-3


def test_second_token_frequencies_match_softmax_over_t(model):
    # Same test one step later, through the KV cache, conditioned on the most common first token.
    T, n = 1.5, 8000
    prefix = spread_prefix(model, T)
    ext = engine_for(model).extend([prefix] * n, 2, temperature=T, generator=gen(4))
    first = np.array([t[0] for t in ext.tokens])
    mode = int(np.bincount(first).argmax())
    seconds = np.array([t[1] for t in ext.tokens])[first == mode]
    counts = np.bincount(seconds, minlength=VOCAB_SIZE)
    logits = full_logits(model, prefix + [mode])[-1].double()
    assert (counts >= 5).sum() >= 5
    assert chi_square_p(counts, torch.softmax(logits / T, -1).numpy()) > 1e-3
    assert chi_square_p(counts, torch.softmax(logits, -1).numpy()) < 1e-3


def test_batched_rows_equal_unbatched_rows(model):
    engine = engine_for(model)
    batched = engine.extend(PREFIXES, 15, greedy=True)
    for i, prefix in enumerate(PREFIXES):
        alone = engine.extend([prefix], 15, greedy=True)
        assert alone.tokens[0] == batched.tokens[i]
        torch.testing.assert_close(alone.logp[0], batched.logp[i], atol=1e-5, rtol=1e-5)


def test_per_row_budgets(model):
    budgets = [0, 3, 7, 1, 5]
    ext = engine_for(model).extend(PREFIXES, budgets, temperature=1.0, generator=gen(5))
    assert [len(t) for t in ext.tokens] == budgets
    assert [len(x) for x in ext.logp] == budgets and [len(x) for x in ext.top1] == budgets
    assert ext.finish_reason == ["length"] * 5
    assert ext.n_decoded == sum(budgets)
    assert ext.n_prefilled == sum(len(p) for p, b in zip(PREFIXES, budgets, strict=True) if b)
    nothing = engine_for(model).extend(PREFIXES[:2], 0)
    assert nothing.tokens == [[], []] and nothing.n_prefilled == 0 and nothing.n_decoded == 0


def test_eos_ends_a_row_and_is_kept(model):
    free = engine_for(model).extend(PREFIXES, 12, greedy=True)
    # Take a token that row 0 emits at step 4 (and not before) as the EOS token.
    eos = free.tokens[0][3]
    first = free.tokens[0].index(eos)
    ext = engine_for(model, eos=[eos]).extend(PREFIXES, 12, greedy=True)
    for i in range(len(PREFIXES)):
        if eos in free.tokens[i]:
            stop = free.tokens[i].index(eos) + 1
            assert ext.tokens[i] == free.tokens[i][:stop] and ext.finish_reason[i] == "eos"
        else:
            assert ext.tokens[i] == free.tokens[i] and ext.finish_reason[i] == "length"
    assert ext.tokens[0][-1] == eos and len(ext.tokens[0]) == first + 1
    assert ext.n_decoded == sum(len(t) for t in ext.tokens) < free.n_decoded


def test_finished_rows_leave_the_batch(model):
    engine = engine_for(model)
    calls, handle = record_forwards(model)
    try:
        ext = engine.extend(
            [[3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [5, 6], [7]], [1, 3, 5], greedy=True
        )
    finally:
        handle.remove()
    # Prefill all three; then rows leave after 1 and 3 tokens. The last token is never fed.
    assert [c[0] for c in calls] == [3, 2, 2, 1, 1]
    assert [c[1] for c in calls] == [10, 1, 1, 1, 1]
    # Once the 10-token row is gone, its left padding is cut from the cache: the mask spans
    # only the longest remaining row (2 prompt tokens, then 1 more per fed token).
    assert [c[2] for c in calls] == [10, 3, 4, 4, 5]
    for i, (prefix, n) in enumerate(
        [([3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 1), ([5, 6], 3), ([7], 5)]
    ):
        alone = engine.extend([prefix], n, greedy=True)
        assert alone.tokens[0] == ext.tokens[i]
        torch.testing.assert_close(alone.logp[0], ext.logp[i], atol=1e-5, rtol=1e-5)


class DecodeTensorSizes(TorchDispatchMode):
    """From the first decode step of ``model`` on (a forward of one token per row), records
    the size (elements) of every tensor an operation creates (views and in-place writes
    create none); the prefill and the buffer it fills come before."""

    def __init__(self, model):
        super().__init__()
        self.sizes, self.decoding = [], False

        def hook(module, args, kwargs):
            self.decoding = self.decoding or kwargs["input_ids"].shape[1] == 1

        self.handle = model.register_forward_pre_hook(hook, with_kwargs=True)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.decoding and not func.is_view and not func._schema.is_mutable:
            self.sizes += [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def test_decode_steps_do_not_copy_the_cache():
    """Decoding writes into a preallocated buffer: from the first decode step on, nothing as
    large as one layer's keys is created, not even when rows leave (a DynamicCache would
    concatenate each layer's keys and values at every step). The model has as many KV
    heads as heads: with grouped-query attention, transformers < 5.24 expands the keys to
    every head in attention, a copy of the kernel's, not of the cache."""
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        initializer_range=0.3,  # peaked distributions, as tiny_model's: well-separated choices
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).eval()
    prefixes = [[3] * 30, [4, 5], [6, 7, 8]]
    budgets = [4, 20, 12]  # the long row leaves first, then the others one by one
    mode = DecodeTensorSizes(model)
    try:
        with mode:
            ext = engine_for(model).extend(prefixes, budgets, greedy=True)
    finally:
        mode.handle.remove()
    # One layer's keys of the smallest batch the steps run: 1 row over its own 3 + 11 columns.
    smallest_layer_keys = 1 * 4 * 14 * (32 // 4)
    assert mode.sizes and max(mode.sizes) < smallest_layer_keys
    assert [len(t) for t in ext.tokens] == budgets
    for i, prefix in enumerate(prefixes):  # and the rows are those of uncached decoding
        alone = engine_for(model).extend([prefix], budgets[i], greedy=True)
        assert alone.tokens[0] == ext.tokens[i]


def test_chunking_by_max_batch_size(model):
    whole = engine_for(model).extend(PREFIXES, 6, greedy=True)
    calls, handle = record_forwards(model)
    try:
        chunked = engine_for(model, max_batch_size=2).extend(PREFIXES, 6, greedy=True)
    finally:
        handle.remove()
    assert max(c[0] for c in calls) == 2
    assert sum(1 for c in calls if c[1] > 1 or c[2] == c[1]) == 3  # three prefills: 2 + 2 + 1
    assert chunked.tokens == whole.tokens
    assert (chunked.n_prefilled, chunked.n_decoded) == (whole.n_prefilled, whole.n_decoded)
    for a, b in zip(chunked.logp, whole.logp, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_same_seed_same_tokens(model):
    engine = engine_for(model, eos=[EOS_ID])
    a = engine.extend(PREFIXES, 10, temperature=1.2, generator=gen(7))
    b = engine.extend(PREFIXES, 10, temperature=1.2, generator=gen(7))
    c = engine.extend(PREFIXES, 10, temperature=1.2, generator=gen(8))
    assert a.tokens == b.tokens and a.finish_reason == b.finish_reason
    assert all(torch.equal(x, y) for x, y in zip(a.logq, b.logq, strict=True))
    assert a.tokens != c.tokens


def test_score_of_empty_continuation_and_mixed_lengths(model):
    engine = engine_for(model, max_batch_size=2)
    conts = [[3, 4], [], [5, 6, 7, 8], [9], [10, 11, 12]]
    logp, logq = engine.score(PREFIXES, conts)
    assert [len(x) for x in logp] == [len(c) for c in conts]
    for prefix, cont, lp, lq in zip(PREFIXES, conts, logp, logq, strict=True):
        if cont:
            ref = torch.log_softmax(full_logits(model, prefix + cont), -1)[len(prefix) - 1 : -1]
            ref = ref.gather(1, torch.tensor(cont)[:, None])[:, 0].double()
            torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)
            assert torch.equal(lq, lp)


def test_score_splits_rows_to_bound_logits_memory(model):
    conts = [[3, 4, 5]] * 5
    engine = DecodingEngine(model, [], PAD_ID, score_logits_budget=2 * 3 * VOCAB_SIZE)
    calls, handle = record_forwards(model)
    try:
        small, _ = engine.score(PREFIXES, conts)
    finally:
        handle.remove()
    assert [c[0] for c in calls] == [2, 2, 1]
    big, _ = engine_for(model).score(PREFIXES, conts)
    for a, b in zip(small, big, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_log_q_keeps_ties_at_the_kth_logit():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    lq = log_q(logits, temperature=1.0, top_k=2)
    assert torch.isinf(lq[0, 3]) and torch.isfinite(lq[0, :3]).all()
    torch.testing.assert_close(lq.exp().sum(), torch.tensor(1.0))


def test_context_length_is_checked_up_front(model):
    engine = engine_for(model)  # the model's context is 64 positions
    with pytest.raises(UserError, match=r"row 1: prefix of 60 tokens \+ 5 new tokens = 65"):
        engine.extend([[3, 4], [5] * 60], 5, greedy=True)
    engine.extend([[3, 4], [5] * 60], [5, 4], greedy=True)  # per-row budgets that fit are fine
    with pytest.raises(UserError, match="row 0"):
        engine.score([[5] * 60], [[3] * 5])


def test_cache_argument_follows_the_models_signature(model):
    """transformers 5.24 takes the cache as ``cache``, 5.4-5.23 as ``past_key_values``: the
    engine asks the model's own forward, so neither version sees a deprecated name."""

    class Old(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, past_key_values=None, **kwargs):
            pass

    class New(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, cache=None, **kwargs):
            pass

    class Neither(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            pass

    assert cache_argument(Old()) == "past_key_values"
    assert cache_argument(New()) == "cache"
    with pytest.raises(UserError, match="neither 'cache' nor 'past_key_values'"):
        cache_argument(Neither())
    assert engine_for(model).cache_arg in inspect.signature(model.forward).parameters


def test_pick_tokens_stats():
    """Per-row stats of the chosen tokens: log p at T=1, log q of the sampling law, entropy
    and top-1 of the base distribution; greedy takes the lowest id among ties (log q = 0)."""
    logits = torch.tensor([[2.0, 2.0, 0.0, -1.0], [0.0, 1.0, 3.0, 0.5]])  # [2, V]
    tok, st = pick_tokens(logits, 1.0, None, True, None)
    assert tok.tolist() == [0, 2]
    logp_all = torch.log_softmax(logits, -1)
    p = logp_all.exp()
    torch.testing.assert_close(st.logp, logp_all[[0, 1], [0, 2]])
    torch.testing.assert_close(st.entropy, -(p * logp_all).sum(-1))
    torch.testing.assert_close(st.top1, p.max(-1).values)
    assert st.logq.tolist() == [0.0, 0.0]
    tok, st = pick_tokens(logits, 0.5, 2, False, gen(0))
    want = log_q(logits, 0.5, 2).gather(1, tok[:, None]).squeeze(1)
    assert torch.equal(st.logq, want) and torch.isfinite(st.logq).all()


def test_token_stats_index_and_assign():
    buf = TokenStats.zeros(3, 4)  # [rows, tokens] each, float64
    assert all(t.dtype == torch.float64 and t.shape == (3, 4) for t in buf.tensors())
    step = TokenStats(*(torch.full((2,), float(k)) for k in range(4)))  # float32 [2]
    buf[torch.tensor([0, 2]), torch.tensor([1, 3])] = step
    row = buf[2, :4].clone()
    assert [t.tolist() for t in row.tensors()] == [[0, 0, 0, k] for k in [0.0, 1.0, 2.0, 3.0]]
    assert row.top1.dtype == torch.float64 and buf.top1[2, 3] == 3.0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prefixes": [[3], []], "max_new_tokens": 2}, "row 1: the prefix is empty"),
        ({"prefixes": [[3], [99]], "max_new_tokens": 2}, "token id 99 is outside"),
        ({"prefixes": [[3], [4]], "max_new_tokens": [2]}, "1 entries for 2 prefixes"),
        ({"prefixes": [[3]], "max_new_tokens": -1}, "integers >= 0"),
        ({"prefixes": [[3]], "max_new_tokens": 2, "temperature": 0.0}, "temperature must be"),
        ({"prefixes": [[3]], "max_new_tokens": 2, "top_k": 0}, "top_k must be"),
    ],
)
def test_bad_requests_are_user_errors(model, kwargs, message):
    with pytest.raises(UserError, match=message):
        engine_for(model).extend(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(model):
    cuda_model = tiny_model(seed=0).to("cuda")
    engine = engine_for(cuda_model)
    greedy = engine.extend(PREFIXES, 8, greedy=True)
    assert greedy.tokens == engine_for(model).extend(PREFIXES, 8, greedy=True).tokens
    g = torch.Generator(device="cuda")
    a = engine.extend(PREFIXES, 8, temperature=0.8, generator=g.manual_seed(0))
    b = engine.extend(PREFIXES, 8, temperature=0.8, generator=g.manual_seed(0))
    assert a.tokens == b.tokens
    score_p, _ = engine.score(PREFIXES, a.tokens)
    for x, y in zip(a.logp, score_p, strict=True):
        assert x.device.type == "cpu"
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="generator is on cpu"):
        engine.extend(PREFIXES, 2, generator=torch.Generator())


def test_inverse_cdf_draw_never_picks_an_impossible_token():
    from powersampling.engine.tokens import inverse_cdf_draw

    probs = torch.tensor([[0.2, 0.0, 0.8], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]] * 2)
    u = torch.tensor([0.0, 0.3, 0.4999, 0.1999, 0.9999999999999999, 0.9999999999999999])
    assert inverse_cdf_draw(probs, u.double()).tolist() == [0, 1, 0, 0, 1, 1]
    # the first token whose cumulative probability exceeds u: a boundary goes right
    assert inverse_cdf_draw(probs[:1], torch.tensor([0.2], dtype=torch.float64)).item() == 2


def test_inverse_cdf_draws_follow_the_distribution():
    """Chi-square goodness of fit of 20,000 draws from a fixed distribution at a 0.1%
    false-alarm rate; the same test rejects draws from a distribution 0.05 away."""
    from scipy.stats import chisquare

    from powersampling.engine.tokens import inverse_cdf_draw

    p = np.array([0.1, 0.25, 0.05, 0.3, 0.3])
    n = 20_000
    u = torch.from_numpy(np.random.default_rng(0).random(n))
    tokens = inverse_cdf_draw(torch.from_numpy(p).expand(n, -1), u)
    counts = np.bincount(tokens.numpy(), minlength=5)
    assert chisquare(counts, n * p).pvalue > 1e-3
    shifted = p + np.array([0.05, -0.05, 0, 0, 0])
    assert chisquare(counts, n * shifted).pvalue < 1e-3  # power: a 0.05 shift is seen
