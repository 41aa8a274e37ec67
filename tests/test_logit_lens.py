"""LogitLens on tiny random models of every family: the last block reads out to the model's
own distribution, padding and batching change nothing, intermediate blocks and answer
positions match a hand computation, no hook outlives a call, and the summary's CIs."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import transformers as tf
from helpers_models import one_torch_thread  # noqa: F401
from test_model_families import FAMILIES, VOCAB, build, family_config

from powersampling.anatomy import anatomy
from powersampling.errors import UserError
from powersampling.interp.logit_lens import COLUMNS, METRICS, logit_lens
from powersampling.interp.tables import lens_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD = 0
N_LAYERS = 4
# Prompt + answer; the second and fourth answers are empty.
SEQUENCES = [[3, 4, 5, 6, 7, 8, 9], [10, 11, 12], [13, 3, 5, 7, 9, 11, 13, 15, 17, 19], [4, 6]]
PROMPTS = [4, 3, 5, 2]


def with_random_norms(model, seed: int = 1):
    """``model`` with norm weights (and biases) away from 1 (and 0), as in trained models: a
    fresh norm with unit weight is idempotent, which would hide a norm applied twice."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(0.5 * torch.randn_like(module.bias))
    return model


def fresh_model(family: str):
    config = family_config(family, num_hidden_layers=N_LAYERS)
    return with_random_norms(build(family, config=config))


@functools.cache
def model_of(family: str):
    return fresh_model(family)


def manual_metrics(model, seq: list[int], layer: int) -> torch.Tensor:
    """[3 (kl, top1, entropy), T] for Qwen2 block ``layer`` < n-1, read out by hand from
    ``output_hidden_states``."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([seq]), output_hidden_states=True, use_cache=False)
        # hidden_states[0] is the embedding; [ℓ + 1] the output of block ℓ, un-normed except
        # the last, which transformers replaces with the normed final state.
        hidden = out.hidden_states[layer + 1][0]  # [T, H]
        logq = torch.log_softmax(model.lm_head(model.model.norm(hidden)).double(), -1)
    logp = torch.log_softmax(out.logits[0].double(), -1)  # [T, V]
    kl = (logp.exp() * (logp - logq)).sum(-1)
    top1 = (logq.argmax(-1) == logp.argmax(-1)).double()
    entropy = -(logq.exp() * logq).sum(-1)
    return torch.stack([kl, top1, entropy])


def metric_values(frame, row: int, position: str) -> torch.Tensor:
    """[n_layers, 3] metrics of one sequence at one position kind, by layer."""
    part = frame[(frame["row"] == row) & (frame["position"] == position)].sort_values("layer")
    return torch.tensor(part[METRICS].to_numpy(), dtype=torch.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_block_reads_out_to_the_model_output(family):
    model = model_of(family)
    frame = logit_lens(model, SEQUENCES, PROMPTS, batch_size=3, pad_token_id=PAD)
    assert list(frame.columns) == COLUMNS
    n_answers = sum(len(s) > p for s, p in zip(SEQUENCES, PROMPTS, strict=True))
    assert len(frame) == N_LAYERS * (len(SEQUENCES) + n_answers)
    assert set(frame["n_layers"]) == {N_LAYERS}
    answers = frame[frame["position"] == "answer"]
    assert set(answers["row"]) == {0, 2}  # empty answers give no "answer" row
    assert dict(zip(answers["row"], answers["n_positions"], strict=True)) == {0: 3, 2: 5}
    assert set(frame.loc[frame["position"] == "last_prompt", "n_positions"]) == {1}

    last = frame[frame["layer"] == N_LAYERS - 1]
    assert (last["kl"].abs() < 1e-6).all(), last
    assert (last["top1_agree"] == 1.0).all()
    earlier = frame[frame["layer"] < N_LAYERS - 1]
    assert (earlier["kl"] > -1e-9).all() and earlier["kl"].max() > 1e-3  # a real comparison
    assert ((frame["entropy"] >= 0) & (frame["entropy"] <= math.log(VOCAB) + 1e-9)).all()


@pytest.mark.parametrize("family", ["qwen2", "opt"])
def test_batching_and_padding_change_nothing(family):
    model = model_of(family)
    target, prompt = [3, 4, 5, 6, 7, 8], 3
    alone = logit_lens(model, [target], [prompt], pad_token_id=PAD)
    longer, shorter = [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21]
    for batch_size in (3, 2):
        mixed = logit_lens(
            model, [longer, target, shorter], [4, prompt, 1], batch_size=batch_size, pad_token_id=7
        )
        for position in ("last_prompt", "answer"):
            torch.testing.assert_close(
                metric_values(mixed, 1, position),
                metric_values(alone, 0, position),
                atol=1e-6,
                rtol=1e-5,
            )


def test_intermediate_blocks_match_a_hand_readout():
    model = model_of("qwen2")
    seq, prompt = SEQUENCES[2], PROMPTS[2]
    lens = metric_values(logit_lens(model, [seq], [prompt], pad_token_id=PAD), 0, "last_prompt")
    for layer in range(N_LAYERS - 1):
        want = manual_metrics(model, seq, layer)[:, prompt - 1]
        torch.testing.assert_close(lens[layer], want, atol=1e-6, rtol=1e-5)

    # Why the lens hooks the blocks instead: the last hidden state transformers returns is
    # already normed, so the head alone gives the logits, and a second norm changes them.
    with torch.no_grad():
        out = model(input_ids=torch.tensor([seq]), output_hidden_states=True, use_cache=False)
        torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)
        twice = model.lm_head(model.model.norm(out.hidden_states[-1]))
    assert (twice - out.logits).abs().max() > 1e-2


def test_answer_rows_average_the_positions_that_predict_the_answer():
    model = model_of("qwen2")
    seq, prompt = [3, 4, 5, 6, 7, 8, 9], 4  # answer [7, 8, 9], predicted at positions 3, 4, 5
    frame = logit_lens(model, [seq], [prompt], pad_token_id=PAD)
    lens = metric_values(frame, 0, "answer")
    assert set(frame.loc[frame["position"] == "answer", "n_positions"]) == {3}
    shifted_differs = False
    for layer in range(N_LAYERS - 1):
        per_position = manual_metrics(model, seq, layer)  # [3, T]
        want = per_position[:, prompt - 1 : prompt + 2].mean(-1)
        torch.testing.assert_close(lens[layer], want, atol=1e-6, rtol=1e-5)
        shifted = per_position[:, prompt : prompt + 3].mean(-1)
        shifted_differs |= bool((shifted - want).abs().max() > 1e-4)
    assert shifted_differs  # the test tells the right window from an off-by-one one


def no_hooks_left(model) -> bool:
    return all(not block._forward_hooks for block in anatomy(model).blocks)


def test_no_hook_outlives_a_call(monkeypatch):
    model = fresh_model("qwen2")
    logit_lens(model, SEQUENCES[:2], PROMPTS[:2], pad_token_id=PAD)
    assert no_hooks_left(model)

    with pytest.raises(IndexError):  # an id past the vocabulary fails in the embedding
        logit_lens(model, [[3, VOCAB + 5, 4]], [2], pad_token_id=PAD)
    assert no_hooks_left(model)

    def boom(*args, **kwargs):
        raise RuntimeError("block failed")

    monkeypatch.setattr(anatomy(model).blocks[2], "forward", boom)  # after two hooks ran
    with pytest.raises(RuntimeError, match="block failed"):
        logit_lens(model, SEQUENCES[:2], PROMPTS[:2], pad_token_id=PAD)
    assert no_hooks_left(model)


def test_unsupported_architecture_is_refused_by_name():
    config = tf.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = tf.GPT2LMHeadModel(config).eval()
    with pytest.raises(UserError, match="LogitLens.*'GPT2LMHeadModel'.*'gpt2'"):
        logit_lens(model, [[3, 4]], [1], pad_token_id=PAD)
    with pytest.raises(UserError, match="'tiny/gpt2'"):
        logit_lens(model, [[3, 4]], [1], pad_token_id=PAD, name="tiny/gpt2")


@pytest.mark.parametrize(
    "sequences,prompts,message",
    [
        ([[3, 4]], [1, 1], "one prompt length per sequence"),
        ([[3, 4]], [0], "prompt length 0"),
        ([[3, 4]], [3], "prompt length 3"),
    ],
)
def test_bad_inputs_are_refused(sequences, prompts, message):
    with pytest.raises(UserError, match=message):
        logit_lens(model_of("qwen2"), sequences, prompts, pad_token_id=PAD)


def test_summary_cis_bracket_the_means():
    model = model_of("qwen2")
    sequences = [[3 + k, 4, 5 + k, 6, 7 + k, 8] for k in range(8)]
    frame = logit_lens(model, sequences, [3] * 8, batch_size=5, pad_token_id=PAD)
    summary = lens_summary(frame, n_boot=200, seed=1)
    assert len(summary) == 2 * N_LAYERS and set(summary["n_sequences"]) == {8}
    for metric in METRICS:
        assert (summary[f"{metric}_ci_low"] <= summary[metric] + 1e-12).all()
        assert (summary[metric] <= summary[f"{metric}_ci_high"] + 1e-12).all()
    means = frame.groupby(["layer", "position"])["kl"].mean()
    for row in summary.itertuples():
        assert row.kl == pytest.approx(means[(row.layer, row.position)])
    first = summary[(summary["layer"] == 0) & (summary["position"] == "answer")].iloc[0]
    assert first.kl_ci_low < first.kl_ci_high  # real spread over sequences

    frame["problem"] = [r % 4 for r in frame["row"]]  # two sequences per problem
    clustered = lens_summary(frame, n_boot=200, seed=1, cluster="problem")
    assert (clustered["kl_ci_low"] <= clustered["kl"] + 1e-12).all()
    with pytest.raises(UserError, match="no column"):
        lens_summary(frame, cluster="missing")
