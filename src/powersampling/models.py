"""Load a causal LM and its tokenizer from a hub id or a local folder.

The toy model (a folder written by ``save_pretrained``) and hub models go through the
same ``AutoTokenizer`` / ``AutoModelForCausalLM`` path, so whatever runs on the toy
world runs on a real model unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from powersampling import io
from powersampling.errors import UserError
from powersampling.sources import is_local_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; otherwise any name torch understands."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device!r} is not a device name (try auto, cpu or cuda)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but CUDA is not available here")
    return resolved


def load_model(
    source: str,
    *,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    local_files_only: bool | None = None,
    tokenizer=None,
    quantization: str | None = None,
):
    """Return ``(model, tokenizer)``: the model in eval mode on ``device``, the tokenizer
    padding on the left with a pad token (EOS when the tokenizer has none). A ``tokenizer``
    already loaded with :func:`load_tokenizer` is used as it is (a large vocabulary takes
    seconds to load).

    ``dtype`` is one of auto, float32, bfloat16, float16. ``auto`` keeps the checkpoint's
    dtype on a GPU and uses float32 on a CPU, where half precision is slow and inexact.
    ``local_files_only=None`` leaves the choice to ``transformers`` (``HF_HUB_OFFLINE``).
    ``quantization="4bit"`` loads the weights in 4 bits (bitsandbytes NF4, bfloat16 compute):
    it needs a CUDA device and the bitsandbytes package, and says so otherwise.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {['auto', *DTYPES]}")
    torch_device = resolve_device(device)
    source = _local_or_hub(source)
    if dtype == "auto":
        torch_dtype = "auto" if torch_device.type != "cpu" else torch.float32
    else:
        torch_dtype = DTYPES[dtype]

    quantized = _quantization_config(quantization, torch_device)
    if tokenizer is None:
        tokenizer = load_tokenizer(source, revision=revision, local_files_only=local_files_only)
    with _loading(source):
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch.bfloat16 if quantized else torch_dtype,
            **({"quantization_config": quantized, "device_map": {"": torch_device}}
               if quantized else {}),
            **_hub_kwargs(revision, local_files_only),
        )  # fmt: skip
    if not quantized:  # a quantized model is placed by its device_map
        model.to(torch_device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _quantization_config(quantization: str | None, device: torch.device):
    """transformers' BitsAndBytesConfig for ``quantization``, or None; a UserError when the
    machine cannot load it (no CUDA device, no bitsandbytes)."""
    if quantization is None:
        return None
    if quantization != "4bit":
        raise UserError(f"quantization must be 4bit or null (got {quantization!r})")
    if device.type != "cuda":
        raise UserError(
            f"4-bit loading needs a CUDA GPU (this job runs on {device.type}); load the model "
            "at its dtype (quantization: null) or run the job on a GPU node"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "4-bit loading needs the bitsandbytes package: pip install bitsandbytes "
            "(it is not a dependency of this project)"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


def load_tokenizer(source: str, *, revision: str | None = None, local_files_only=None):
    """The tokenizer of ``source``, padding on the left with a pad token (EOS when the
    tokenizer has none). Cheap: reads no weights."""
    with _loading(source):
        tokenizer = AutoTokenizer.from_pretrained(
            _local_or_hub(source), **_hub_kwargs(revision, local_files_only)
        )
    tokenizer.padding_side = "left"  # batched decoding appends on the right
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer of {source!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_context_length(
    source: str, *, revision: str | None = None, local_files_only=None
) -> int | None:
    """The model's context (``max_position_embeddings``) from its config alone, or None
    when the config does not say. Cheap: reads no weights."""
    with _loading(source):
        config = AutoConfig.from_pretrained(
            _local_or_hub(source), **_hub_kwargs(revision, local_files_only)
        )
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def _local_or_hub(source: str) -> str:
    if is_local_path(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise UserError(f"model folder {source!r} does not exist")
        return str(path)
    return source


def _hub_kwargs(revision: str | None, local_files_only: bool | None) -> dict:
    kwargs = {"revision": revision}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    return kwargs


@contextmanager
def _loading(source: str):
    """transformers reports "not a valid model identifier", "couldn't connect", missing
    files (OSError) or an unusable folder (ValueError); one sentence naming the model is
    what the user needs."""
    try:
        yield
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load model {source!r}: {first_line}") from err


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else value)
    if not ids:
        raise UserError("the model and tokenizer define no EOS token")
    return sorted(int(i) for i in ids)


# --------------------------------------------------------------------------------------
# Staging hub models

# What a generation job needs from a hub repository: configs, safetensors weights and the
# tokenizer. Pickled weights (*.bin, *.pth), other formats and the vendors' Python code are
# left out: transformers has every architecture the configs name built in.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
RECORD_FILE = "download.json"


def download_model(
    hub_id: str,
    out_dir,
    *,
    revision: str | None = None,
    resolve_commit: Callable[[str, str | None], str] | None = None,
    fetch: Callable[..., object] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Stage a hub model into ``out_dir``: configs, safetensors weights, tokenizer.

    ``revision`` (a commit, tag or branch; None: the default branch) is resolved to one
    commit first and every file is fetched from that commit, so a branch that moves during
    the download cannot mix two versions. The folder is written beside ``out_dir`` and
    renamed when complete, with ``download.json`` recording the hub id, the revision asked
    for, the commit fetched and every file's size. Returns that record.

    ``resolve_commit(hub_id, revision) -> sha`` and ``fetch(repo_id=, revision=, local_dir=,
    allow_patterns=)`` default to ``huggingface_hub``'s; tests pass local stand-ins.
    """
    if resolve_commit is None or fetch is None:
        from huggingface_hub import HfApi, snapshot_download

        resolve_commit = resolve_commit or (
            lambda repo, rev: HfApi().model_info(repo, revision=rev).sha
        )
        fetch = fetch or snapshot_download
    try:
        commit = resolve_commit(hub_id, revision)
    except Exception as err:  # hub errors come in many classes; the message is what matters
        raise UserError(f"cannot resolve {hub_id}@{revision or 'default branch'}: {err}") from err
    log(f"downloading {hub_id} at commit {commit} (asked for {revision or 'default branch'})")
    with io.atomic_dir(out_dir) as work:
        try:
            fetch(
                repo_id=hub_id,
                revision=commit,
                local_dir=str(work),
                allow_patterns=MODEL_FILE_PATTERNS,
            )
        except Exception as err:
            raise UserError(f"cannot download {hub_id}@{commit}: {err}") from err
        _drop_hub_bookkeeping(work)
        files = _check_model_files(hub_id, work)
        record = {
            "hub_id": hub_id,
            "revision": revision,
            "commit": commit,
            "files": {name: (work / name).stat().st_size for name in files},
        }
        (work / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    total = sum(record["files"].values())
    log(f"staged {len(files)} files ({total / 2**30:.2f} GiB) in {out_dir}")
    return record


def _drop_hub_bookkeeping(folder: Path) -> None:
    """huggingface_hub keeps its own records in ``.cache/`` of a local_dir download."""
    import shutil

    shutil.rmtree(folder / ".cache", ignore_errors=True)


def _check_model_files(hub_id: str, folder: Path) -> list[str]:
    """The staged files, relative to ``folder``; refuses a folder without config, weights
    or tokenizer (a repository without safetensors weights, a gated one, a dataset id...)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    missing = []
    if "config.json" not in files:
        missing.append("config.json")
    if not any(name.endswith(".safetensors") for name in files):
        missing.append("safetensors weights")
    tokenizer_files = {"tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"}
    if not tokenizer_files & set(files):
        missing.append("a tokenizer")
    if missing:
        raise UserError(
            f"{hub_id} has no {', no '.join(missing)} (files: {', '.join(files) or 'none'})"
        )
    return files
