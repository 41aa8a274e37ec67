"""Continuous batching (RollingDecoder) against the plain engine and teacher forcing."""

from __future__ import annotations

import pytest
import torch
from helpers_models import EOS_ID, PAD_ID, one_torch_thread, tiny_model  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from powersampling.engine import DecodingEngine, RollingDecoder
from powersampling.engine.rolling import buffer_columns
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


def test_buffer_columns_is_one_row_plus_a_spare():
    assert buffer_columns(16) == 16 + 64  # the spare is at least 64 columns
    assert buffer_columns(512) == 512 + 64
    assert buffer_columns(4096) == 4096 + 512  # and at least max_len / 8
    assert all(buffer_columns(m) < 2 * m for m in (600, 3072 + 512, 32768))


class NewTensorSizes(TorchDispatchMode):
    """Records the size (elements) of every tensor an operation creates (views and in-place
    writes create none)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable:
            self.sizes += [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def test_buffer_compaction_and_shrinking_keep_results(model):
    """Many rows through one small buffer: live columns are moved back several times, one
    layer at a time (no temporary larger than one layer of the buffer)."""
    engine = DecodingEngine(model, [], PAD_ID)
    decoder = RollingDecoder(engine, slots=2, max_len=16, greedy=True)
    assert decoder.cache.buf.shape[-2] == buffer_columns(16)
    compact, largest = decoder._compact_columns, []

    def watched(lo):
        # One layer's keys and values over max_len columns, in the batch as it is now.
        one_layer = decoder.cache.buf[0, ..., : decoder.max_len, :].numel()
        with NewTensorSizes() as mode:
            compact(lo)
        largest.append(max(mode.sizes) / one_layer)

    decoder._compact_columns = watched
    prefixes = [PREFIXES[k % 5][:5] for k in range(40)]
    budgets = [3 + (5 * k) % 9 for k in range(40)]
    done = run(decoder, [(p, b, k) for k, (p, b) in enumerate(zip(prefixes, budgets, strict=True))])
    # Writing starts at column max_len, so the buffer fills every 64 (the spare) steps.
    assert decoder.steps > 2 * 64 and decoder.compactions == (decoder.steps - 1) // 64
    assert largest and max(largest) <= 1  # the old whole-buffer copy: n_layers
    check_same_as_extend(engine, done, prefixes, budgets, list(range(40)))


def test_batch_shrinks_and_grows_back(model):
    """Three of four rows end after 2 steps: the batch shrinks; four late rows grow it back,
    within the same buffer."""
    engine = DecodingEngine(model, [], PAD_ID)
    decoder = RollingDecoder(engine, slots=4, max_len=24, greedy=True)
    rows = [(PREFIXES[k], b, k) for k, b in enumerate([2, 2, 2, 12])]
    late = [(PREFIXES[k], 5 + k, f"late{k}") for k in range(4)]
    sizes, storage = [], decoder.cache.buf.untyped_storage().data_ptr()
    decoder.step = record_sizes(decoder.step, decoder, sizes)
    done = run(decoder, rows, {4: late})
    assert sizes[:6] == [4, 4, 1, 1, 4, 4]  # after step 4: one running row + three joined
    # Shrinking and growing take views of the one allocation: no second buffer is built.
    assert decoder.cache.buf.untyped_storage().data_ptr() == storage
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


def test_prefix_in_pieces_equals_one_cache(model):
    """A prefix given as several pieces (written one after the other into the slot) decodes
    like the same prefix given as one cache; ``kv(row, skip)`` drops the first ``skip``
    columns of the row's cache."""
    engine = DecodingEngine(model, [], PAD_ID)
    decoder = RollingDecoder(engine, slots=3, max_len=30, greedy=True)
    prefix = PREFIXES[3]  # 10 tokens: a cache of 9 columns, then the last token is fed
    whole = decoder.prefill([prefix[:-1]])[0]
    kvs = {}
    seq = prefix + run(decoder, [(prefix, 6, "first")], kvs=kvs)["first"].tokens
    reused = kvs["first"]  # every token of seq but the last: 15 columns
    rows = {
        "one": (whole, prefix),
        "pieces": ([whole[:, :, :, :4], whole[:, :, :, 4:]], prefix),
        "empties": ([decoder.empty_kv(), whole, decoder.empty_kv()], prefix),
        "reused": ([reused[:, :, :, :4], reused[:, :, :, 4:9], reused[:, :, :, 9:12]], seq[:13]),
    }
    for tag, (kv, full) in rows.items():
        decoder.add(kv, full[-1], 5, tag)
    got = {}
    while decoder.has_work:
        for row in decoder.step():
            got[row.tag] = row
            own = decoder.kv(row, skip=9)
            torch.testing.assert_close(own, decoder.kv(row)[:, :, :, 9:])
            assert own.shape[-2] == len(rows[row.tag][1]) - 1 - 9 + len(row.tokens)
    logp, _ = engine.score([full for _, full in rows.values()], [got[t].tokens for t in rows])
    for tag, lp in zip(rows, logp, strict=True):
        torch.testing.assert_close(got[tag].stats.logp, lp, atol=1e-5, rtol=1e-5)
    assert got["pieces"].tokens == got["one"].tokens == got["empties"].tokens


def test_host_kv_store_gives_the_same_rows(model):
    """kv_store="host" keeps the caches the decoder hands out in host memory (pinned on
    CUDA); on a CPU model both stores give the same results."""
    engine = DecodingEngine(model, [EOS_ID], PAD_ID)
    results = {}
    for store in ["device", "host"]:
        gen = torch.Generator().manual_seed(4)
        decoder = RollingDecoder(
            engine, slots=2, max_len=24, temperature=1.2, generator=gen, kv_store=store
        )
        kvs = {}
        rows = [(p, b, i) for i, (p, b) in enumerate(zip(PREFIXES, BUDGETS, strict=True))]
        results[store] = (run(decoder, rows, kvs=kvs), kvs)
        assert all(kv.device.type == "cpu" for kv in kvs.values())
    (dev, dev_kv), (host, host_kv) = results["device"], results["host"]
    for i in range(5):
        assert dev[i].tokens == host[i].tokens
        assert torch.equal(dev[i].stats.logp, host[i].stats.logp)
        assert torch.equal(dev_kv[i], host_kv[i])
    with pytest.raises(UserError, match="kv_store must be one of"):
        RollingDecoder(engine, slots=2, max_len=24, kv_store="disk")


def test_seq_length_is_the_cached_prefix_of_an_unpadded_row(model):
    """BufferCache.get_seq_length (read by models that derive positions from the cache, e.g.
    OPT) is the number of cached tokens before the fed one, as for a DynamicCache."""
    engine = DecodingEngine(model, [], PAD_ID)
    decoder = RollingDecoder(engine, slots=1, max_len=90, greedy=True)
    seen = []

    def hook(module, args, kwargs):
        cache = kwargs[engine.cache_arg]
        if cache is decoder.cache:
            seen.append((cache.get_seq_length(), int(kwargs["position_ids"][0, 0])))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:  # 80 steps: across a compaction (at step 65) too
        run(decoder, [(PREFIXES[0], 80, "a")])
    finally:
        handle.remove()
    assert decoder.compactions == 1
    assert len(seen) == 80 and all(n == pos for n, pos in seen)


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
    with pytest.raises(UserError, match="does not fit this model"):
        decoder.add([kv, kv[:, :1]], 6, 2, "a")  # keys only
    with pytest.raises(UserError, match="slots"):
        RollingDecoder(engine, slots=0, max_len=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_kv_store_on_cuda_is_pinned_and_matches_device():
    engine = DecodingEngine(tiny_model(seed=0).to("cuda"), [EOS_ID], PAD_ID)
    rows = [(p, b, i) for i, (p, b) in enumerate(zip(PREFIXES, BUDGETS, strict=True))]
    out = {}
    for store in ["device", "host"]:
        decoder = RollingDecoder(engine, slots=2, max_len=40, greedy=True, kv_store=store)
        kvs = {}
        first = run(decoder, rows, kvs=kvs)
        for i in range(len(PREFIXES)):  # rejoin from the stored caches, cut in two pieces
            decoder.add([kvs[i][:, :, :, :2], kvs[i][:, :, :, 2:]], first[i].tokens[-1], 5, i)
        second = {}
        while decoder.has_work:
            second.update({row.tag: row for row in decoder.step()})
        out[store] = (first, second, kvs)
    (dev1, dev2, dev_kv), (host1, host2, host_kv) = out["device"], out["host"]
    assert all(kv.is_cuda for kv in dev_kv.values())
    assert all(kv.device.type == "cpu" and kv.is_pinned() for kv in host_kv.values())
    for i in range(len(PREFIXES)):
        assert dev1[i].tokens == host1[i].tokens and dev2[i].tokens == host2[i].tokens
        torch.testing.assert_close(dev2[i].stats.logp, host2[i].stats.logp)
        torch.testing.assert_close(dev_kv[i].cpu(), host_kv[i])
