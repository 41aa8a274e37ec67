"""What Slurm is asked for is what the jobs plan with: the paper-scale configs' submit lines,
captured by a fake ``sbatch`` under the project's profile, carry each generation job's
memory plan; and a job planning within the memory it was given picks the CLI's batch.

The fake cluster (``sbatch``, ``sacct``, ``squeue``, ``scontrol``, ``sinfo``, ``sacctmgr``
on PATH) records every submit line and reports every job failed: nothing runs, no GPU or
weights are needed, and the run ends once every targeted job was submitted once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from powersampling.config import decoding_method, load_config, n_shards
from powersampling.memory import plan_config, plan_memory
from powersampling.memory.resources import config_of_model, generation_mem_mb
from powersampling.samplers import sampler_class
from powersampling.sources import model_source
from powersampling.studies import planned_runs
from workflow_helpers import ROOT, copy_workflow

SCHEMA = ROOT / "config" / "schema.yaml"
GIB, MIB = 2**30, 2**20

FAKE_SLURM = {
    # A unique id per call (the pid: calls may run at once), the submit line recorded.
    "sbatch": 'id=$$\nprintf "%s\\n" "$id $*" >> "$FAKE_SLURM_DIR/sbatch.log"\n'
    '[ -t 0 ] || cat > /dev/null\necho "$id"\n',
    "sacct": '[ -f "$FAKE_SLURM_DIR/sbatch.log" ] && '
    'awk \'{print $1"|FAILED"}\' "$FAKE_SLURM_DIR/sbatch.log"\nexit 0\n',
    "squeue": "exit 0\n",
    "scontrol": 'echo "MinJobAge = 300 sec"\n',
    "sinfo": 'echo "gpu*"\n',
    "sacctmgr": 'echo "<your-account>"\n',
}


def fake_cluster(folder: Path) -> dict[str, str]:
    """The fake Slurm commands in ``folder/bin``; the environment that puts them first."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in FAKE_SLURM.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SLURM_DIR": str(folder),
    }


def generation_targets(config: dict, workdir: Path) -> dict[tuple[str, str], str]:
    """One generation shard per (model, method) of the config whose job reads nothing the
    workflow makes besides data and model (a dps method reads a trained controller), its
    inputs made to exist (empty placeholders: nothing reads them)."""
    targets = {}
    for run in planned_runs(config):
        method = config["methods"][run.method]
        if sampler_class(method["sampler"]).job_files(method, config, run.task, run.model):
            continue
        (workdir / "data").mkdir(exist_ok=True)
        (workdir / f"data/{run.task}.parquet").touch()
        (workdir / model_source(config, run.model).folder).mkdir(parents=True, exist_ok=True)
        last = n_shards(config, run.task) - 1
        key = (run.model, run.method)
        targets.setdefault(key, f"results/generations/{run.task}/{run.model}/{run.method}/"
                                f"shard{last:03d}.parquet")  # fmt: skip
    return targets


def submit_lines(folder: Path) -> dict[tuple[str, str], str]:
    """(model, method) → the sbatch arguments of its generation job."""
    lines = {}
    for line in (folder / "sbatch.log").read_text().splitlines():
        comment = re.search(r"--comment rule_generate_wildcards_(\S+)", line)
        if comment:
            lines[comment.group(1)] = line
    return lines


def flag(args: str, name: str) -> str:
    return re.search(rf"(?:^| ){name}[ =](\S+)", args).group(1)


@pytest.mark.slow  # a minute each: Snakemake submits every shard of a paper-scale DAG
@pytest.mark.parametrize("name", ["paper.yaml", "truncation.yaml", "dps.yaml"])
def test_submit_lines_carry_the_generation_jobs_memory_plan(name, tmp_path):
    config = load_config(ROOT / "config" / name, SCHEMA)
    workdir = copy_workflow(tmp_path / "project")
    env = fake_cluster(tmp_path / "slurm")
    targets = generation_targets(config, workdir)
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(ROOT / "profiles" / "slurm"),
         "--configfile", f"config/{name}", "--retries", "0", "--latency-wait", "0",
         "--seconds-between-status-checks", "1",
         "--slurm-init-seconds-before-status-checks", "1", *targets.values()],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = run.stdout[-3000:] + run.stderr[-3000:]
    submitted = submit_lines(tmp_path / "slurm")
    for (model, method), target in targets.items():
        task, shard = target.split("/")[2], target.rsplit("shard", 1)[1][:3]
        args = submitted.get(f"{task}_{model}_{method}_{shard}")
        assert args is not None, f"{target} was not submitted\n{log}"
        expected = generation_mem_mb(config, model, decoding_method(config, method))
        assert int(flag(args, "--mem")) == expected, (model, method, args)
        assert flag(args, "--gpus") == "1", args
        # The profile overrides nothing the rule plans: no second --mem or time limit.
        assert args.count("--mem") == 1 and args.count(" -t ") == 1, args


def test_a_job_given_its_planned_memory_plans_the_clis_batch():
    """The CLI's plan and the job's (its host memory bounded by what Slurm gave it: the
    rule's mem_mb) pick the same batch and cache store, on an 80 GB card and on a 24 GB one
    where Phi-3.5's power-sampling caches would fit more rows in host memory: the config
    names no device size, so its jobs ask for no host memory for caches, and plan none."""
    config = load_config(ROOT / "config" / "paper.yaml", SCHEMA)
    for gpu_gib in (80, 24):
        device = gpu_gib * GIB
        for job in plan_config(config, device):
            if job.plan is None:
                continue
            method = decoding_method(config, job.method)
            given = generation_mem_mb(config, job.model, method) * MIB
            mine = plan_memory(
                config_of_model(config, job.model),
                config["models"][job.model].get("dtype", "auto"),
                method,
                [config["generation"]["plan_prompt_tokens"]],
                config["generation"]["batch_size"],
                device,
                host_bytes=given,
            )
            assert (mine.batch, mine.chain_store) == (job.plan.batch, job.plan.chain_store)
            assert mine.host_need <= given


def test_host_allocation_reads_slurm_and_the_cgroup(tmp_path):
    from powersampling.memory.devices import host_allocation

    (tmp_path / "memory.max").write_text("8589934592\n")
    assert host_allocation({}, tmp_path) == (8 * GIB, "the cgroup's memory.max")
    env = {"SLURM_MEM_PER_NODE": "4096"}
    assert host_allocation(env, tmp_path) == (4 * GIB, "SLURM_MEM_PER_NODE")
    env = {"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_PER_TASK": "3"}
    assert host_allocation(env, tmp_path / "none")[0] == 3000 * MIB
    (tmp_path / "memory.max").write_text("max\n")
    assert host_allocation({}, tmp_path) == (None, "no host memory limit known")
