"""Checkpoints of a generation job: finished calls survive a kill, and a rerun resumes.

A job writes each finished sampler call (a batch of prompts) of each seed as one *piece* in
a folder beside its output, ``<output>.checkpoint/``::

    inputs.json                  the key, and what it was made from (for humans)
    seed<seed>.call<k>.piece     call k's rows, its decode time, the generator after it

The folder is keyed by a hash of everything that determines the rows (:func:`inputs_key`);
every piece repeats the key. A folder made from other inputs is discarded whole when the job
opens it, never mixed. Pieces are written atomically (:mod:`powersampling.io`) and carry a
SHA-256 of their payload, so a piece cut short (a crash mid-write, a full disk) fails its
check and is ignored: the job decodes that call again. The folder goes once the shard's
Parquet has landed.

A piece's payload is a pickle of the sampler's records, exact to the bit (floats, lists,
trace dicts); it is only ever read back by the job that wrote it, from its own results.

SIGTERM (Slurm's notice before a time limit or a preemption) is turned into a request
(:func:`stop_on_sigterm`): the job finishes the call under way, writes its piece, and stops
before decoding the next one with :class:`GenerationStopped`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from powersampling import io

# Bump when what a piece holds, or what the sampler records in it mean, changes: a checkpoint
# written by other code is then refused (its key differs) instead of read back.
CHECKPOINT_FORMAT = 1

PIECE_MAGIC = b"powersampling generation checkpoint piece\n"
INPUTS_FILE = "inputs.json"


class GenerationStopped(Exception):
    """A job asked to stop (SIGTERM) stopped at a call boundary; its finished calls are in
    its checkpoint, and a rerun resumes after them."""


def checkpoint_dir(out_path: str | os.PathLike) -> Path:
    """The checkpoint folder of the output ``out_path`` (beside it: not a declared output,
    so Snakemake leaves it when it deletes a failed job's output)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".checkpoint")


# ------------------------------------------------------------------ the key


def digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys; arrays as lists)."""
    text = json.dumps(value, sort_keys=True, default=_as_json, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _as_json(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars: every element, never elided
        return value.tolist()
    return str(value)


def inputs_key(inputs: dict[str, Any]) -> str:
    """The key of a job's checkpoint: a hash of its ``inputs`` and the checkpoint format."""
    return digest({"checkpoint_format": CHECKPOINT_FORMAT, "inputs": inputs})


def model_fingerprint(folder: str | os.PathLike) -> dict[str, Any]:
    """What identifies a model folder without reading its weights: config.json's content,
    and every file's relative path, size and modification time (a changed or re-staged
    weight file changes its size or time; hidden files are left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {"source": str(folder)}
    config = folder / "config.json"
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        # Hidden files (locks, caches a loader may leave) say nothing of the model.
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            files.append([str(relative), stat.st_size, stat.st_mtime_ns])
    return {
        "config": config.read_text() if config.is_file() else None,
        "files": files,
    }


def file_digests(files: dict[str, str]) -> dict[str, str]:
    """SHA-256 of each file's content (a job's small extra inputs: a controller)."""
    digests = {}
    for name, path in sorted(files.items()):
        sha = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                sha.update(block)
        digests[name] = sha.hexdigest()
    return digests


# ------------------------------------------------------------------ stop requests


@dataclass
class StopRequest:
    """Set by a signal handler; read at call boundaries."""

    signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_sigterm(log: Callable[[str], None]) -> Iterator[StopRequest]:
    """While inside, SIGTERM sets the yielded request instead of ending the process; the old
    handler is put back on leaving. Outside the main thread (where Python cannot install
    handlers) the request is never set, and SIGTERM keeps its old effect."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        log("not in the main thread: SIGTERM will not wait for a call boundary")
        yield request
        return

    def handler(signum, frame):
        # No logging here: the handler may run inside a logging call of the main thread.
        request.signal_name = signal.Signals(signum).name

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ pieces


@dataclass(frozen=True)
class Piece:
    """One finished sampler call: its rows, wall time, and the shared generator after it."""

    records: list[dict]
    decode_time_s: float
    generator_state: bytes | None


class ShardCheckpoint:
    """The checkpoint folder of one generation job, opened for inputs with key ``key``."""

    def __init__(self, folder: Path, key: str, log: Callable[[str], None], stop: StopRequest):
        self.folder = folder
        self.key = key
        self.log = log
        self.stop = stop

    @classmethod
    def open(
        cls,
        out_path: str | os.PathLike,
        inputs: dict[str, Any],
        log: Callable[[str], None],
        stop: StopRequest | None = None,
    ) -> ShardCheckpoint:
        """The checkpoint of ``out_path`` for ``inputs``: the existing folder when it was made
        from the same inputs, else a new empty one (a foreign folder is discarded, logged)."""
        folder = checkpoint_dir(out_path)
        key = inputs_key(inputs)
        stop = StopRequest() if stop is None else stop  # (an unset request is falsy)
        if folder.exists():
            found = _folder_key(folder)
            if found == key:
                pieces = len(list(folder.glob("seed*.piece")))
                log(f"checkpoint {folder}: {pieces} finished calls of these inputs")
                return cls(folder, key, log, stop)
            log(
                f"discarding checkpoint {folder}: made from other inputs (key {found or 'absent'}"
                f", this job's {key}); decoding from scratch"
            )
            shutil.rmtree(folder)
        with io.atomic_dir(folder) as tmp:
            text = json.dumps({"key": key, "inputs": inputs}, indent=1, sort_keys=True)
            (tmp / INPUTS_FILE).write_text(text + "\n")
        return cls(folder, key, log, stop)

    def piece_path(self, seed: int, call: int) -> Path:
        return self.folder / f"seed{seed}.call{call:05d}.piece"

    def read(self, seed: int, call: int, span: tuple[int, int], problem_ids: list) -> Piece | None:
        """Call ``call`` of ``seed`` (rows ``span`` of the shard, problems ``problem_ids``)
        as written by a job with this key, or None: absent, or unusable (logged)."""
        path = self.piece_path(seed, call)
        if not path.exists():
            return None
        try:
            payload = _read_piece(path)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as err:
            self.log(f"ignoring checkpoint piece {path.name}: {err}")
            return None
        expected = {"key": self.key, "seed": seed, "call": call, "span": list(span),
                    "problem_ids": [str(p) for p in problem_ids]}  # fmt: skip
        wrong = [name for name, value in expected.items() if payload.get(name) != value]
        if wrong or len(payload.get("records", ())) != span[1] - span[0]:
            self.log(f"ignoring checkpoint piece {path.name}: its {wrong or 'rows'} differ")
            return None
        return Piece(payload["records"], payload["decode_time_s"], payload["generator_state"])

    def write(
        self, seed: int, call: int, span: tuple[int, int], problem_ids: list, piece: Piece
    ) -> None:
        """Save call ``call`` of ``seed`` atomically."""
        payload = pickle.dumps(
            {
                "key": self.key, "seed": seed, "call": call, "span": list(span),
                "problem_ids": [str(p) for p in problem_ids], "records": piece.records,
                "decode_time_s": piece.decode_time_s, "generator_state": piece.generator_state,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )  # fmt: skip
        check = hashlib.sha256(payload).hexdigest().encode()
        path = self.piece_path(seed, call)
        io.write_atomic(path, lambda tmp: tmp.write_bytes(PIECE_MAGIC + check + b"\n" + payload))

    def before_decoding(self, seed: int, call: int) -> None:
        """Raise :class:`GenerationStopped` (logged) if the job was asked to stop: called at
        each boundary where a call is about to be decoded, never after the last one."""
        if not self.stop:
            return
        message = (
            f"{self.stop.signal_name} received: stopped before call {call} of seed {seed}; "
            f"the finished calls are in {self.folder}, and a rerun resumes after them"
        )
        self.log(message)
        raise GenerationStopped(message)

    def remove(self) -> None:
        """Delete the folder (the shard's output has landed)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.log(f"removed checkpoint {self.folder}")


def _folder_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / INPUTS_FILE).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_piece(path: Path) -> dict:
    data = path.read_bytes()
    if not data.startswith(PIECE_MAGIC):
        raise ValueError("not a checkpoint piece (cut short?)")
    check, _, payload = data[len(PIECE_MAGIC) :].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != check:
        raise ValueError("its checksum does not match (cut short or damaged)")
    payload = pickle.loads(payload)
    if not isinstance(payload, dict):
        raise ValueError("not a checkpoint piece")
    return payload


def generator_state(generator) -> bytes | None:
    """The state of a torch generator as bytes (None for no generator)."""
    if generator is None:
        return None
    return generator.get_state().numpy().tobytes()


def restore_generator(generator, state: bytes | None) -> None:
    """Put ``generator`` in the saved ``state`` (draws then continue as they did)."""
    if generator is None or state is None:
        return
    import torch

    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
