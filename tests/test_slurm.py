"""The Slurm profile, on a real single-node Slurm cluster started on localhost.

`tests/slurm/cluster.sh` installs and starts the cluster (munge, MariaDB, slurmdbd,
slurmctld, slurmd; needs root and apt). Where that is impossible the cluster tests are
skipped with the reason; set PS_REQUIRE_SLURM=1 to make that a failure instead.

Every run uses profiles/slurm/config.yaml as it is, except for what a user edits
(partition, account) and how often the executor polls Slurm (tests only): see
`make_profile`. Whether a job really ran on Slurm is checked in Slurm's own accounting
(sacct), job by job, against the jobs Snakemake planned.

What runs where:
- tests/slurm/fixture/Snakefile, a small workflow whose `generate` and `grade` rules take
  their resources from the profile: GPU requests, retries with attempt-scaled resources,
  a job cancelled mid-run.
- the real workflow on a slimmed config/test.yaml, started in the background as soon as
  the cluster is up (it takes minutes, mostly Slurm polling), then a targeted rerun.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow_helpers import copy_workflow, load_rehearsal_config, load_test_config

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
CLUSTER_SH = ROOT / "tests" / "slurm" / "cluster.sh"
FIXTURE = ROOT / "tests" / "slurm" / "fixture"
SLURM_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/ps-slurm"))
SLURM_CONF = SLURM_DIR / "etc" / "slurm.conf"
PARTITION = os.environ.get("SLURM_TEST_PARTITION", "debug")
ACCOUNT = os.environ.get("SLURM_TEST_ACCOUNT", "pstest")
SLURM_BINARIES = ["sbatch", "squeue", "sacct", "sacctmgr", "slurmctld", "slurmd", "slurmdbd"]
SLURM_BINARIES += ["munged", "mariadbd"]
SLURM_ENV = {**os.environ, "SLURM_CONF": str(SLURM_CONF), "PYTHONHASHSEED": "0"}

# The rule that needs a GPU; every other rule must not ask for one.
GPU_RULES = {"generate"}


# --------------------------------------------------------------------------- helpers


def make_profile(dest: Path, folder: Path | None = None) -> Path:
    """The repository's profile with the user's edits and faster polling, written to
    ``folder`` (default ``dest/profile``); returns the folder.

    Only these keys differ from profiles/slurm/config.yaml:
    - default-resources slurm_partition / slurm_account: the placeholders a user edits;
    - slurm-init-seconds-before-status-checks: the first status check after 5 s, not 40 s.
    """
    profile = yaml.safe_load(PROFILE.read_text())
    defaults = profile["default-resources"]
    assert defaults["slurm_partition"].startswith("<") and defaults["slurm_account"].startswith("<")
    defaults["slurm_partition"] = PARTITION
    defaults["slurm_account"] = ACCOUNT
    profile["slurm-init-seconds-before-status-checks"] = 5
    folder = folder or dest / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def install_named_profile(project: Path, config_home: Path) -> dict[str, str]:
    """`make slurm-profile` in ``project`` (a copy with its Makefile and profiles/slurm),
    with Snakemake's user config folder under ``config_home``; returns that environment."""
    env = {**SLURM_ENV, "XDG_CONFIG_HOME": str(config_home)}
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    done = subprocess.run(
        ["make", "-s", "slurm-profile"], cwd=project, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def snakemake_cmd(profile: Path | str, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--profile", str(profile), "--verbose", *args]


def run_snakemake(workdir: Path, profile: Path | str, *args, timeout: int = 600, env=None):
    """Run snakemake through the profile; returns (returncode, combined log text)."""
    result = subprocess.run(
        snakemake_cmd(profile, *map(str, args)),
        cwd=workdir,
        env=env or SLURM_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout


def planned_jobs(log: str) -> tuple[Counter, Counter]:
    """(rules submitted to Slurm, local rules) announced in a snakemake log, with counts."""
    remote = Counter(re.findall(r"^rule (\w+):$", log, flags=re.M))
    local = Counter(re.findall(r"^localrule (\w+):$", log, flags=re.M))
    return remote, local


def sbatch_calls(log: str) -> list[tuple[str, str]]:
    """(rule, sbatch arguments without the wrapped command) for every submission."""
    calls = []
    for args in re.findall(r"sbatch call: (sbatch .*?) --wrap=", log):
        comment = re.search(r"--comment (\S+)", args).group(1)
        calls.append((rule_of_comment(comment), args))
    return calls


def rule_of_comment(comment: str) -> str:
    """The executor labels each job `rule_<rule>` or `rule_<rule>_wildcards_<values>`."""
    return re.sub(r"^rule_", "", comment).split("_wildcards_")[0]


def run_id(log: str) -> str:
    """The executor submits every job of one run under this Slurm job name."""
    return re.search(r"SLURM run ID: (\S+)", log).group(1)


def sacct(name: str, expected: int | None = None, timeout: float = 30) -> list[dict]:
    """Slurm's accounting records (one per job, no steps) for the jobs named `name`.

    With `expected`, waits until that many records are there and finished (the
    accounting daemon lags a little behind the controller).
    """
    fields = ["JobID", "State", "Comment", "ReqMem", "Timelimit", "AllocTRES", "ExitCode"]
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-S", "2020-01-01", "--name", name,
             "-o", ",".join(fields)],
            env=SLURM_ENV, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        records = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
        for r in records:
            r["rule"] = rule_of_comment(r["Comment"])
        done = all(r["State"] not in ("PENDING", "RUNNING") for r in records)
        if expected is None or (len(records) >= expected and done):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"sacct shows {records}, expected {expected} finished jobs")
        time.sleep(1)


def has_gpu_request(sbatch_args: str) -> bool:
    return bool(re.search(r"--gpus[= ]|--gres[= ]\S*gpu|--gpus-per-", sbatch_args))


def eval_resource(expression, attempt: int):
    """A profile resource value (a number or an expression of `attempt`), evaluated."""
    return eval(str(expression), {"attempt": attempt})  # the profile is trusted repo content


def flag(sbatch_args: str, name: str) -> str:
    return re.search(rf"{name} (\S+)", sbatch_args).group(1)


# --------------------------------------------------------------------------- cluster


def _cluster(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args],
        env={**os.environ, "SLURM_TEST_DIR": str(SLURM_DIR)},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _unavailable(reason: str):
    if os.environ.get("PS_REQUIRE_SLURM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    """A running local Slurm cluster: reused if already up, else started and later stopped."""
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        _unavailable("no Slurm here and not root, so tests/slurm/cluster.sh cannot install it")
    if not all(shutil.which(b) for b in SLURM_BINARIES):
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            _unavailable("Slurm packages missing and no root/apt-get to install them")
        done = _cluster("install", timeout=900)
        if done.returncode != 0:
            _unavailable(f"cluster.sh install failed: {done.stderr[-2000:]}")
    if _cluster("status", timeout=60).returncode == 0:
        yield  # started by hand: leave it running
        return
    if os.geteuid() != 0:
        _unavailable("starting the local Slurm cluster needs root")
    started = _cluster("start", timeout=300)
    if started.returncode != 0:
        _cluster("stop", timeout=120)
        _unavailable(f"cluster.sh start failed: {started.stderr[-2000:]}")
    try:
        yield
    finally:
        _cluster("stop", timeout=120)


# --------------------------------------------------------------------------- real workflow

REAL_TARGET_METHOD = "temp_0.5"


def slim_config() -> dict:
    """config/test.yaml cut to one shard per run and a few training steps (same DAG shape)."""
    config = load_test_config()
    config["toy"]["train"].update(steps=5, n_problems=200)
    config["tasks"]["arithmetic"].update(limit=8, shard_size=8)
    config["methods"] = {
        "greedy": config["methods"]["greedy"],
        REAL_TARGET_METHOD: config["methods"][REAL_TARGET_METHOD],
    }
    config["experiments"] = [
        {"tasks": ["arithmetic"], "models": ["toy"], "methods": ["greedy"]},
        {"tasks": ["arithmetic"], "models": ["toy"], "methods": [REAL_TARGET_METHOD], "seeds": [0]},
    ]
    # The studies that add runs of their own (their rules are tested in test_workflow.py).
    for study in ("dps", "reliability"):
        config["studies"].pop(study, None)
    config["models"].pop("toy_moe", None)
    return config


@pytest.fixture(scope="module")
def real_run(cluster, tmp_path_factory):
    """The real workflow, started through the profile in the background right away."""
    if not (ROOT / "Snakefile").exists():
        yield None
        return
    # Run as users type it: `snakemake --profile slurm` after `make slurm-profile`, with the
    # user's edits made in the project's own profiles/slurm (the fixture run below uses
    # --profile with a path instead).
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm-workflow"))
    make_profile(workdir, workdir / "profiles" / "slurm")
    env = install_named_profile(workdir, tmp_path_factory.mktemp("config-home"))
    profile = "slurm"
    config = workdir / "config" / "slurm.yaml"
    config.write_text(yaml.safe_dump(slim_config(), sort_keys=False))
    dry = subprocess.run(
        snakemake_cmd(profile, "-n", "--configfile", str(config)),
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "Using profile slurm" in dry.stdout + dry.stderr
    log_path = workdir / "slurm-run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            snakemake_cmd(profile, "--configfile", str(config)),
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    yield {"workdir": workdir, "profile": profile, "config": config, "proc": proc, "env": env,
           "log": log_path, "plan": planned_jobs(dry.stdout + dry.stderr)}  # fmt: skip
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # SIGTERM would wait for the running jobs
        proc.wait(timeout=120)


@pytest.fixture(scope="module")
def finished_real_run(real_run):
    if real_run is None:
        pytest.skip("the workflow (Snakefile) is not there")
    try:
        rc = real_run["proc"].wait(timeout=540)
    except subprocess.TimeoutExpired:
        real_run["proc"].send_signal(signal.SIGINT)
        raise
    log = real_run["log"].read_text()
    assert rc == 0, log[-6000:]
    return {**real_run, "text": log}


# --------------------------------------------------------------------------- fixture workflow


@pytest.fixture(scope="module")
def fixture_run(cluster, real_run, tmp_path_factory):
    """tests/slurm/fixture's default target, through the profile (while the real run goes on)."""
    workdir = tmp_path_factory.mktemp("slurm-fixture")
    shutil.copy(FIXTURE / "Snakefile", workdir / "Snakefile")
    profile = make_profile(workdir)
    rc, log = run_snakemake(workdir, profile, timeout=400)
    assert rc == 0, log[-6000:]
    return {"workdir": workdir, "profile": profile, "text": log}


# --------------------------------------------------------------------------- tests


def test_profile_names_only_existing_rules_and_marks_placeholders():
    """A renamed rule would silently lose its cluster resources, so every name must exist."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["default-resources"]["slurm_partition"] == "<your-partition>"
    assert profile["default-resources"]["slurm_account"] == "<your-account>"
    rules = set()
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M))
    if not rules:
        pytest.skip("the workflow's rules are not there")
    unknown = set(profile["set-resources"]) - rules
    assert not unknown, f"profile sets resources for rules the workflow lacks: {unknown}"
    gpu_rules = {r for r, res in profile["set-resources"].items() if res.get("gpu")}
    assert gpu_rules == GPU_RULES


def test_make_slurm_profile_lets_snakemake_find_the_profile_by_name(tmp_path):
    """`make slurm-profile` links profiles/slurm where `--profile slurm` is looked up; it is
    idempotent, and it leaves a different profile of that name alone."""
    project = copy_workflow(tmp_path / "project")
    shutil.copytree(ROOT / "profiles", project / "profiles")
    config_home = tmp_path / "config-home"
    env = install_named_profile(project, config_home)
    link = config_home / "snakemake" / "slurm"
    assert link.is_symlink() and link.resolve() == (project / "profiles" / "slurm").resolve()
    install_named_profile(project, config_home)  # again: still fine
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "Using profile slurm" in dry.stdout + dry.stderr

    other_home = tmp_path / "other-home"
    (other_home / "snakemake" / "slurm").mkdir(parents=True)
    refused = subprocess.run(
        ["make", "-s", "slurm-profile"], cwd=project, capture_output=True, text=True,
        env={**env, "XDG_CONFIG_HOME": str(other_home)},
    )  # fmt: skip
    assert refused.returncode != 0 and "is not this project's profile" in refused.stderr
    assert not (other_home / "snakemake" / "slurm").is_symlink()


def test_gpu_rule_requests_a_gpu_and_cpu_rules_do_not(fixture_run):
    """(b) Checked in the sbatch arguments and in what Slurm actually allocated."""
    calls = sbatch_calls(fixture_run["text"])
    assert {rule for rule, _ in calls} == {"generate", "grade", "flaky"}
    for rule, args in calls:
        assert has_gpu_request(args) == (rule in GPU_RULES), (rule, args)
    records = sacct(run_id(fixture_run["text"]), expected=len(calls))
    assert len(records) == len(calls)
    for r in records:
        assert ("gres/gpu=1" in r["AllocTRES"]) == (r["rule"] in GPU_RULES), r
    # Slurm handed each generate job a GPU device (a fake one on the test cluster).
    for shard in (0, 1):
        line = (fixture_run["workdir"] / f"gen/shard{shard}.txt").read_text()
        assert "gpus=none" not in line and "gpus=" in line, line


def test_failed_job_is_retried_with_attempt_scaled_resources(fixture_run):
    """(c) `flaky` fails with the first attempt's memory and passes with the retry's."""
    defaults = yaml.safe_load(PROFILE.read_text())["default-resources"]
    expected = [
        (eval_resource(defaults["mem_mb"], a), eval_resource(defaults["runtime"], a))
        for a in (1, 2)
    ]
    assert expected[1][0] >= 8000 > expected[0][0], "fixture's threshold no longer fits the profile"
    calls = [args for rule, args in sbatch_calls(fixture_run["text"]) if rule == "flaky"]
    requested = [(int(flag(a, "--mem")), int(flag(a, "-t"))) for a in calls]
    assert requested == expected
    records = [r for r in sacct(run_id(fixture_run["text"]), expected=4) if r["rule"] == "flaky"]
    records.sort(key=lambda r: int(r["JobID"]))
    assert [r["State"] for r in records] == ["FAILED", "COMPLETED"]
    assert [r["ReqMem"] for r in records] == [f"{m}M" for m, _ in expected]
    assert (fixture_run["workdir"] / "flaky.txt").read_text().startswith(f"mem={expected[1][0]} ")


def _start_slow(workdir: Path, profile: Path):
    log = open(workdir / "slow.log", "w")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(
        snakemake_cmd(profile, "--retries", "0", "slow.txt"),
        cwd=workdir, env=SLURM_ENV, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    # Wait until the Slurm job runs and has written part of its output.
    deadline = time.monotonic() + 120
    jobid = None
    try:
        while jobid is None or not (workdir / "slow.txt").exists():
            assert proc.poll() is None, (workdir / "slow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the slow job never started"
            text = (workdir / "slow.log").read_text()
            found = re.search(r"submitted with SLURM jobid (\d+)", text)
            jobid = found.group(1) if found else None
            time.sleep(0.5)
    except BaseException:
        proc.send_signal(signal.SIGINT)  # Snakemake cancels its Slurm job on SIGINT
        proc.wait(timeout=60)
        log.close()
        raise
    return proc, log, jobid


def _rerun_plan(workdir: Path, profile: Path) -> str:
    done = subprocess.run(
        snakemake_cmd(profile, "-n", "slow.txt"),
        cwd=workdir, env=SLURM_ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_killed_job_leaves_no_trusted_output(fixture_run):
    """(d) A job killed mid-run never leaves output that a later run trusts.

    First, the job's processes are killed (as by the OOM killer): the run fails, the
    partial output is deleted, and a rerun plans the job again. Second, the Snakemake
    process dies and then the whole job is killed with SIGKILL (as in a node crash), so
    nobody cleans up: the partial output stays on disk, but is marked incomplete and the
    next run redoes it.
    """
    workdir, profile = fixture_run["workdir"], fixture_run["profile"]

    proc, log, jobid = _start_slow(workdir, profile)
    subprocess.run(["scancel", "--signal=KILL", f"{jobid}.0"], env=SLURM_ENV, check=True)
    try:
        rc = proc.wait(timeout=180)
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
    assert rc != 0
    records = sacct(run_id((workdir / "slow.log").read_text()), expected=1)
    assert [r["State"] for r in records] == ["FAILED"]
    assert not (workdir / "slow.txt").exists()
    assert re.search(r"^rule slow:$", _rerun_plan(workdir, profile), flags=re.M)

    proc, log, jobid = _start_slow(workdir, profile)
    proc.kill()
    proc.wait(timeout=30)
    log.close()
    # Every process of the job at once, as a crashing node would (scancel would let the
    # job's own Snakemake clean up first).
    listed = subprocess.run(
        ["scontrol", "listpids", jobid], env=SLURM_ENV, capture_output=True, text=True, check=True
    ).stdout.split("\n")[1:]
    # Parents first (lower pids): the job's Snakemake must die before it can see its rule's
    # process die and clean up, which a crash would not let it do.
    for pid in sorted({int(line.split()[0]) for line in listed if line.strip()}):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended with its parent
            pass
    sacct(run_id((workdir / "slow.log").read_text()), expected=1)  # waits for the job's end
    assert (workdir / "slow.txt").read_text() == "partial\n"
    # Without the profile Snakemake refuses to go on; with it (rerun-incomplete) it redoes it.
    plain = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-c1", "slow.txt"],
        cwd=workdir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plain.returncode != 0 and "IncompleteFilesException" in plain.stderr + plain.stdout
    assert re.search(r"^rule slow:$", _rerun_plan(workdir, profile), flags=re.M)


def test_real_workflow_runs_every_remote_job_as_a_slurm_job(finished_real_run):
    """(a) The planned jobs, the submitted jobs and Slurm's accounting agree, job by job."""
    run = finished_real_run
    # A dry run does not tell local from remote jobs: compare the totals.
    plan = sum(run["plan"], Counter())
    ran_remote, ran_local = planned_jobs(run["text"])
    assert ran_remote + ran_local == plan
    assert {"synthetic_data", "train_toy_model", "generate", "grade"} <= set(ran_remote)

    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", run["text"])
    records = sacct(run_id(run["text"]), expected=sum(ran_remote.values()))
    assert sorted(r["JobID"] for r in records) == sorted(submitted)
    assert Counter(r["rule"] for r in records) == ran_remote
    assert all(r["State"] == "COMPLETED" for r in records), records

    # GPU rules asked for (and got) a GPU; CPU rules neither.
    for rule, args in sbatch_calls(run["text"]):
        assert has_gpu_request(args) == (rule in GPU_RULES), (rule, args)
    for r in records:
        assert ("gres/gpu=" in r["AllocTRES"]) == (r["rule"] in GPU_RULES), r

    # Nothing left to do.
    rc, log = run_snakemake(
        run["workdir"], run["profile"], "-n", "--configfile", run["config"], env=run["env"]
    )
    assert rc == 0 and "Nothing to be done" in log, log[-3000:]


def test_targeted_rerun_after_a_config_change_submits_only_affected_jobs(finished_real_run):
    """(e) Change one method's temperature; rerun one of its graded shards."""
    run = finished_real_run
    workdir, profile, config_path = run["workdir"], run["profile"], run["config"]
    config = yaml.safe_load(config_path.read_text())
    config["methods"][REAL_TARGET_METHOD]["T"] = 0.7
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    target = f"results/graded/arithmetic/toy/{REAL_TARGET_METHOD}/shard000.parquet"
    untouched = "results/generations/arithmetic/toy/greedy/shard000.parquet"
    before = (workdir / untouched).stat().st_mtime_ns

    rc, log = run_snakemake(workdir, profile, target, "--configfile", config_path, env=run["env"])
    assert rc == 0, log[-6000:]
    remote, local = planned_jobs(log)
    assert remote == Counter({"generate": 1, "grade": 1}) and not local
    records = sacct(run_id(log), expected=2)
    assert Counter(r["rule"] for r in records) == remote
    assert all(r["State"] == "COMPLETED" for r in records)
    shard = f"wildcards_arithmetic_toy_{REAL_TARGET_METHOD}_000"
    assert all(shard in r["Comment"] for r in records)
    assert (workdir / untouched).stat().st_mtime_ns == before

    # The rest of the rerun: downstream tables and figures, never the unchanged shards.
    done = subprocess.run(
        snakemake_cmd(profile, "-n", "--configfile", str(config_path)),
        cwd=workdir, env=run["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    remote, _ = planned_jobs(done.stdout + done.stderr)
    assert "collect_metrics" in remote
    assert not {"synthetic_data", "train_toy_model", "generate", "grade"} & set(remote)


# --------------------------------------------------------------------------- rehearsal

REHEARSAL_MODEL = "phi-3.5-mini-instruct"


@pytest.fixture(scope="module")
def rehearsal_run(finished_real_run, tmp_path_factory):
    """config/rehearsal.yaml through the profile, after the toy run (they would share the
    two cores). Its Phi-3.5 model only: the one with per-task chat templates and the
    instruct wording, and the cheapest to decode on a CPU; tests/test_rehearsal_workflow.py
    runs all three models without Slurm."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm-rehearsal"))
    profile = make_profile(workdir)
    config = load_rehearsal_config()
    config["models"] = {REHEARSAL_MODEL: config["models"][REHEARSAL_MODEL]}
    for experiment in config["experiments"]:  # the paper's runs, SMC's included
        experiment["models"] = [REHEARSAL_MODEL]
    path = workdir / "config" / "rehearsal-slurm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    rc, log = run_snakemake(workdir, profile, "--configfile", path, timeout=900)
    assert rc == 0, log[-6000:]
    return {"workdir": workdir, "text": log}


def test_rehearsal_runs_every_remote_job_as_a_slurm_job(rehearsal_run):
    log = rehearsal_run["text"]
    remote, local = planned_jobs(log)
    assert remote == Counter(
        {"build_rehearsal_model": 1, "calibrate": 4, "collect_calibration": 1, "generate": 13,
         "grade": 13, "collect_metrics": 1, "collect_cost": 1}
    )  # fmt: skip
    assert {"download_dataset", "export_alpaca_eval"} <= set(local)
    records = sacct(run_id(log), expected=sum(remote.values()))
    assert Counter(r["rule"] for r in records) == remote
    assert all(r["State"] == "COMPLETED" for r in records), records
    for rule, args in sbatch_calls(log):
        assert has_gpu_request(args) == (rule in GPU_RULES), (rule, args)
    accuracy = rehearsal_run["workdir"] / "results" / "tables" / "accuracy.parquet"
    assert accuracy.exists()
