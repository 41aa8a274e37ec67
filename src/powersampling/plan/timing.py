"""The time plan: how long every generation job of a config takes, before any job runs.

A job runs its shard's problems once per seed, in calls of as many prompts as its memory
plan's batch holds (``batch // rows_per_prompt``); a call of p prompts costs

    prefill(p prompts) + p × tokens per answer / decode tokens/s (at the call's rows)

and the job adds one model load. Tokens per answer come from the sampler's cost model
(:meth:`~powersampling.samplers.Sampler.expected_tokens`) at an assumed answer length (each
method's ``max_new_tokens``, an upper bound, or ``calibration.answer_tokens``), or from a
calibration of the (model, method) on the same task. Speeds come from the device's assumed
model (:mod:`powersampling.plan.hardware`) or from a calibration: a decode speed measured
at one number of rows is carried over to another by the assumed model's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from powersampling.errors import UserError
from powersampling.plan.calibration import (
    Calibration,
    calibration_targets,
    decoder_method_name,
    read_calibrations,
)
from powersampling.plan.hardware import (
    ASSUMED_CPU,
    ASSUMED_GPU,
    Device,
    ModelCost,
    decode_tokens_per_s,
    load_seconds,
    prefill_seconds,
)

GIB = 2**30


@dataclass(frozen=True)
class Assumptions:
    """What the plan assumes where nothing was measured."""

    device: Device
    device_bytes: int | None  # memory the memory plan may use (None: unlimited)
    answer_tokens: int | None  # a typical answer's length (None: each max_new_tokens)
    prompt_tokens: int


@dataclass(frozen=True)
class MethodCost:
    """How the generation jobs of one (task, model, method) decode."""

    batch: int  # the memory plan's batch (rows)
    rows_per_prompt: int
    answer_tokens: float  # the length the cost model was evaluated at
    tokens_per_answer: float
    tokens_from: str  # "model" (the sampler's cost model) or "measured" (a calibration)
    prompt_tokens: float
    model: ModelCost
    device: Device
    calibration: Calibration | None = None

    def prompts_per_call(self) -> int:
        return max(1, self.batch // self.rows_per_prompt)

    def rows(self, prompts: int) -> int:
        return min(self.batch, prompts * self.rows_per_prompt)

    def context(self) -> float:
        """Cached tokens of a row while it decodes, on average: prompt + half an answer."""
        return self.prompt_tokens + self.answer_tokens / 2

    def decode_tokens_per_s(self, rows: int) -> float:
        assumed = decode_tokens_per_s(self.device, self.model, rows, self.context())
        cal = self.calibration
        if cal is None:
            return assumed
        at_measured = decode_tokens_per_s(self.device, self.model, cal.rows, self.context())
        return cal.decode_tokens_per_s * assumed / at_measured

    def prefill_s(self, prompts: int) -> float:
        tokens = prompts * self.prompt_tokens
        if self.calibration is None:
            return prefill_seconds(self.device, self.model, tokens)
        return tokens / self.calibration.prefill_tokens_per_s

    def load_s(self) -> float:
        if self.calibration is None:
            return load_seconds(self.device, self.model)
        return self.calibration.load_s

    def seed_s(self, problems: int) -> float:
        """Seconds in the sampler for one seed of ``problems`` problems."""
        per_call, total = self.prompts_per_call(), 0.0
        for start in range(0, problems, per_call):
            p = min(per_call, problems - start)
            decode = p * self.tokens_per_answer / self.decode_tokens_per_s(self.rows(p))
            total += self.prefill_s(p) + decode
        return total


@dataclass(frozen=True)
class JobTime:
    """One job's prediction: a generation job (a shard, every seed) or a calibration."""

    task: str
    model: str
    method: str
    shard: int
    problems: int
    seeds: int
    cost: MethodCost | None  # None: no memory plan (``note`` says why)
    note: str = ""

    @property
    def sampler_s(self) -> float:
        """Time in the sampler over every seed: what the rows' shard_decode_time_s add to."""
        return math.nan if self.cost is None else self.seeds * self.cost.seed_s(self.problems)

    @property
    def total_s(self) -> float:
        return math.nan if self.cost is None else self.cost.load_s() + self.sampler_s

    @property
    def name(self) -> str:
        return f"{self.task}/{self.model}/{self.method}/shard{self.shard:03d}"


@dataclass
class TimePlan:
    """Every generation job's predicted time, and the calibrations'."""

    config: dict[str, Any]
    assumptions: Assumptions
    jobs: list[JobTime]
    calibrations: dict[tuple[str, str], JobTime]  # (model, method) -> the calibration job
    measured: dict[tuple[str, str], Calibration] = field(default_factory=dict)
    _by_name: dict[tuple[str, str, str, int], JobTime] = field(init=False, repr=False)

    def __post_init__(self):
        self._by_name = {(j.task, j.model, j.method, j.shard): j for j in self.jobs}

    def job(self, task: str, model: str, method: str, shard: int) -> JobTime:
        return self._by_name[task, model, method, shard]

    def runtime_min(self, job: JobTime, attempt: int = 1) -> int:
        """The Slurm runtime of ``job``: predicted × safety factor, at least
        ``generation_runtime_min``, × attempt, at most ``max_runtime_min``."""
        return runtime_minutes(job.total_s, self.config["resources"], attempt)

    def over_cap(self) -> list[str]:
        """One line per job predicted over ``resources.max_runtime_min``."""
        cap = self.config["resources"]["max_runtime_min"]
        return [over_cap_message(self.config, job) for job in self.jobs if job.total_s > cap * 60]


def runtime_minutes(seconds: float, resources: dict[str, Any], attempt: int = 1) -> int:
    """``seconds`` × ``runtime_safety_factor`` in minutes, at least ``generation_runtime_min``
    (which an unknown prediction gets), × ``attempt``, at most ``max_runtime_min``."""
    floor = resources["generation_runtime_min"]
    minutes = floor
    if not math.isnan(seconds):
        minutes = max(floor, math.ceil(seconds * resources["runtime_safety_factor"] / 60))
    return min(minutes * attempt, resources["max_runtime_min"])


def over_cap_message(config: dict[str, Any], job: JobTime) -> str:
    """Why ``job`` is refused, and the largest shard size whose jobs the plan fits."""
    cap = config["resources"]["max_runtime_min"]
    cost = job.cost
    shard_size = config["tasks"][job.task]["shard_size"]
    fits = largest_shard(cost, job.seeds, min(shard_size, job.problems), cap * 60)
    advice = (
        f"lower tasks.{job.task}.shard_size ({shard_size}) to {fits} or less"
        if fits
        else "not even one problem per job fits (its seeds run one after the other on one "
        "model load): lower max_new_tokens or the seeds"
    )
    return (
        f"generation job {job.name}: predicted {job.total_s / 60:,.0f} min ({job.problems} "
        f"problems x {job.seeds} seeds x {cost.tokens_per_answer:,.0f} tokens per answer at "
        f"{cost.decode_tokens_per_s(cost.rows(job.problems)):,.0f} tokens/s, plus "
        f"{cost.load_s():.0f} s to load), over resources.max_runtime_min ({cap} min): "
        f"{advice}, or raise max_runtime_min"
    )


def largest_shard(cost: MethodCost, seeds: int, problems: int, seconds: float) -> int:
    """The most problems (at most ``problems``) a job of ``seeds`` seeds runs in ``seconds``
    (0: not even one). A job's time grows with its problems, so a bisection finds it. Where
    one call holds the whole shard (chains decode side by side), fewer problems save little:
    a chain's own length sets the time."""
    low, high = 0, problems
    while low < high:
        mid = (low + high + 1) // 2
        if cost.load_s() + seeds * cost.seed_s(mid) <= seconds:
            low = mid
        else:
            high = mid - 1
    return low


def assumptions_of(
    config: dict[str, Any],
    *,
    gpu_gib: float | None = None,
    answer_tokens: int | None = None,
    prompt_tokens: int | None = None,
) -> Assumptions:
    """A GPU config (``resources.gpu`` > 0 or ``device: cuda``) is planned on
    :data:`ASSUMED_GPU` with 80 GiB unless told otherwise; any other on :data:`ASSUMED_CPU`
    with unlimited memory (a CPU job plans with its host's)."""
    from powersampling.memory import DEFAULT_PROMPT_TOKENS

    on_gpu = config["resources"]["gpu"] > 0 or config["device"] == "cuda"
    if gpu_gib is None:
        gpu_gib = config["generation"].get("device_memory_gib") or (80 if on_gpu else None)
    calibration = config["calibration"]
    return Assumptions(
        device=ASSUMED_GPU if on_gpu else ASSUMED_CPU,
        device_bytes=None if gpu_gib is None else int(gpu_gib * GIB),
        answer_tokens=answer_tokens or calibration.get("answer_tokens"),
        prompt_tokens=prompt_tokens
        or config["generation"].get("plan_prompt_tokens", DEFAULT_PROMPT_TOKENS),
    )


def method_cost(
    config: dict[str, Any],
    task: str,
    method: str,
    plan,
    calibration: Calibration | None,
    assumptions: Assumptions,
) -> MethodCost:
    """How ``method``'s jobs on ``task`` decode, from its memory ``plan`` (a MemoryPlan)."""
    from powersampling.config import decoding_method, method_job_settings
    from powersampling.samplers import method_params, sampler_class

    entry, decoded = config["methods"][method], decoding_method(config, method)
    decoder, decoded_params = sampler_class(decoded["sampler"]), method_params(decoded)
    budget = decoded_params.get("max_new_tokens")
    answer = assumptions.answer_tokens or budget
    if answer is None:
        raise UserError(f"methods.{method}: no token budget; set calibration.answer_tokens")
    answer = min(answer, budget) if budget else answer
    tokens = sampler_class(entry["sampler"]).expected_tokens(
        method_params(entry), answer, method_job_settings(config, method)
    )
    same_task = calibration is not None and calibration.task == task
    if same_task:  # measured on the decoder's rows; a driver's cost scales with them
        tokens = calibration.tokens_per_answer * (
            tokens / decoder.expected_tokens(decoded_params, answer)
        )
    shape = plan.shape
    device = assumptions.device
    if calibration is not None:  # its speeds are carried over by its own kind's model
        device = ASSUMED_GPU if calibration.device_type == ASSUMED_GPU.kind else ASSUMED_CPU
    return MethodCost(
        batch=plan.batch if calibration is None else int(calibration.batch),
        rows_per_prompt=shape.rows_per_prompt,
        answer_tokens=answer,
        tokens_per_answer=tokens,
        tokens_from="measured" if same_task else "model",
        prompt_tokens=calibration.mean_prompt_tokens if same_task else assumptions.prompt_tokens,
        model=ModelCost(shape.layers, shape.n_params, shape.weights, shape.kv_per_token),
        device=device,
        calibration=calibration,
    )


def time_plan(
    config: dict[str, Any],
    *,
    calibration_dir=None,
    gpu_gib: float | None = None,
    answer_tokens: int | None = None,
    prompt_tokens: int | None = None,
) -> TimePlan:
    """The time plan of a validated config (shapes only: no weights, no network)."""
    from powersampling.config import n_shards, run_seeds, shard_rows
    from powersampling.memory import plan_config

    assumptions = assumptions_of(
        config, gpu_gib=gpu_gib, answer_tokens=answer_tokens, prompt_tokens=prompt_tokens
    )
    measured = read_calibrations(config, calibration_dir)
    memory = {
        (job.model, decoder_method_name(config, job.method)): job
        for job in plan_config(
            config,
            assumptions.device_bytes,
            prompt_tokens=assumptions.prompt_tokens,
            device_note=f"the plan's {assumptions.device.name}",
        )
    }

    def cost_of(task: str, model: str, method: str) -> tuple[MethodCost | None, str]:
        decoder = decoder_method_name(config, method)
        planned = memory.get((model, decoder))
        if planned is None or planned.plan is None:
            return None, planned.note if planned is not None else "no memory plan"
        cal = measured.get((model, decoder))
        return method_cost(config, task, method, planned.plan, cal, assumptions), ""

    jobs = []
    for (task, model, method), seeds in run_seeds(config).items():
        cost, note = cost_of(task, model, method)
        for shard in range(n_shards(config, task)):
            start, stop = shard_rows(config, task, shard)
            jobs.append(JobTime(task, model, method, shard, stop - start, len(seeds), cost, note))
    calibrations = {}
    for target in calibration_targets(config):
        cost, note = cost_of(target.task, target.model, target.method)
        start, stop = shard_rows(config, target.task, 0)
        prompts = stop - start if cost is None else min(cost.prompts_per_call(), stop - start)
        calibrations[target.model, target.method] = JobTime(
            target.task, target.model, target.method, 0, prompts, 1, cost, note
        )
    return TimePlan(config, assumptions, jobs, calibrations, measured)
