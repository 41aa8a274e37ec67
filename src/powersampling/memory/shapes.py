"""The shape of a generation job: the model's dimensions from its config (no weights),
the dtype, the sampler's decoder and rows per prompt, the prompts' and answers' lengths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from powersampling.errors import UserError
from powersampling.models import DTYPES


def resolve_dtype(dtype: torch.dtype | str, config, device_type: str = "cuda") -> torch.dtype:
    """The dtype a model will be loaded in: as :func:`powersampling.models.load_model` does,
    ``auto`` is the checkpoint's dtype on a GPU and float32 on a CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device_type == "cpu":
            return torch.float32
        published = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(published, str):
            published = DTYPES.get(published)
        return published if isinstance(published, torch.dtype) else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {['auto', *DTYPES]}")
    return DTYPES[dtype]


_PARAMETER_COUNTS: dict[str, int] = {}  # config JSON -> parameters (meta builds are not free)


def parameter_count(config) -> int:
    """The exact number of parameters of the model ``config`` describes (built on the meta
    device, so a 7B model costs nothing; tied embeddings count once)."""
    key = f"{type(config).__name__}:{config.to_json_string(use_diff=False)}"
    if key not in _PARAMETER_COUNTS:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = AutoModelForCausalLM.from_config(config)
        _PARAMETER_COUNTS[key] = sum(p.numel() for p in model.parameters())
    return _PARAMETER_COUNTS[key]


def attention_dims(config) -> tuple[int, int, int, int]:
    """(layers, heads, kv_heads, head_dim) of a config, as the RollingDecoder reads them:
    kv_heads default to the heads, head_dim to hidden / heads."""
    text = config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, heads, kv_heads, head_dim


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token adds to the cache: layers × 2 × kv_heads ×
    head_dim × dtype bytes."""
    layers, _, kv_heads, head_dim = attention_dims(config)
    return layers * 2 * kv_heads * head_dim * dtype.itemsize


@dataclass(frozen=True)
class JobShape:
    """Everything the memory of a job depends on, except the batch size and chain store."""

    sampler: str
    decoder: str  # the sampler's DECODER: "static", "rolling" or "particles"
    dtype: torch.dtype
    n_params: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    kv_per_token: int  # bytes, kv_bytes_per_token
    prompt_tokens: int  # the longest prompt
    max_new_tokens: int
    quantization: str | None = None  # "4bit": the linear layers' weights in NF4
    rows_per_prompt: int = 1  # rows a prompt takes (the sampler's rows_per_prompt)

    @property
    def dtype_bytes(self) -> int:
        return self.dtype.itemsize

    @property
    def weights(self) -> int:
        if self.quantization is None:
            return self.n_params * self.dtype_bytes
        # NF4 stores 4 bits per weight plus one float32 scale per block of 64 (4.5 bits);
        # the embeddings and the LM head stay in the compute dtype (counted both, as if
        # untied: an upper bound).
        embeddings = 2 * self.vocab * self.hidden
        quantized = max(self.n_params - embeddings, 0) * 4.5 / 8
        return int(quantized + embeddings * self.dtype_bytes)

    @property
    def keeps_caches(self) -> bool:
        """Whether its decoder keeps prompt and chain caches between proposals, which may
        live on the device or in host memory (the RollingDecoder)."""
        return self.decoder == "rolling"

    @property
    def max_len(self) -> int:
        """The longest row: prompt + new tokens (the RollingDecoder's ``max_len``)."""
        return self.prompt_tokens + self.max_new_tokens


def job_shape(
    config,
    dtype: torch.dtype,
    method: dict[str, Any],
    prompt_lengths: Sequence[int],
    quantization: str | None = None,
) -> JobShape:
    """The shape of one generation job; the method's defaults are filled in by its sampler,
    which also says what decodes its rows and how many rows a prompt takes."""
    from powersampling.samplers import method_params, sampler_class

    if not prompt_lengths or min(prompt_lengths) < 1:
        raise UserError("a memory plan needs the token length of at least one non-empty prompt")
    params = method_params(method)
    sampler = sampler_class(method["sampler"])
    text = config.get_text_config()
    layers, heads, kv_heads, head_dim = attention_dims(config)
    return JobShape(
        sampler=method["sampler"],
        decoder=sampler.DECODER,
        dtype=dtype,
        n_params=parameter_count(config),
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        vocab=text.vocab_size,
        kv_per_token=kv_bytes_per_token(config, dtype),
        prompt_tokens=max(prompt_lengths),
        max_new_tokens=params["max_new_tokens"],
        quantization=quantization,
        rows_per_prompt=sampler.rows_per_prompt(params),
    )
