"""Train the toy model on synthetic problems and save it like a hub checkpoint.

The model learns to continue ``format_prompt(question)`` with the worked answer and EOS,
and, on a share of the examples (``instruction_share``), an instruction-style prompt
(:func:`~powersampling.toy.problems.format_instruction_prompt`, two solved examples drawn
from the other training problems) with the bare final answer and EOS: following the
instruction is then something the model has learned, and can fail at. The loss is on the
answer tokens only. Training problems are generated afresh from the seed, minus any
question the evaluation will ask (``holdout_questions``), so the toy model is judged on
problems it has never seen. The default budget takes a few CPU minutes and leaves the
model right on some problems and wrong on others, which is what makes samplers differ
measurably.

The output folder holds ``config.json``, ``model.safetensors``, ``generation_config.json``,
the tokenizer files and ``training.json``; it appears all at once (built next to its
final place and renamed), so a killed run leaves no folder a rerun would trust.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import transformers

from powersampling.errors import UserError
from powersampling.io import atomic_dir
from powersampling.seeding import derive_seed, numpy_rng, torch_generator
from powersampling.toy.model import build_toy_model, toy_model_config
from powersampling.toy.problems import (
    DEFAULT_GENERATOR,
    format_instruction_prompt,
    format_prompt,
    generate_problems,
)
from powersampling.toy.shape import DEFAULT_MODEL_SHAPE
from powersampling.toy.tokenizer import build_char_tokenizer

DEFAULT_TRAIN: dict[str, Any] = {
    "n_problems": 20000,  # distinct training problems (before removing held-out ones)
    "steps": 1300,  # optimiser steps
    "batch_size": 32,
    "learning_rate": 3e-3,
    "warmup_steps": 50,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "log_every": 100,
    "instruction_share": 0.05,  # examples with the instruction-style prompt
    # The tasks' distribution, with shorter chains too: they teach the first steps cheaply.
    "generator": {**DEFAULT_GENERATOR, "steps": [1, 5]},
}
# A budget for tests: a few seconds, a model that is trained but far from good.
TEST_TRAIN: dict[str, Any] = {
    "n_problems": 512,
    "steps": 60,
    "batch_size": 16,
    "warmup_steps": 10,
    "log_every": 20,
}

IGNORE = -100  # label for positions without loss (prompt and padding)


def train_config(train: dict[str, Any] | None = None) -> dict[str, Any]:
    """``DEFAULT_TRAIN`` with ``train``'s keys overriding it (``generator`` key by key)."""
    train = dict(train or {})
    unknown = sorted(set(train) - set(DEFAULT_TRAIN))
    if unknown:
        raise UserError(f"unknown toy training keys {unknown}; known: {list(DEFAULT_TRAIN)}")
    generator = {**DEFAULT_TRAIN["generator"], **(train.pop("generator", None) or {})}
    unknown = sorted(set(generator) - set(DEFAULT_GENERATOR))
    if unknown:
        raise UserError(f"unknown toy generator keys {unknown}; known: {list(DEFAULT_GENERATOR)}")
    cfg = {**DEFAULT_TRAIN, **train, "generator": generator}
    for key in ("n_problems", "steps", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"toy training {key} must be a positive integer, got {cfg[key]!r}")
    if not 0 <= cfg["instruction_share"] <= 1:
        raise UserError(
            f"toy training instruction_share must be in [0, 1], got {cfg['instruction_share']!r}"
        )
    return cfg


def training_problems(
    cfg: dict[str, Any], holdout_questions: Iterable[str], seed: int
) -> tuple[pd.DataFrame, int]:
    """The training problems and how many were dropped for being held out."""
    gen = cfg["generator"]
    problems = generate_problems(
        cfg["n_problems"], seed=derive_seed(seed, "toy-train-problems"), **gen
    )
    held_out = problems["question"].isin(set(holdout_questions))
    kept = problems[~held_out].reset_index(drop=True)
    if kept.empty:
        raise UserError("every toy training problem is in the held-out set; raise n_problems")
    return kept, int(held_out.sum())


def training_prompts(
    problems: pd.DataFrame, instruction_share: float, seed: int
) -> tuple[list[str], list[str], np.ndarray]:
    """Each problem's prompt and target, and which are instruction-style.

    Most get the worked-answer prompt and their solution; a seeded ``instruction_share`` of
    them get the instruction-style prompt and the bare answer, with two other training
    problems of the fewest steps and no distractors as solved examples (as a task's
    instruction-style prompt has, see :func:`~powersampling.toy.problems.few_shot_examples`).
    """
    rng = numpy_rng(derive_seed(seed, "toy-instruction-prompts"))
    n = len(problems)
    questions, answers = list(problems["question"]), list(problems["answer"])
    simplest = (problems["steps"] == problems["steps"].min()) & (problems["distractors"] == 0)
    shot_pool = np.flatnonzero(simplest.to_numpy())
    instructed = (rng.random(n) < instruction_share) & (len(shot_pool) > 2)
    prompts, targets = [], []
    for i in range(n):
        if instructed[i]:
            shots = [j for j in rng.choice(shot_pool, size=3, replace=False) if j != i][:2]
            examples = [(questions[j], answers[j]) for j in shots]
            prompts.append(format_instruction_prompt(questions[i], examples))
            targets.append(answers[i])
        else:
            prompts.append(format_prompt(questions[i]))
            targets.append(problems["solution"].iloc[i])
    return prompts, targets, instructed


def encode_examples(
    tokenizer, prompts: list[str], targets: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (N, T) and labels (N, T): target and EOS labelled, rest IGNORE."""
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(a) + 1 for p, a in zip(prompt_ids, target_ids, strict=True))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE, dtype=torch.long)
    for row, (p, a) in enumerate(zip(prompt_ids, target_ids, strict=True)):
        target = a + [tokenizer.eos_token_id]
        ids[row, : len(p) + len(target)] = torch.tensor(p + target)
        labels[row, len(p) : len(p) + len(target)] = torch.tensor(target)
    return ids, labels


def train_toy_model(
    out_dir: str | os.PathLike,
    *,
    model_shape: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    holdout_questions: Iterable[str] = frozenset(),
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a toy model and save it to ``out_dir`` atomically; returns ``training.json``.

    ``model_shape`` and ``train`` override ``DEFAULT_MODEL_SHAPE`` and ``DEFAULT_TRAIN``.
    The same arguments give bit-identical weights on CPU (same torch build and threads).
    """
    model, tokenizer, info = fit_toy_model(
        model_shape=model_shape,
        train=train,
        holdout_questions=holdout_questions,
        seed=seed,
        log=log,
    )
    _save_atomically(Path(out_dir), model, tokenizer, info)
    log(f"toy model saved to {out_dir} (loss {info['final_loss']:.4f}, {info['seconds']:.0f}s)")
    return info


@dataclass(frozen=True)
class TrainingSet:
    """The encoded training examples, and how many problems were kept and held out."""

    n_problems: int  # training problems kept (one example each)
    n_held_out: int  # generated problems dropped for being asked in the evaluation
    ids: torch.Tensor  # (N, T) right-padded token ids
    labels: torch.Tensor  # (N, T): target and EOS labelled, the rest IGNORE
    lengths: torch.Tensor  # (N,) tokens before the padding
    instructed: np.ndarray  # (N,) whether the example has the instruction-style prompt


def training_set(
    tokenizer, cfg: dict[str, Any], holdout_questions: Iterable[str], seed: int, max_positions: int
) -> TrainingSet:
    """The problems, prompts and targets of training, encoded; a UserError if an example is
    longer than ``max_positions`` tokens."""
    problems, n_excluded = training_problems(cfg, holdout_questions, seed)
    prompts, targets, instructed = training_prompts(problems, cfg["instruction_share"], seed)
    ids, labels = encode_examples(tokenizer, prompts, targets)  # (N, T) each
    if ids.shape[1] > max_positions:
        raise UserError(
            f"toy training examples are {ids.shape[1]} tokens long, more than "
            f"max_position_embeddings={max_positions}; lower the difficulty"
        )
    lengths = (ids != tokenizer.pad_token_id).sum(dim=1)  # (N,)
    return TrainingSet(len(problems), n_excluded, ids, labels, lengths, instructed)


def fit_toy_model(
    *,
    model_shape: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    holdout_questions: Iterable[str] = frozenset(),
    seed: int = 0,
    log: Callable[[str], None] = print,
):
    """Train in memory; returns ``(model, tokenizer, info)`` (see :func:`train_toy_model`)."""
    start = time.perf_counter()
    shape = {**DEFAULT_MODEL_SHAPE, **(model_shape or {})}
    cfg = train_config(train)
    tokenizer = build_char_tokenizer(model_max_length=shape["max_position_embeddings"])
    data = training_set(
        tokenizer, cfg, holdout_questions, seed, max_positions=shape["max_position_embeddings"]
    )
    log(
        f"toy training: {data.n_problems} problems ({data.n_held_out} held out), "
        f"{cfg['steps']} steps"
    )

    config = toy_model_config(len(tokenizer), **shape)
    model = build_toy_model(config, seed=derive_seed(seed, "toy-init"))
    losses = _optimise(
        model,
        config,
        data,
        cfg,
        pad_token_id=tokenizer.pad_token_id,
        moe=shape["architecture"] == "moe",
        seed=seed,
        start=start,
        log=log,
    )
    model.eval()
    tail = losses[-min(len(losses), 50) :]
    info = {
        "seed": seed,
        "model_shape": shape,
        "train": cfg,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_train_problems": data.n_problems,
        "n_held_out": data.n_held_out,
        "steps": cfg["steps"],
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),  # mean over the last (up to) 50 steps
        "seconds": time.perf_counter() - start,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    if not math.isfinite(info["final_loss"]):
        raise RuntimeError(f"toy training diverged (final loss {info['final_loss']})")
    return model, tokenizer, info


def _optimise(
    model,
    config,
    data: TrainingSet,
    cfg: dict[str, Any],
    *,
    pad_token_id: int,
    moe: bool,
    seed: int,
    start: float,
    log: Callable[[str], None],
) -> list[float]:
    """Train ``model`` in place for ``cfg["steps"]`` AdamW steps (cosine schedule with
    warmup, gradient clipping); returns each step's loss."""
    model.train()
    router = {"output_router_logits": True} if moe else {}
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg["learning_rate"],
        betas=(0.9, 0.98),
        weight_decay=cfg["weight_decay"],
    )
    schedule = transformers.get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=cfg["warmup_steps"], num_training_steps=cfg["steps"]
    )
    # Instruction-style prompts are about twice as long as worked-answer ones: batches take
    # one kind at a time, so that the short ones are not padded to the long ones' width.
    batches = _mixed_batches(
        [np.flatnonzero(~data.instructed), np.flatnonzero(data.instructed)],
        [1 - cfg["instruction_share"], cfg["instruction_share"]],
        cfg["batch_size"],
        derive_seed(seed, "toy-batches"),
        data.lengths,
    )

    losses = []
    for step in range(1, cfg["steps"] + 1):
        idx = next(batches)
        width = int(data.lengths[idx].max())  # right padding: columns past this are all pad
        x, y = data.ids[idx, :width], data.labels[idx, :width]  # (B, T)
        loss = _batch_loss(model, config, x, y, pad_token_id, router)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % cfg["log_every"] == 0 or step == cfg["steps"]:
            recent = sum(losses[-cfg["log_every"] :]) / len(losses[-cfg["log_every"] :])
            log(
                f"step {step}/{cfg['steps']} loss {recent:.4f} ({time.perf_counter() - start:.0f}s)"
            )
    return losses


def _batch_loss(model, config, x, y, pad_token_id: int, router: dict) -> torch.Tensor:
    """Next-token cross-entropy of a batch on its labelled positions (plus, for a mixture
    of experts, its load-balancing loss)."""
    out = model(input_ids=x, attention_mask=(x != pad_token_id), **router)
    logits = out.logits
    # Position t predicts token t+1.
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1), ignore_index=IGNORE
    )
    if router:  # a mixture of experts: its load-balancing loss, as Mixtral trains with
        loss = loss + config.router_aux_loss_coef * out.aux_loss
    return loss


def _mixed_batches(
    pools: list[np.ndarray],
    weights: list[float],
    batch_size: int,
    seed: int,
    lengths: torch.Tensor,
):
    """Endless batches of row indices, each from one pool, the pool drawn by ``weights``
    (empty pools skipped); each pool is walked in shuffled epochs (:func:`_batches`).
    Seeded, so the same arguments give the same batches."""
    kept = [(pool, w) for pool, w in zip(pools, weights, strict=True) if len(pool) and w > 0]
    streams = [
        _batches(pool, batch_size, derive_seed(seed, i), lengths)
        for i, (pool, _) in enumerate(kept)
    ]
    probs = np.array([w for _, w in kept]) / sum(w for _, w in kept)
    rng = numpy_rng(seed)
    while True:
        yield next(streams[int(rng.choice(len(streams), p=probs))])


# Rows are grouped into batches of similar length within windows of this many batches, so
# that little of a batch is padding while batches still mix the whole pool.
_LENGTH_WINDOW = 32


def _batches(rows: np.ndarray, batch_size: int, seed: int, lengths: torch.Tensor):
    """Endless batches of ``rows`` in shuffled epochs from a private generator: each window
    of ``_LENGTH_WINDOW`` batches is sorted by length, cut into batches, and those batches
    are shuffled (similar lengths pad little)."""
    gen = torch_generator(seed)
    rows = torch.as_tensor(rows, dtype=torch.long)
    batch_size = min(batch_size, len(rows))
    window = batch_size * _LENGTH_WINDOW
    while True:
        order = rows[torch.randperm(len(rows), generator=gen)]
        # Drop the ragged tail so every batch has the same size.
        order = order[: len(order) - len(order) % batch_size]
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
            batches = chunk.view(-1, batch_size)
            yield from batches[torch.randperm(len(batches), generator=gen)]


def _save_atomically(out_dir: Path, model, tokenizer, info: dict[str, Any]) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
