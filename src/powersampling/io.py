"""Parquet schemas and atomic writes.

Every output is written to a temporary file in the destination folder and renamed into
place, so a killed job leaves either the old file or nothing, never a half-written file
a rerun would trust. Schemas pin dtypes so that shards concatenate without surprises.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# A sampler's per-stage diagnostics (a power-sampling block, ...): one record per stage, in
# order, each mapping the keys its class documents in ``TRACE_FIELDS`` to numbers. A map
# rather than a struct, so that a new sampler's diagnostics need no change here.
SAMPLER_TRACE_TYPE = pa.list_(pa.map_(pa.string(), pa.float64()))

# One row per (problem, sample). Power-sampling columns are null for other samplers.
GENERATION_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("problem_id", pa.string()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("sampler", pa.string()),
        ("seed", pa.int64()),
        ("shard", pa.int32()),
        # 0, but for dynamic power sampling: the trajectory whose answer won the vote.
        ("chain", pa.int32()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("completion_ids", pa.list_(pa.int32())),
        ("n_prompt_tokens", pa.int32()),
        ("n_new_tokens", pa.int32()),
        # New tokens this row was allowed: the method's max_new_tokens, or less when the
        # prompt left less room in the model's context (min(budget, context - prompt)).
        ("token_budget", pa.int32()),
        ("finish_reason", pa.string()),  # "eos" | "length"
        ("logp_sum", pa.float64()),  # base model, T=1, full vocabulary
        ("mean_entropy", pa.float64()),  # nats, base model at T=1
        ("perplexity", pa.float64()),  # exp(-logp_sum / n_new_tokens)
        ("self_confidence", pa.float64()),  # mean top-1 probability of the base model
        ("mean_token_prob", pa.float64()),  # mean probability of the chosen tokens (base, T=1)
        ("min_token_logp", pa.float64()),  # the least likely token's log p (base, T=1)
        # log q of the answer under the distribution it was drawn from (temperature, top-k;
        # 0 for greedy): a confidence of the sampler, not of the model.
        ("sampled_logq_sum", pa.float64()),
        ("temperature", pa.float64()),
        # The effective sampling settings, JSON: the sampler and every parameter it used,
        # defaults filled in. A model's shipped generation_config (top-p, top-k, repetition
        # penalty) is never applied; this says so ("generation_config": "ignored").
        ("sampling", pa.string()),
        ("acceptance_rate", pa.float64()),
        ("proposals", pa.int32()),
        ("tokens_decoded", pa.int64()),
        ("tokens_prefilled", pa.int64()),
        # Wall time the job spent decoding the whole shard (model load excluded), the same
        # on every row of the shard: time per answer = shard time / answers, for every
        # sampler alike.
        ("shard_decode_time_s", pa.float64()),
        # Power sampling: from the start of its batch until this row's chain finished.
        # Chains run concurrently, so these overlap and do not add up to a cost.
        ("chain_lifetime_s", pa.float64()),
        ("sampler_trace", SAMPLER_TRACE_TYPE),
    ]
)

GRADED_SCHEMA = GENERATION_SCHEMA.append(pa.field("reference", pa.string()))
for _field in [
    pa.field("extracted", pa.string()),
    pa.field("correct", pa.bool_()),
    pa.field("correct_prm", pa.bool_()),  # PRM800K-style second opinion (MATH-like tasks)
    pa.field("compliant", pa.bool_()),
    pa.field("grader", pa.string()),
    pa.field("error", pa.string()),
    # The problem's difficulty as its task defines it (synthetic: steps of a correct chain;
    # MATH: level 1-5), null where a task has none: metrics break down by it.
    pa.field("difficulty", pa.int32()),
    # Worked answers: reference steps reproduced in order from the first (else null).
    pa.field("steps_correct", pa.int32()),
]:
    GRADED_SCHEMA = GRADED_SCHEMA.append(_field)


def current_umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def default_mode(directory: bool = False) -> int:
    """The mode ``open()`` (0o666) or ``mkdir()`` (0o777) would give under the umask.

    The temporary files and folders of an atomic write are private (0600, 0700) while they
    are written; they get this mode before they are renamed into place, so results are
    as readable to the user's group as any other file they make.
    """
    return (0o777 if directory else 0o666) & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder next to ``path``; it replaces ``path`` only on success.

    An existing ``path`` is moved aside first (a folder cannot be renamed onto a non-empty
    one) and removed once the new one is in place. The folder and everything in it get the
    umask's modes: some writers make their files private (``save_pretrained`` writes its
    safetensors 0600), which would leave a model unreadable to the user's group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        for inner in tmp.rglob("*"):
            if not inner.is_symlink():
                os.chmod(inner, default_mode(directory=inner.is_dir()))
        os.chmod(tmp, default_mode(directory=True))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        writer(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, schema: pa.Schema | None = None):
    """Write ``df`` atomically; with ``schema``, columns are cast to it (missing ones null)."""
    if schema is not None:
        missing = [name for name in schema.names if name not in df.columns]
        df = df.assign(**{name: None for name in missing})
        extra = [c for c in df.columns if c not in schema.names]
        if extra:
            raise ValueError(f"columns not in the schema: {extra}")
        table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    else:
        table = pa.Table.from_pandas(df, preserve_index=False)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """A Parquet table plus a CSV copy beside it for humans (``x.parquet`` → ``x.csv``)."""
    path = Path(path)
    write_parquet(df, path)
    write_atomic(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))


def read_parquet(paths: str | os.PathLike | list) -> pd.DataFrame:
    """Read one Parquet file or concatenate several (an empty list gives an empty frame)."""
    if isinstance(paths, (str, os.PathLike)):
        return pd.read_parquet(paths)
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
