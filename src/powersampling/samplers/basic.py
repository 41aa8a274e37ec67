"""Greedy decoding and token-level temperature sampling: one engine call each."""

from __future__ import annotations

import torch

from powersampling.samplers.base import Param, Sampler, completion_record

MAX_NEW_TOKENS = Param({"type": "integer", "minimum": 1}, "Most new tokens per answer.")


def _records(prompts, ext, temperature: float) -> list[dict]:
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
        )
        for i in range(len(prompts))
    ]


class GreedySampler(Sampler):
    """The most likely next token at every step (ties: the lowest token id)."""

    name = "greedy"
    PARAMS = {"max_new_tokens": MAX_NEW_TOKENS}

    def sample(
        self, prompts: list[list[int]], generator: torch.Generator | None = None
    ) -> list[dict]:
        ext = self.engine.extend(prompts, self.params["max_new_tokens"], greedy=True)
        return _records(prompts, ext, temperature=0.0)  # greedy is recorded as T = 0


class TemperatureSampler(Sampler):
    """Ancestral sampling from softmax(logits / T), optionally restricted to the top-k tokens."""

    name = "temperature"
    PARAMS = {
        "T": Param({"type": "number", "exclusiveMinimum": 0}, "Sampling temperature."),
        "top_k": Param(
            {"type": ["integer", "null"], "minimum": 1},
            "Sample from the k most likely tokens only (null: the whole vocabulary).",
            default=None,
        ),
        "max_new_tokens": MAX_NEW_TOKENS,
    }

    def sample(self, prompts: list[list[int]], generator: torch.Generator) -> list[dict]:
        ext = self.engine.extend(
            prompts,
            self.params["max_new_tokens"],
            temperature=float(self.params["T"]),
            top_k=self.params["top_k"],
            generator=generator,
        )
        return _records(prompts, ext, temperature=float(self.params["T"]))
