"""Train the toy model on synthetic problems and save it like a hub checkpoint.

The model learns to continue ``format_prompt(question)`` with the answer's digits and
EOS; the loss is on those tokens only. Training problems are generated afresh from the
seed, minus any question the evaluation will ask (``holdout_questions``), so the toy
model is judged on problems it has never seen. The default budget takes a few CPU
minutes and leaves the model right on some problems and wrong on others, which is what
makes samplers differ measurably.

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
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
import transformers

from powersampling.errors import UserError
from powersampling.io import atomic_dir
from powersampling.seeding import derive_seed, torch_generator
from powersampling.toy.model import build_toy_model, toy_model_config
from powersampling.toy.problems import DEFAULT_GENERATOR, format_prompt, generate_problems
from powersampling.toy.shape import DEFAULT_MODEL_SHAPE
from powersampling.toy.tokenizer import build_char_tokenizer

DEFAULT_TRAIN: dict[str, Any] = {
    "n_problems": 20000,  # distinct training problems (before removing held-out ones)
    "steps": 1500,  # optimiser steps
    "batch_size": 64,
    "learning_rate": 3e-3,
    "warmup_steps": 50,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "log_every": 100,
    "generator": DEFAULT_GENERATOR,
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
    generator = {**DEFAULT_GENERATOR, **(train.pop("generator", None) or {})}
    unknown = sorted(set(generator) - set(DEFAULT_GENERATOR))
    if unknown:
        raise UserError(f"unknown toy generator keys {unknown}; known: {list(DEFAULT_GENERATOR)}")
    cfg = {**DEFAULT_TRAIN, **train, "generator": generator}
    for key in ("n_problems", "steps", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise UserError(f"toy training {key} must be a positive integer, got {cfg[key]!r}")
    return cfg


def training_problems(
    cfg: dict[str, Any], holdout_questions: Iterable[str], seed: int
) -> tuple[pd.DataFrame, int]:
    """The training problems and how many were dropped for being held out."""
    gen = cfg["generator"]
    problems = generate_problems(
        cfg["n_problems"],
        seed=derive_seed(seed, "toy-train-problems"),
        kinds=gen["kinds"],
        num_range=gen["num_range"],
        steps=gen["steps"],
    )
    held_out = problems["question"].isin(set(holdout_questions))
    kept = problems[~held_out].reset_index(drop=True)
    if kept.empty:
        raise UserError("every toy training problem is in the held-out set; raise n_problems")
    return kept, int(held_out.sum())


def encode_examples(tokenizer, problems: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (N, T) and labels (N, T): answer and EOS labelled, rest IGNORE."""
    prompts = [format_prompt(q) for q in problems["question"]]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(list(problems["answer"]), add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(a) + 1 for p, a in zip(prompt_ids, answer_ids, strict=True))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE, dtype=torch.long)
    for row, (p, a) in enumerate(zip(prompt_ids, answer_ids, strict=True)):
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
    problems, n_excluded = training_problems(cfg, holdout_questions, seed)
    ids, labels = encode_examples(tokenizer, problems)  # (N, T) each
    if ids.shape[1] > shape["max_position_embeddings"]:
        raise UserError(
            f"toy training examples are {ids.shape[1]} tokens long, more than "
            f"max_position_embeddings={shape['max_position_embeddings']}; lower the difficulty"
        )
    lengths = (ids != tokenizer.pad_token_id).sum(dim=1)  # (N,)
    log(f"toy training: {len(problems)} problems ({n_excluded} held out), {cfg['steps']} steps")

    config = toy_model_config(len(tokenizer), **shape)
    model = build_toy_model(config, seed=derive_seed(seed, "toy-init"))
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg["learning_rate"],
        betas=(0.9, 0.98),
        weight_decay=cfg["weight_decay"],
    )
    schedule = transformers.get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=cfg["warmup_steps"], num_training_steps=cfg["steps"]
    )
    batches = _batches(len(problems), cfg["batch_size"], derive_seed(seed, "toy-batches"))

    losses = []
    for step in range(1, cfg["steps"] + 1):
        idx = next(batches)
        width = int(lengths[idx].max())  # right padding: columns past this are all pad
        x, y = ids[idx, :width], labels[idx, :width]  # (B, T)
        logits = model(input_ids=x, attention_mask=(x != tokenizer.pad_token_id)).logits
        # Position t predicts token t+1.
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1), ignore_index=IGNORE
        )
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

    model.eval()
    tail = losses[-min(len(losses), 50) :]
    info = {
        "seed": seed,
        "model_shape": shape,
        "train": cfg,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_train_problems": len(problems),
        "n_held_out": n_excluded,
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


def _batches(n: int, batch_size: int, seed: int):
    """Endless batches of row indices: shuffled epochs from a private generator."""
    gen = torch_generator(seed)
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=gen)
        # Drop the ragged tail so every batch has the same size.
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


def _save_atomically(out_dir: Path, model, tokenizer, info: dict[str, Any]) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
