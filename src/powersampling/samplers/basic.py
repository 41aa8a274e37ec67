"""Greedy decoding and token-level temperature sampling: one engine call each."""

from __future__ import annotations

import torch

from powersampling.samplers.base import Param, Sampler, completion_record, token_budgets

MAX_NEW_TOKENS = Param({"type": "integer", "minimum": 1}, "Most new tokens per answer.")


def _records(prompts, ext, temperature: float, budgets: list[int]) -> list[dict]:
    return [
        completion_record(
            ext.tokens[i],
            ext.logp[i],
            ext.entropy[i],
            ext.top1[i],
            ext.finish_reason[i],
            temperature=temperature,
            tokens_decoded=len(ext.tokens[i]),
            tokens_prefilled=len(prompts[i]),
            token_budget=budgets[i],
            logq=ext.logq[i],
        )
        for i in range(len(prompts))
    ]


class GreedySampler(Sampler):
    """The most likely next token at every step (ties: the lowest token id)."""

    name = "greedy"
    DETERMINISTIC = True
    PARAMS = {"max_new_tokens": MAX_NEW_TOKENS}

    def sample(
        self,
        prompts: list[list[int]],
        generator: torch.Generator | None = None,
        budgets: list[int] | None = None,
    ) -> list[dict]:
        budgets = token_budgets(budgets, len(prompts), self.params["max_new_tokens"])
        ext = self.engine.extend(prompts, budgets, greedy=True)
        return _records(prompts, ext, 0.0, budgets)  # greedy is recorded as T = 0


class TemperatureSampler(Sampler):
    """Ancestral sampling from softmax(logits / T), optionally restricted to the top-k tokens."""

    name = "temperature"
    PARAMS = {
        "T": Param({"type": "number", "exclusiveMinimum": 0}, "Sampling temperature."),
        "top_k": Param(
            {"type": ["integer", "null"], "minimum": 1},
            "Sample from the k most likely tokens only (null: the whole vocabulary). "
            "transformers' generate() applies top_k=50 when neither the call nor the model's "
            "generation_config.json sets it, so published runs that called generate() "
            "without top_k sampled from the 50 most likely tokens: set 50 to reproduce them.",
            default=None,
        ),
        "max_new_tokens": MAX_NEW_TOKENS,
    }

    def sample(
        self,
        prompts: list[list[int]],
        generator: torch.Generator,
        budgets: list[int] | None = None,
    ) -> list[dict]:
        budgets = token_budgets(budgets, len(prompts), self.params["max_new_tokens"])
        ext = self.engine.extend(
            prompts,
            budgets,
            temperature=float(self.params["T"]),
            top_k=self.params["top_k"],
            generator=generator,
        )
        return _records(prompts, ext, float(self.params["T"]), budgets)
