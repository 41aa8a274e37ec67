"""Activation patching on tiny random models of every family.

Besides shapes and input checks, three structural identities any correct patching must meet:
patching a run with its own residual stream changes nothing; patching every prompt position
of one block with the clean stream gives the clean answer-position distribution; and at the
last block only the answer position itself can move the answer (effect 1 there, 0 elsewhere,
as no later block mixes positions). Also: no forward hook survives, exception or not.

Tolerances: the model computes in float32, and a patched batch of R rows need not round
exactly like the single-row reference run, so "equal" distributions differ by ~1e-7 per
log-prob. KL is second order in that difference (~1e-13); 1e-6 leaves ample room yet is far
below any real patching effect here (KLs of 1e-2 and more).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers_models import one_torch_thread  # noqa: F401
from test_model_families import FAMILIES, build, family_config

from powersampling.anatomy import forward_hooks
from powersampling.errors import UserError
from powersampling.interp.patching import (
    COLUMNS,
    PAIR_KEYS,
    answer_readout,
    kl,
    patch_pair,
    patch_pairs,
    patched_logits,
    residual_stream,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-6
# One token of the question changed (position 3); answers of 2 and 3 tokens.
CLEAN = [3, 4, 5, 6, 7, 8, 9]
CORRUPTED = [3, 4, 5, 11, 7, 8, 9]
CLEAN_ANSWER = [12, 13]
CORRUPTED_ANSWER = [14, 15, 16]
P, A = len(CLEAN), len(CLEAN_ANSWER)


@pytest.fixture(scope="module")
def llama():
    return build("llama", config=family_config("llama", num_hidden_layers=3))


def blocks_of(model):
    return model.get_decoder().layers


def test_self_patch_changes_nothing(llama):
    """Patching the corrupted run with its own stream: KL 0 and effect 0 everywhere."""
    seq = CORRUPTED + CLEAN_ANSWER
    logits, resid = residual_stream(llama, seq, keep=A + 1)
    ref_logp, ref_m, ref_answer = answer_readout(logits[None], CLEAN_ANSWER, 12, 14)
    for layer in range(len(resid)):
        out = patched_logits(llama, seq, layer, [[p] for p in range(P)], resid[layer], keep=A + 1)
        logp, m, answer_logp = answer_readout(out, CLEAN_ANSWER, 12, 14)
        assert kl(ref_logp[0], logp).abs().max() < TOL
        torch.testing.assert_close(m, ref_m.expand(P), atol=1e-5, rtol=0)
        torch.testing.assert_close(answer_logp, ref_answer.expand(P), atol=1e-5, rtol=0)


def test_self_patch_through_patch_pair_has_zero_effect(llama):
    """The same through the public API: a pair whose clean answer differs but whose prompts
    are equal makes M_clean = M_corrupted, so effect is undefined (NaN) and KL is 0."""
    df = patch_pair(llama, CORRUPTED, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER)
    assert (df["kl"].abs() < TOL).all() and df["effect"].isna().all()
    assert (df["corrupted_kl"].abs() < TOL).all()


@pytest.mark.parametrize("family", ["llama", "opt", "qwen2moe"])
def test_patching_every_prompt_position_gives_the_clean_output(family):
    """All prompt positions of block ℓ from the clean run: every prompt position (and so the
    answer position) then computes exactly what the clean run computes. Patching the answer
    positions too makes the whole forward clean, answer log-prob included."""
    model = build(family, config=family_config(family, num_hidden_layers=3))
    clean_logits, clean_resid = residual_stream(model, CLEAN + CLEAN_ANSWER)  # [T, V]
    ref_logp, _, ref_answer = answer_readout(clean_logits[None, P - 1 :], CLEAN_ANSWER, 12, 14)
    corrupted = CORRUPTED + CLEAN_ANSWER
    for layer, source in enumerate(clean_resid):
        out = patched_logits(model, corrupted, layer, [range(P), range(P + A)], source)
        torch.testing.assert_close(out[0, :P], clean_logits[:P], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], clean_logits, atol=1e-5, rtol=1e-5)
        logp, _, answer_logp = answer_readout(out[:, P - 1 :], CLEAN_ANSWER, 12, 14)
        assert kl(ref_logp[0], logp).abs().max() < TOL
        assert abs(answer_logp[1] - ref_answer[0]) < 1e-5


def test_last_block_only_the_answer_position_matters(llama):
    df = patch_pair(llama, CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER)
    denom = df["clean_logit_diff"].iloc[0] - df["corrupted_logit_diff"].iloc[0]
    assert abs(denom) > 0.1  # the pair really moves the answer; effect is well conditioned
    last = df[df["layer"] == df["n_layers"] - 1].set_index("position")
    assert last.loc[P - 1, "effect"] == pytest.approx(1, abs=1e-5)
    assert last.loc[P - 1, "kl"] < TOL
    assert last.loc[P - 1, "logit_diff"] == pytest.approx(last.loc[P - 1, "clean_logit_diff"])
    earlier = last.loc[: P - 2]
    assert (earlier["effect"].abs() < 1e-5).all()
    assert (earlier["kl"] - earlier["corrupted_kl"]).abs().max() < 1e-5
    # Before the changed token, no patch can matter at any block (causality).
    assert (df[df["position"] < 3]["effect"].abs() < 1e-5).all()
    # A real change at the changed token somewhere: the experiment measures something.
    assert df[df["position"] == 3]["effect"].abs().max() > 0.1


def test_no_hook_is_left_behind(llama, monkeypatch):
    blocks = blocks_of(llama)
    patch_pair(llama, CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER)
    assert all(not b._forward_hooks for b in blocks)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    # Raised inside the forward while the capture hooks (clean run) are registered.
    monkeypatch.setattr(blocks[2], "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        patch_pair(llama, CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER)
    assert all(not b._forward_hooks for b in blocks)
    with pytest.raises(RuntimeError, match="boom"):
        patched_logits(llama, CLEAN, 1, [[0]], torch.zeros(P, 16))
    assert all(not b._forward_hooks for b in blocks)
    monkeypatch.undo()
    # A bad token id fails in the embedding, with the hooks already registered.
    with pytest.raises(IndexError):
        patch_pair(llama, CLEAN, CORRUPTED, [999, 13], CORRUPTED_ANSWER)
    assert all(not b._forward_hooks for b in blocks)


def test_forward_hooks_removes_its_hooks_on_exit_and_on_error():
    layer = torch.nn.Linear(2, 2)
    seen = []

    def hook(module, args, output):
        seen.append(output.shape)

    with forward_hooks([(layer, hook), (layer, hook)]):
        assert len(layer._forward_hooks) == 2
        layer(torch.zeros(1, 2))
    assert len(seen) == 2 and not layer._forward_hooks
    with pytest.raises(ValueError), forward_hooks([(layer, hook)]):
        raise ValueError
    assert not layer._forward_hooks
    layer(torch.zeros(1, 2))
    assert len(seen) == 2


def test_batching_does_not_change_the_result(llama):
    big = patch_pair(llama, CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER, max_batch=64)
    small = patch_pair(llama, CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER, max_batch=2)
    pd.testing.assert_frame_equal(big, small, check_exact=False, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family(family):
    model = build(family, config=family_config(family, num_hidden_layers=3))
    df = patch_pair(model, CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER, max_batch=4)
    assert list(df.columns) == COLUMNS
    assert len(df) == 3 * P
    assert df["layer"].tolist() == [layer for layer in range(3) for _ in range(P)]
    assert df["position"].tolist() == list(range(P)) * 3
    assert (df["n_layers"] == 3).all()
    assert df["token"].tolist() == CLEAN * 3 and df["corrupted_token"].tolist() == CORRUPTED * 3
    numeric = df[COLUMNS[5:]]
    assert numeric.notna().all().all() and numeric.dtypes.eq("float64").all()
    assert (df["kl"] > -TOL).all() and (df["answer_logp"] < 0).all()
    for col in COLUMNS[9:]:
        assert df[col].nunique() == 1
    # Effects at the answer position, last block, are 1; before the change, 0.
    assert df["effect"].iloc[-1] == pytest.approx(1, abs=1e-4)
    assert df[df["position"] < 3]["effect"].abs().max() < 1e-4


def test_patch_pairs_concatenates_with_pair_ids(llama):
    pair = (CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER)
    keyed = dict(zip(PAIR_KEYS, pair, strict=True))
    df = patch_pairs(llama, [pair, {**keyed, "pair_id": "q7"}])
    assert list(df.columns) == ["pair_id", *COLUMNS]
    assert df["pair_id"].tolist() == [0] * (3 * P) + ["q7"] * (3 * P)
    halves = [g.drop(columns="pair_id").reset_index(drop=True) for _, g in df.groupby("pair_id")]
    pd.testing.assert_frame_equal(*halves)
    assert list(patch_pairs(llama, []).columns) == ["pair_id", *COLUMNS]
    with pytest.raises(UserError, match="pair 'bad': .* start with the same token"):
        patch_pairs(llama, [{**keyed, "corrupted_answer": [12], "pair_id": "bad"}])


def test_bad_pairs_are_refused(llama):
    with pytest.raises(UserError, match="same number of tokens .got 7 and 8"):
        patch_pair(llama, CLEAN, CORRUPTED + [9], CLEAN_ANSWER, CORRUPTED_ANSWER)
    with pytest.raises(UserError, match="start with the same token"):
        patch_pair(llama, CLEAN, CORRUPTED, CLEAN_ANSWER, [12, 15])
    with pytest.raises(UserError, match="must each have a token"):
        patch_pair(llama, CLEAN, CORRUPTED, [], CORRUPTED_ANSWER)
    with pytest.raises(UserError, match="max_batch"):
        patch_pair(llama, CLEAN, CORRUPTED, CLEAN_ANSWER, CORRUPTED_ANSWER, max_batch=0)


def test_unknown_architecture_is_refused():
    import transformers as tf

    config = tf.GPT2Config(vocab_size=24, n_embd=16, n_layer=2, n_head=2, n_positions=64)
    with pytest.raises(UserError, match="activation patching does not support"):
        patch_pair(tf.GPT2LMHeadModel(config).eval(), CLEAN, CORRUPTED, [12], [14])
