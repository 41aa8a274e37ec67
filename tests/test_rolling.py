"""Continuous batching (RollingDecoder) against the plain engine and teacher forcing."""

from __future__ import annotations

import pytest
import torch
from helpers_models import EOS_ID, PAD_ID, one_torch_thread, tiny_model  # noqa: F401

from powersampling.engine import DecodingEngine, RollingDecoder
from powersampling.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PREFIXES = [[3, 4, 5, 6, 7, 8, 9], [10], [11, 12, 3], [4, 4, 4, 4, 4, 13, 14, 15, 3, 5], [6, 7]]
BUDGETS = [9, 4, 12, 6, 10]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def run(
    decoder: RollingDecoder, rows: list[tuple], join_after: dict[int, list[tuple]] = (), kvs=None
):
    """Queue ``rows`` (prefix, budget, tag), step to the end; more rows join after step k.
    With a dict ``kvs``, each finished row's cache is put there (read before the next step)."""
    join_after = dict(join_after)

    def add(prefix, budget, tag):
        decoder.add(decoder.prefill([prefix[:-1]])[0], prefix[-1], budget, tag)

    for row in rows:
        add(*row)
    done, k = {}, 0
    while decoder.has_work or join_after:
        for row in decoder.step():
            done[row.tag] = row
            if kvs is not None:
                kvs[row.tag] = decoder.kv(row)
        k += 1
        for row in join_after.pop(k, []):
            add(*row)
    return done


def check_same_as_extend(engine, done, prefixes, budgets, tags):
    ref = engine.extend(prefixes, budgets, greedy=True)
    for i, tag in enumerate(tags):
        row = done[tag]
        assert row.tokens == ref.tokens[i]
        assert row.finish_reason == ref.finish_reason[i]
        got = row.stats.tensors()  # log p, log q, entropy, top-1
        for g, want in zip(
            got, [ref.logp[i], ref.logq[i], ref.entropy[i], ref.top1[i]], strict=True
        ):
            assert g.dtype == torch.float64 and g.device.type == "cpu"
            torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_greedy_rows_joining_at_different_times_match_extend(model, slots):
    """Rows wait for a free slot, join a running batch with other paddings, and give the
    plain engine's tokens and statistics; late rows join after a few steps."""
    engine = DecodingEngine(model, [EOS_ID], PAD_ID)
    decoder = RollingDecoder(engine, slots=slots, max_len=24, greedy=True)
    rows = [(p, b, i) for i, (p, b) in enumerate(zip(PREFIXES, BUDGETS, strict=True))]
    late = {2: [(PREFIXES[3], 7, "late-a")], 5: [(PREFIXES[1], 11, "late-b")]}
    done = run(decoder, rows, late)
    prefixes = PREFIXES + [PREFIXES[3], PREFIXES[1]]
    check_same_as_extend(
        engine, done, prefixes, BUDGETS + [7, 11], list(range(5)) + ["late-a", "late-b"]
    )
    assert decoder.tokens_decoded == sum(len(r.tokens) for r in done.values())
    assert decoder.tokens_prefilled == sum(len(p) - 1 for p in prefixes)


def test_buffer_compaction_and_shrinking_keep_results(model):
    """Many rows through one small buffer: live columns are moved back many times."""
    engine = DecodingEngine(model, [], PAD_ID)
    decoder = RollingDecoder(engine, slots=2, max_len=16, greedy=True)
    prefixes = [PREFIXES[k % 5][:5] for k in range(12)]
    budgets = [3 + (5 * k) % 9 for k in range(12)]
    done = run(decoder, [(p, b, k) for k, (p, b) in enumerate(zip(prefixes, budgets, strict=True))])
    # The buffer has 2 x max_len columns and starts writing at max_len: compacted every 16 steps.
    assert decoder.steps > 2 * 16
    check_same_as_extend(engine, done, prefixes, budgets, list(range(12)))


def test_batch_shrinks_and_grows_back(model):
    """Three of four rows end after 2 steps: the batch shrinks; four late rows grow it back."""
    engine = DecodingEngine(model, [], PAD_ID)
    decoder = RollingDecoder(engine, slots=4, max_len=24, greedy=True)
    rows = [(PREFIXES[k], b, k) for k, b in enumerate([2, 2, 2, 12])]
    late = [(PREFIXES[k], 5 + k, f"late{k}") for k in range(4)]
    sizes = []
    decoder.step = record_sizes(decoder.step, decoder, sizes)
    done = run(decoder, rows, {4: late})
    assert sizes[:6] == [4, 4, 1, 1, 4, 4]  # after step 4: one running row + three joined
    prefixes = PREFIXES[:4] + PREFIXES[:4]
    budgets = [2, 2, 2, 12, 5, 6, 7, 8]
    check_same_as_extend(engine, done, prefixes, budgets, list(range(4)) + [r[2] for r in late])


def record_sizes(step, decoder, sizes):
    def wrapped():
        out = step()
        sizes.append(len(decoder.tags))
        return out

    return wrapped


def test_eager_attention_matches_sdpa(model):
    eager = tiny_model(seed=0)
    eager.config._attn_implementation = "eager"
    engine = DecodingEngine(model, [EOS_ID], PAD_ID)
    decoder = RollingDecoder(
        DecodingEngine(eager, [EOS_ID], PAD_ID), slots=2, max_len=24, greedy=True
    )
    rows = [(p, b, i) for i, (p, b) in enumerate(zip(PREFIXES, BUDGETS, strict=True))]
    check_same_as_extend(engine, run(decoder, rows), PREFIXES, BUDGETS, list(range(5)))


def test_reused_cache_gives_full_prefill_log_probs(model):
    """A row restarted from a finished row's cache (cut anywhere) scores like a full prefill."""
    engine = DecodingEngine(model, [], PAD_ID)
    decoder = RollingDecoder(
        engine, slots=4, max_len=30, temperature=0.8, generator=torch.Generator().manual_seed(3)
    )
    kvs = {}
    first = run(decoder, [(p, 8, i) for i, p in enumerate(PREFIXES)], kvs=kvs)
    with pytest.raises(UserError, match="next step"):
        decoder.kv(first[0])  # row 0 ended before the last step
    full = []
    for i, p in enumerate(PREFIXES):
        seq = p + first[i].tokens
        assert kvs[i].shape[-2] == len(seq) - 1  # every token but the last
        cut = len(p) + 3 - (i % 3)  # keep seq[:cut], feed seq[cut - 1]
        decoder.add(kvs[i][:, :, :, : cut - 1], seq[cut - 1], 6, i)
        full.append(seq[:cut])
    second = {}
    while decoder.has_work:
        for row in decoder.step():
            second[row.tag] = row
    logp, logq = engine.score(full, [second[i].tokens for i in range(5)], temperature=0.8)
    for i in range(5):
        torch.testing.assert_close(second[i].stats.logp, logp[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(second[i].stats.logq, logq[i], atol=1e-5, rtol=1e-5)
    # and the first pass's own log-probs were right too
    logp, _ = engine.score(PREFIXES, [first[i].tokens for i in range(5)])
    for i in range(5):
        torch.testing.assert_close(first[i].stats.logp, logp[i], atol=1e-5, rtol=1e-5)


def test_same_seed_same_tokens_and_top_k_support(model):
    engine = DecodingEngine(model, [EOS_ID], PAD_ID)

    def sample(seed):
        gen = torch.Generator().manual_seed(seed)
        decoder = RollingDecoder(
            engine, slots=3, max_len=24, temperature=1.5, top_k=3, generator=gen
        )
        done = run(decoder, [(p, 10, i) for i, p in enumerate(PREFIXES * 3)])
        return [done[i] for i in range(15)]

    a, b, c = sample(1), sample(1), sample(2)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in a] != [r.tokens for r in c]
    _, logq = engine.score(PREFIXES * 3, [r.tokens for r in a], temperature=1.5, top_k=3)
    for r, lq in zip(a, logq, strict=True):
        assert torch.isfinite(r.stats.logq).all()  # never outside the top-3
        torch.testing.assert_close(r.stats.logq, lq, atol=1e-5, rtol=1e-5)


def test_bad_rows_are_user_errors(model):
    engine = DecodingEngine(model, [EOS_ID], PAD_ID)
    decoder = RollingDecoder(engine, slots=2, max_len=10)
    kv = decoder.prefill([[3, 4, 5]])[0]
    with pytest.raises(UserError, match="budget"):
        decoder.add(kv, 6, 0, "a")
    with pytest.raises(UserError, match="max_len"):
        decoder.add(kv, 6, 8, "a")
    with pytest.raises(UserError, match="vocabulary"):
        decoder.add(kv, 99, 2, "a")
    with pytest.raises(UserError, match="slots"):
        RollingDecoder(engine, slots=0, max_len=10)
