"""Greedy decoding and token-level temperature sampling: one engine call each."""

from __future__ import annotations

import torch

from powersampling.samplers import (
    REQUIRED,
    Sampler,
    check_positive_float,
    check_positive_int,
    completion_record,
)


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
    PARAMS = {"max_new_tokens": REQUIRED}

    def __init__(self, engine, **params):
        super().__init__(engine, **params)
        check_positive_int(self.name, "max_new_tokens", self.params["max_new_tokens"])

    def sample(
        self, prompts: list[list[int]], generator: torch.Generator | None = None
    ) -> list[dict]:
        ext = self.engine.extend(prompts, self.params["max_new_tokens"], greedy=True)
        return _records(prompts, ext, temperature=0.0)  # greedy is recorded as T = 0


class TemperatureSampler(Sampler):
    """Ancestral sampling from softmax(logits / T), optionally restricted to the top-k tokens."""

    name = "temperature"
    PARAMS = {"T": REQUIRED, "top_k": None, "max_new_tokens": REQUIRED}

    def __init__(self, engine, **params):
        super().__init__(engine, **params)
        check_positive_float(self.name, "T", self.params["T"])
        check_positive_int(self.name, "top_k", self.params["top_k"], allow_none=True)
        check_positive_int(self.name, "max_new_tokens", self.params["max_new_tokens"])

    def sample(self, prompts: list[list[int]], generator: torch.Generator) -> list[dict]:
        ext = self.engine.extend(
            prompts,
            self.params["max_new_tokens"],
            temperature=float(self.params["T"]),
            top_k=self.params["top_k"],
            generator=generator,
        )
        return _records(prompts, ext, temperature=float(self.params["T"]))
