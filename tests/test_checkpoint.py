"""Generation jobs that survive being killed: finished calls are checkpointed, and a rerun
resumes after them with the rows of an uninterrupted run.

A job to be killed runs in a subprocess (this file run as a script, given a JSON spec);
its sampler's ``sample`` is wrapped so that one call hangs (so the kill lands mid-call, as
a time limit does) or sends the process SIGTERM. Reruns and uninterrupted runs are in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers_models import saved_job_inputs

from powersampling.checkpoints import GenerationStopped, checkpoint_dir
from powersampling.io import read_parquet

TEMPERATURE = ("t15", {"sampler": "temperature", "T": 1.5, "top_k": None, "max_new_tokens": 5})
POWER = ("power", {"sampler": "power", "max_new_tokens": 4, "block_size": 2, "mcmc_steps": 2})
WALL_TIMES = ["shard_decode_time_s", "chain_lifetime_s"]
N_PROBLEMS = 5


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """A toy-shaped model folder and a synthetic task's data file, as the workflow has them."""
    root, task = saved_job_inputs(tmp_path_factory.mktemp("job"), N_PROBLEMS)
    return {"root": str(root), "task": task}


def run_stage(spec: dict, log) -> pd.DataFrame:
    """The generation stage on ``spec``: the job's files, method, seeds, batch, output."""
    from powersampling.stages.generate import generate
    from powersampling.stages.shards import ShardJob

    root = Path(spec["root"])
    job = ShardJob(
        data_path=root / "sums.parquet", model_name="m", model={"source": "toy"},
        model_dir=str(root / "m"), task_name="sums", task=spec["task"], task_seed=0,
        rows=(0, N_PROBLEMS), device="cpu", threads=1, shard=0,
    )  # fmt: skip
    return generate(
        job, method_name=spec["method_name"], method=spec["method"], seeds=spec["seeds"],
        generation={"batch_size": spec["batch"], "progress": False},
        out_path=spec["out"], log=log,
    )  # fmt: skip


def wrap_sample(sampler: str, on_call, set_attribute=setattr) -> None:
    """Make every ``sample`` call of ``sampler``'s class call ``on_call(index)`` first
    (``set_attribute``: how to replace the method, e.g. ``monkeypatch.setattr``)."""
    from powersampling.samplers import sampler_class

    cls = sampler_class(sampler)
    original = cls.sample
    calls = iter(range(10**6))

    def sample(self, *args, **kwargs):
        on_call(next(calls))
        return original(self, *args, **kwargs)

    set_attribute(cls, "sample", sample)


def main(spec_path: str) -> None:
    """A job for a subprocess: its calls from ``hang_from`` on hang, and during call
    ``sigterm_in`` it sends itself SIGTERM; log lines go to ``spec["log"]``."""
    spec = json.loads(Path(spec_path).read_text())

    def on_call(index):
        if index == spec.get("sigterm_in"):
            os.kill(os.getpid(), signal.SIGTERM)
        if index >= spec.get("hang_from", 10**6):
            time.sleep(600)

    wrap_sample(spec["method"]["sampler"], on_call)
    with open(spec["log"], "a", buffering=1) as stream:
        run_stage(spec, lambda line: print(line, file=stream, flush=True))


def spec_for(job_inputs, folder: Path, method, seeds=(0,), batch=2, **extra) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    name, params = method
    return {**job_inputs, "method_name": name, "method": params, "seeds": list(seeds),
            "batch": batch, "out": str(folder / "shard000.parquet"),
            "log": str(folder / "job.log"), **extra}  # fmt: skip


def start_job(spec: dict, folder: Path) -> subprocess.Popen:
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, __file__, str(spec_path)], stderr=subprocess.PIPE)


def wait_for(path: Path, job: subprocess.Popen, timeout_s: float = 300) -> None:
    """Poll until ``path`` exists (the job still running)."""
    began = time.monotonic()
    while not path.exists():
        if job.poll() is not None:
            raise AssertionError(f"the job ended first: {job.stderr.read().decode()[-2000:]}")
        assert time.monotonic() - began < timeout_s, f"no {path} after {timeout_s} s"
        time.sleep(0.05)


def pieces(spec: dict) -> list[str]:
    return sorted(p.name for p in checkpoint_dir(spec["out"]).glob("seed*.piece"))


def decoded_and_read(lines: list[str]) -> tuple[int, int]:
    """Problems decoded and read back, summed over the seeds' summary lines."""
    decoded = read = 0
    for line in lines:
        if "read back from the checkpoint," in line:
            numbers = line.rsplit(":", 1)[1].split()
            read, decoded = read + int(numbers[0]), decoded + int(numbers[-2])
    return decoded, read


def uninterrupted(spec: dict, tmp_path: Path) -> pd.DataFrame:
    """The rows of the same job run in one go, in a fresh folder."""
    fresh = {**spec, "out": str(tmp_path / "uninterrupted" / "shard000.parquet")}
    run_stage(fresh, lambda line: None)
    assert not checkpoint_dir(fresh["out"]).exists()
    return read_parquet(fresh["out"])


def assert_same_rows(spec: dict, reference: pd.DataFrame) -> None:
    frame = read_parquet(spec["out"])
    pd.testing.assert_frame_equal(
        frame.drop(columns=WALL_TIMES), reference.drop(columns=WALL_TIMES)
    )


# 5 problems, 2 a call: calls of 2, 2 and 1 problems per seed.
@pytest.mark.parametrize(
    "method, seeds, finished, last_piece, problems_finished",
    [
        (TEMPERATURE, (0,), 2, "seed0.call00001.piece", 4),  # one generator shared by calls
        (POWER, (0, 1), 4, "seed1.call00000.piece", 7),  # per-row streams; in the 2nd seed
    ],
)
def test_a_job_killed_mid_call_resumes_with_the_rows_of_an_uninterrupted_run(
    job_inputs, tmp_path, method, seeds, finished, last_piece, problems_finished
):
    """SIGKILL while call ``finished`` is being decoded (the calls before it checkpointed);
    the rerun reads those back, decodes the rest, and writes the rows of a run never killed."""
    spec = spec_for(job_inputs, tmp_path / "job", method, seeds)
    job = start_job({**spec, "hang_from": finished}, tmp_path / "job")
    try:
        wait_for(checkpoint_dir(spec["out"]) / last_piece, job)
    finally:
        job.kill()
        job.wait()
    assert job.returncode == -signal.SIGKILL
    assert len(pieces(spec)) == finished and not Path(spec["out"]).exists()

    lines = []
    run_stage(spec, lines.append)
    decoded, read = decoded_and_read(lines)
    n_rows = N_PROBLEMS * len(seeds)
    assert read == problems_finished and decoded == n_rows - read  # no finished call redone
    assert not checkpoint_dir(spec["out"]).exists()  # removed once the Parquet landed
    assert_same_rows(spec, uninterrupted(spec, tmp_path))


def test_sigterm_stops_at_a_call_boundary_with_a_usable_checkpoint(job_inputs, tmp_path):
    """SIGTERM during call 1: the job finishes it, saves it, and exits non-zero before call 2
    (a process killed by SIGTERM would show -15 and lack call 1's piece)."""
    spec = spec_for(job_inputs, tmp_path / "job", TEMPERATURE)
    job = start_job({**spec, "sigterm_in": 1}, tmp_path / "job")
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 1, stderr.decode()[-2000:]
    assert "GenerationStopped" in stderr.decode()
    log = Path(spec["log"]).read_text()
    assert "SIGTERM received: stopped before call 2 of seed 0" in log
    assert pieces(spec) == ["seed0.call00000.piece", "seed0.call00001.piece"]
    assert not Path(spec["out"]).exists()

    lines = []
    run_stage(spec, lines.append)
    assert decoded_and_read(lines) == (1, 4)
    assert_same_rows(spec, uninterrupted(spec, tmp_path))


def stopped_after_two_calls(spec: dict, monkeypatch) -> None:
    """Run ``spec`` in-process until SIGTERM (sent during call 1) stops it: the checkpoint
    then holds calls 0 and 1 of seed 0."""

    def on_call(index):
        if index == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    wrap_sample(spec["method"]["sampler"], on_call, monkeypatch.setattr)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(GenerationStopped, match="stopped before call 2 of seed 0"):
        run_stage(spec, lambda line: None)
    assert signal.getsignal(signal.SIGTERM) is before  # the stage put the old handler back
    monkeypatch.undo()
    assert pieces(spec)[:2] == ["seed0.call00000.piece", "seed0.call00001.piece"]


@pytest.mark.parametrize(
    "change",
    [{"method": (TEMPERATURE[0], {**TEMPERATURE[1], "T": 0.7})}, {"seeds": (0, 1)}],
    ids=["other method parameters", "other seeds"],
)
def test_a_checkpoint_made_from_other_inputs_is_discarded(
    job_inputs, tmp_path, monkeypatch, change
):
    spec = spec_for(job_inputs, tmp_path / "job", TEMPERATURE)
    stopped_after_two_calls(spec, monkeypatch)
    other = spec_for(job_inputs, tmp_path / "job", **{"method": TEMPERATURE, **change})
    lines = []
    run_stage(other, lines.append)
    assert any(line.startswith("discarding checkpoint") for line in lines)
    assert decoded_and_read(lines) == (N_PROBLEMS * len(other["seeds"]), 0)
    assert_same_rows(other, uninterrupted(other, tmp_path))


def damage_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_other_call(path: Path) -> None:
    path.write_bytes(path.with_name("seed0.call00000.piece").read_bytes())


def damage_flipped_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [damage_truncated, damage_other_call, damage_flipped_byte])
def test_a_damaged_piece_is_ignored_and_decoded_again(job_inputs, tmp_path, monkeypatch, damage):
    spec = spec_for(job_inputs, tmp_path / "job", TEMPERATURE)
    stopped_after_two_calls(spec, monkeypatch)
    folder = checkpoint_dir(spec["out"])
    damage(folder / "seed0.call00001.piece")
    # What an atomic write cut short leaves: a hidden temporary file, never read.
    (folder / ".seed0.call00002.piece.x1y2.piece").write_bytes(b"powersampling gen")
    lines = []
    run_stage(spec, lines.append)
    assert any(line.startswith("ignoring checkpoint piece seed0.call00001.piece") for line in lines)
    assert decoded_and_read(lines) == (N_PROBLEMS - 2, 2)  # call 0 read back, 1 and 2 decoded
    assert not folder.exists()
    assert_same_rows(spec, uninterrupted(spec, tmp_path))


if __name__ == "__main__":
    main(sys.argv[1])
