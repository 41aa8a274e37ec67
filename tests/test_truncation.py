"""Truncated models on every model family the project names.

Tiny random 4-block models of each family (those of test_model_families): a truncated
model's logits must be those of running the full model's kept blocks by hand (embeddings,
positions, each kept block with its own attention mask, final norm and LM head); both
engines' greedy decoding on it must be uncached argmax decoding of it; power sampling must
run on it; its config must describe it (a model rebuilt from that config has the same
modules); and truncations that keep every block, or no block, or an architecture whose
blocks are not known are refused.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import transformers as tf
from helpers_models import one_torch_thread  # noqa: F401
from test_model_families import (
    FAMILIES,
    build,
    check_power_sampling,
    check_rolling_greedy,
    check_smc_sampling,
    check_static_greedy,
    family_config,
)

from powersampling.anatomy import anatomy, block_hidden
from powersampling.errors import UserError
from powersampling.truncation import kept_blocks, truncate_model, truncation_name

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("error::FutureWarning"),
]

DEPTH = 4
IDS = [3, 4, 5, 6, 7, 8, 9, 10, 11, 3]  # longer than the sliding window below
# Qwen2 whose blocks 2 and 3 attend through a window of 4 tokens (layer_types F, F, S, S).
SLIDING_QWEN2 = {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2}
# Qwen2-MoE / Qwen3-MoE with experts in blocks 1 and 3 only (block 0 listed dense, and
# every second block sparse): kept blocks 0, 1, 3 are dense, sparse, sparse, which the old
# rule, applied to the new indices 0, 1, 2, would not give.
MOE_LAYOUT = {"mlp_only_layers": [0], "decoder_sparse_step": 2}


def config_of(family: str, **extra):
    return family_config(family, num_hidden_layers=DEPTH, **extra)


@functools.cache
def full_model(family: str):
    """The 4-block model of ``family``, built once; tests truncate deep copies of it."""
    return build(family, config=config_of(family))


def truncated(model, layers: int, keep_last: bool):
    return truncate_model(copy.deepcopy(model), layers, keep_last)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def causal_mask(length: int, window: int | None = None) -> torch.Tensor:
    """Additive mask [1, 1, T, T]: query q sees keys q - window < k <= q (all k <= q if no
    window), as transformers' causal and sliding-window masks do."""
    q, k = torch.arange(length)[:, None], torch.arange(length)[None, :]
    allowed = k <= q
    if window is not None:
        allowed &= k > q - window
    return torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)[
        None, None
    ]


@torch.no_grad()
def kept_blocks_by_hand(model, kept: list[int], ids: list[int]) -> torch.Tensor:
    """Logits [T, V] of one unpadded sequence through the FULL ``model``'s blocks ``kept``
    only: embeddings and positions as the model makes them, each kept block called with the
    mask of its own attention kind, then the final norm (and OPT's projection) and LM head."""
    base, parts = model.get_decoder(), anatomy(model)
    x, length = torch.tensor([ids]), len(ids)
    positions = torch.arange(length)[None]
    hidden = base.embed_tokens(x)
    if model.config.model_type == "opt":  # learned absolute positions, added to the input
        if base.project_in is not None:
            hidden = base.project_in(hidden)
        hidden = hidden + base.embed_positions(torch.ones(1, length), 0, position_ids=positions)
        extra = {}
    else:  # rotary positions, applied inside each block's attention
        extra = {"position_embeddings": base.rotary_emb(hidden, positions)}
    kinds = getattr(model.config, "layer_types", None) or ["full_attention"] * parts.n_blocks
    for i in kept:
        window = model.config.sliding_window if kinds[i] == "sliding_attention" else None
        mask = causal_mask(length, window)
        out = parts.blocks[i](hidden, attention_mask=mask, position_ids=positions, **extra)
        hidden = block_hidden(out)
    return parts.readout(hidden)[0]


def test_published_truncations_and_names():
    """On a 28-block model, L layers + last keeps blocks 0..L-1 and 27; 27 layers + last
    (blocks 0-26 + 27) is the full model and refused; 27 layers without the last is not."""
    for layers in range(21, 26):
        assert kept_blocks(28, layers, True) == [*range(layers), 27]
    assert kept_blocks(28, 26, True) == [*range(26), 27]
    assert kept_blocks(28, 27, False) == list(range(27))
    for layers, keep_last in [(27, True), (28, True), (28, False)]:
        with pytest.raises(UserError, match="full model under another name"):
            kept_blocks(28, layers, keep_last, name="Qwen2.5-Math-1.5B")
    with pytest.raises(UserError, match="'Qwen2.5-Math-1.5B'.*all 28"):
        kept_blocks(28, 27, True, name="Qwen2.5-Math-1.5B")
    with pytest.raises(UserError, match="at least 1 layer"):
        kept_blocks(28, 0, True)
    with pytest.raises(UserError, match="only 28 decoder blocks"):
        kept_blocks(28, 29, False)
    assert truncation_name("toy", 2, True) == "toy-L2+last"
    assert truncation_name("toy", 2, False) == "toy-L2"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers,keep_last", [(1, True), (2, False)])
def test_truncated_forward_is_the_kept_blocks_by_hand(family, layers, keep_last):
    full = full_model(family)
    kept = kept_blocks(DEPTH, layers, keep_last)
    got = logits(truncated(full, layers, keep_last), IDS)
    torch.testing.assert_close(got, kept_blocks_by_hand(full, kept, IDS), atol=2e-5, rtol=1e-5)
    # The check can fail: the full model's logits are far from these.
    assert (got - logits(full, IDS)).abs().max() > 1e-2


def test_truncated_sliding_blocks_keep_their_window():
    """Qwen2 blocks 0, 1 full and 2, 3 sliding: L=1 + last runs block 0 with the causal mask
    and block 3 with its window of 4 tokens, on a sequence longer than the window."""
    full = build("qwen2", config=config_of("qwen2", **SLIDING_QWEN2))
    assert full.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    model = truncated(full, 1, True)
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    assert model.config.max_window_layers == 1
    torch.testing.assert_close(
        logits(model, IDS), kept_blocks_by_hand(full, [0, 3], IDS), atol=2e-5, rtol=1e-5
    )
    only_full = truncated(full, 2, False)
    assert only_full.config.layer_types == ["full_attention"] * 2
    assert not only_full.get_decoder().has_sliding_layers


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    """2 layers + last of 4 blocks: blocks 0, 1, 3, the last renumbered from 3 to 2."""
    return truncated(full_model(request.param), 2, True)


def test_rolling_decoder_greedy_is_uncached_argmax_decoding(model):
    check_rolling_greedy(model)


def test_static_engine_greedy_is_uncached_argmax_decoding(model):
    check_static_greedy(model)


def test_power_sampling_runs_and_records_are_well_formed(model):
    check_power_sampling(model)


def test_smc_runs_and_records_are_well_formed(model):
    check_smc_sampling(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_removes_blocks_and_leaves_other_copies_alone(family):
    full = full_model(family)
    n_params = sum(p.numel() for p in full.parameters())
    model = truncated(full, 2, True)
    blocks = anatomy(model).blocks
    dropped = sum(p.numel() for p in anatomy(full).blocks[2].parameters())
    assert sum(p.numel() for p in model.parameters()) == n_params - dropped
    assert len(blocks) == 3 and model.config.num_hidden_layers == 3
    assert model.get_decoder().config is model.config
    assert model.config.truncation == {"of_blocks": 4, "kept": [0, 1, 3]}
    indices = [[m.layer_idx for m in b.modules() if hasattr(m, "layer_idx")] for b in blocks]
    assert indices == [[0], [1], [2]]
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 3
    # The model it was copied from is whole.
    assert full.config.num_hidden_layers == 4 and not hasattr(full.config, "truncation")
    assert len(anatomy(full).blocks) == 4
    assert [m.layer_idx for m in anatomy(full).blocks[3].modules() if hasattr(m, "layer_idx")]
    assert sum(p.numel() for p in full.parameters()) == n_params


@pytest.mark.parametrize(
    "family,extra",
    [pytest.param(family, {}, id=family) for family in FAMILIES]
    + [
        pytest.param("qwen2", SLIDING_QWEN2, id="qwen2-sliding"),
        pytest.param("qwen2moe", MOE_LAYOUT, id="qwen2moe-dense-block"),
        pytest.param("qwen3moe", MOE_LAYOUT, id="qwen3moe-dense-block"),
    ],
)
def test_config_describes_the_truncated_model(family, extra):
    """A model built from the truncated model's config has the same parameters (names and
    shapes: MoE blocks keep their dense or sparse MLP) and, given its weights, the same
    logits (sliding blocks keep their window)."""
    full = full_model(family) if not extra else build(family, config=config_of(family, **extra))
    model = truncated(full, 2, True)
    with torch.random.fork_rng(devices=[]):
        rebuilt = type(model)(copy.deepcopy(model.config)).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits(rebuilt, IDS), logits(model, IDS))
    if extra is MOE_LAYOUT:
        sparse = ["Sparse" in type(b.mlp).__name__ for b in anatomy(model).blocks]
        assert sparse == [False, True, True]
        assert model.config.mlp_only_layers == [0] and model.config.decoder_sparse_step == 1


def test_truncating_twice_records_original_indices():
    model = truncate_model(truncated(full_model("llama"), 2, True), 1, True)
    assert model.config.truncation == {"of_blocks": 4, "kept": [0, 3]}
    torch.testing.assert_close(
        logits(model, IDS), kept_blocks_by_hand(full_model("llama"), [0, 3], IDS)
    )


@pytest.mark.skipif(
    not hasattr(tf.PreTrainedConfig, "is_heterogeneous"), reason="no per-layer configs"
)
def test_per_block_config_overrides_follow_their_blocks():
    model = copy.deepcopy(full_model("llama"))
    model.config.probe = 0
    model.config.per_layer_config = {1: {"probe": 1}, 3: {"probe": 3}}
    truncate_model(model, 1, True)
    assert [c.probe for c in model.config.per_layer_config] == [0, 3]


@pytest.mark.parametrize(
    "layers,keep_last,message",
    [
        (3, True, "keeps all 4 of its decoder blocks.*full model under another name"),
        (4, True, "full model under another name"),
        (4, False, "full model under another name"),
        (0, True, "at least 1 layer"),
        (5, False, "only 4 decoder blocks"),
    ],
)
def test_refused_truncations_leave_the_model_whole(layers, keep_last, message):
    model = copy.deepcopy(full_model("qwen2"))
    with pytest.raises(UserError, match=message):
        truncate_model(model, layers, keep_last, name="toy-qwen2")
    assert len(anatomy(model).blocks) == 4 and model.config.num_hidden_layers == 4
    assert not hasattr(model.config, "truncation")


def test_unsupported_architecture_is_refused():
    config = tf.GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    model = tf.GPT2LMHeadModel(config).eval()
    with pytest.raises(UserError, match=r"truncation does not support model 'tiny-gpt2'.*'gpt2'"):
        truncate_model(model, 1, False, name="tiny-gpt2")
    assert len(model.transformer.h) == 2
