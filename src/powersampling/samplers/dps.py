"""The ``dps`` sampler: dynamic power sampling run for real, with a trained controller.

Per question: k = k_start trajectories; while k < k_max and 1 - p̂_enough(k) > τ, k_step
more; the answer is the majority vote of the k (:mod:`powersampling.dps.votes`). Every round
runs the next trajectories of all questions still going in one power-sampling call (one
rolling batch), grades them (answer and format only: features never see the reference), and
asks the controller about all of them at once.

Trajectory j of a question is power sampling with the pool method's parameters and the seed
that the pool's run seed j gives that question's chain (:func:`~.base.chain_seed`); chains do
not depend on each other (:mod:`powersampling.samplers.power`), so with the same seeds a run
draws exactly the trajectories the replay reads from the pool, and stops where the replay
stops.

A row of the output is the vote's representative trajectory (``chain`` is its index; the
first trajectory when no trajectory has an answer), with the costs of all k trajectories
summed (tokens decoded and prefilled, proposals) and one ``sampler_trace`` record per
decision (:data:`DynamicPowerSampler.TRACE_FIELDS`).

Its side of the sampler contract: the study ``studies.dps`` names its pool method and
schedule (:meth:`~DynamicPowerSampler.job_settings`), the controller file (and question
embeddings, for mlp_hq) are the job's extra inputs, and a job answers only the questions its
controller did not learn from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from powersampling.dps import CONTROLLER_NAMES, controller_file, embeddings_file
from powersampling.errors import UserError
from powersampling.samplers.base import Param, Sampler, chain_seed, resolve_params

if TYPE_CHECKING:
    import torch

    from powersampling.dps.controllers import Controller
    from powersampling.dps.policy import Schedule

# The sampler a dps pool's trajectories are drawn with.
POOL_SAMPLER = "power"


@dataclass
class DpsSetup:
    """What a ``dps`` run needs beyond its own parameters (a generation job builds it)."""

    pool_name: str  # the pool's method name: its run seeds seed the trajectories
    power: dict[str, Any]  # the pool method: {sampler: power, ...params}
    schedule: Schedule
    controller: Controller
    embeddings: dict[str, np.ndarray] | None = None  # problem id -> question embedding
    # Filled in by prepare() from the job's task and tokenizer:
    # completions, problem rows -> grades (the extracted answer and compliance are read)
    grade: Callable[[list[str], list[dict]], list] | None = None
    decode: Callable[[list[int]], str] | None = None


def check_pool(where: str, pool: str, methods: dict[str, Any]) -> list[str]:
    """Problems of a DPS pool named ``pool`` (at config key ``where``)."""
    if methods.get(pool, {}).get("sampler") != POOL_SAMPLER:
        return [f"{where}: {pool!r} is not a power-sampling method"]
    return []


class DynamicPowerSampler(Sampler):
    """Dynamic power sampling; needs :meth:`prepare` (a controller and the pool's method)."""

    name = "dps"
    DECODER = "rolling"  # its trajectories are the pool's power sampling
    COMBINES_ANSWERS = True
    PARAMS = {
        "controller": Param(
            {"enum": list(CONTROLLER_NAMES)},
            "The trained controller that decides when a question has enough trajectories "
            "(studies.dps trains it).",
        ),
        "tau": Param(
            {"type": "number", "minimum": 0, "maximum": 1},
            "Add trajectories while 1 - p_enough > tau: smaller tau, more trajectories.",
        ),
    }
    TRACE_FIELDS = {
        "k": "trajectories when the controller was asked",
        "p_enough": "its estimate that they are enough",
        "more": "1 when it asked for more trajectories",
    }

    def __init__(self, engine, **params):
        super().__init__(engine, **params)
        self.setup: DpsSetup | None = None

    # ------------------------------------------------------------ before any job

    @classmethod
    def check_method(cls, name: str, method: dict[str, Any], config: dict[str, Any]) -> list[str]:
        study = config["studies"].get("dps")
        if study is None:
            return [f"methods.{name}: a dps method needs the controllers of studies.dps (absent)"]
        problems = []
        if method["controller"] not in study["controllers"]:
            problems.append(
                f"methods.{name}.controller: {method['controller']!r} is not one of "
                f"studies.dps.controllers ({', '.join(study['controllers'])})"
            )
        for i, experiment in enumerate(config["experiments"]):
            if name not in experiment["methods"]:
                continue
            for kind in ("tasks", "models"):
                outside = [n for n in experiment[kind] if n not in study[kind]]
                if outside:
                    problems.append(
                        f"experiments.{i}: dps runs on the {kind} of studies.dps only "
                        f"({outside[0]!r} is not there: it has no controller)"
                    )
        return problems

    @classmethod
    def job_settings(cls, method: dict[str, Any], config: dict[str, Any]) -> dict:
        study = config["studies"]["dps"]
        return {
            "pool": study["pool"],
            "pool_method": config["methods"][study["pool"]],
            "schedule": {k: study[k] for k in ("k_start", "k_step", "k_max")},
        }

    @classmethod
    def job_files(
        cls, method: dict[str, Any], config: dict[str, Any], task: str, model: str
    ) -> dict[str, str]:
        controller = method["controller"]
        files = {"controller": controller_file(task, model, controller)}
        if controller == "mlp_hq":
            files["embeddings"] = embeddings_file(task, model)
        return files

    @classmethod
    def decoded_method(cls, method: dict[str, Any], settings: dict | None) -> dict[str, Any]:
        if not settings:
            raise UserError("a dps method needs its controller and pool (studies.dps)")
        return settings["pool_method"]

    @classmethod
    def expected_tokens(
        cls, params: dict[str, Any], answer_tokens: float, settings: dict | None = None
    ) -> float:
        """The pool method's cost per trajectory times k_max: a bound. How many trajectories
        a question gets (k_start to k_max) is the controller's decision, known only once
        it is trained, so the plan takes the most it may ask for."""
        from powersampling.samplers.power import PowerSampler  # see _pool_sampler

        pool = cls.decoded_method(params, settings)
        given = {k: v for k, v in pool.items() if k != "sampler"}
        pool_params = resolve_params(PowerSampler.name, PowerSampler.PARAMS, given)
        per_trajectory = PowerSampler.expected_tokens(pool_params, answer_tokens)
        return settings["schedule"]["k_max"] * per_trajectory

    # ------------------------------------------------------------ in the job

    @classmethod
    def load_setup(cls, files: dict[str, str], settings: dict | None, log=None) -> DpsSetup:
        """The controller (and question embeddings) of a dps job, with its pool and schedule."""
        import pandas as pd

        from powersampling.dps.controllers import Controller
        from powersampling.dps.policy import Schedule

        if not settings or not files.get("controller"):
            raise UserError("a dps method needs its controller and pool (studies.dps)")
        controller = Controller.load(files["controller"])
        embeddings = None
        if files.get("embeddings"):
            table = pd.read_parquet(files["embeddings"])
            embeddings = {
                str(p): np.asarray(e, dtype=float)
                for p, e in zip(table["problem_id"], table["embedding"], strict=True)
            }
        if log is not None:
            log(
                f"dps: controller {controller.name} ({files['controller']}), "
                f"pool method {settings['pool']}"
            )
        return DpsSetup(
            pool_name=settings["pool"],
            power=settings["pool_method"],
            schedule=Schedule(**settings["schedule"]),
            controller=controller,
            embeddings=embeddings,
        )

    @classmethod
    def rows_to_answer(cls, setup: DpsSetup, problem_ids: list[str]) -> list[int]:
        """The questions its controller did not learn from (the held-out questions)."""
        learnt = set(setup.controller.info["train_questions"])
        return [i for i, pid in enumerate(problem_ids) if str(pid) not in learnt]

    def prepare(self, setup: Any = None, *, kv_store: str = "device", grade=None, decode=None):
        super().prepare(setup, kv_store=kv_store)
        if setup is None:
            raise UserError("a dps method needs its controller (studies.dps)")
        if setup.controller.name != self.params["controller"]:
            raise UserError(
                f"this dps method uses controller {self.params['controller']!r}, "
                f"given {setup.controller.name!r}"
            )
        self.setup = setup
        if grade is not None:
            setup.grade = grade
        if decode is not None:
            setup.decode = decode

    def row_streams(self, rows: list[dict], seed: int, names: tuple[str, str, str]) -> dict:
        """Each problem's trajectory j has the chain seed of the pool's run seed
        ``seed · k_max + j``, so runs under different seeds draw different trajectories."""
        task_name, model_name, _ = names
        k_max, pool = self.setup.schedule.k_max, self.setup.pool_name
        return {
            "problems": rows,
            "trajectory_seeds": [
                [
                    chain_seed(seed * k_max + j, task_name, model_name, pool, row["problem_id"])
                    for j in range(k_max)
                ]
                for row in rows
            ],
        }

    def max_new_tokens(self) -> int:
        return _pool_sampler(self.setup, None).params["max_new_tokens"]  # its trajectories'

    def prompts_per_call(self, batch: int) -> int:
        # A call runs up to k_start chains per prompt: as many chains as the plan's batch.
        return max(1, batch // self.setup.schedule.k_start)

    def sampling_record(self) -> dict[str, Any]:
        """Its own parameters and the pool method's, as configured (defaults filled in)."""
        from powersampling.samplers.power import PowerSampler

        record = super().sampling_record()
        if self.setup is not None:
            given = {k: v for k, v in self.setup.power.items() if k != "sampler"}
            params = resolve_params(PowerSampler.name, PowerSampler.PARAMS, given)
            record["pool"] = {"sampler": POOL_SAMPLER, **params}
        return record

    def sample(
        self,
        prompts: list[list[int]],
        generator: torch.Generator | None,
        budgets: list[int] | None = None,
        *,
        problems: list[dict] | None = None,
        trajectory_seeds: list[list[int]] | None = None,
    ) -> list[dict]:
        """One voted answer per prompt. ``problems``: the prompts' problem rows (for the
        grader); ``trajectory_seeds``: per prompt, the seeds of trajectories 0..k_max-1."""
        from powersampling.dps.trajectories import decision_features
        from powersampling.dps.votes import NO_VOTE, majority, vote_key

        setup = self.setup
        if setup is None:
            raise UserError("a dps method needs its controller: run it through a generation job")
        n = len(prompts)
        if problems is None or trajectory_seeds is None or len(problems) != n:
            raise UserError("dps needs each prompt's problem row and trajectory seeds")
        schedule = setup.schedule
        if any(len(s) < schedule.k_max for s in trajectory_seeds):
            raise UserError(f"dps needs {schedule.k_max} trajectory seeds per prompt")
        power = _pool_sampler(setup, self.engine)
        power.prepare(kv_store=self.kv_store)
        budgets = budgets or [power.params["max_new_tokens"]] * n
        ids = [str(p["problem_id"]) for p in problems]
        embeddings = None
        if setup.embeddings is not None:
            missing = [i for i in ids if i not in setup.embeddings]
            if missing:
                raise UserError(f"no question embedding for problem {missing[0]!r}")
            embeddings = np.stack([setup.embeddings[i] for i in ids])

        records: list[list[dict]] = [[] for _ in range(n)]
        keys: list[list[str | None]] = [[] for _ in range(n)]
        compliant: list[list[bool]] = [[] for _ in range(n)]
        traces: list[list[dict]] = [[] for _ in range(n)]
        going = list(range(n))
        k = 0
        while going:
            add = schedule.k_start if k == 0 else schedule.k_step
            jobs = [(i, k + t) for i in going for t in range(add)]
            out = power.sample(
                [prompts[i] for i, _ in jobs],
                generator,
                budgets=[budgets[i] for i, _ in jobs],
                chain_seeds=[trajectory_seeds[i][j] for i, j in jobs],
            )
            texts = [setup.decode(r["completion_ids"]) for r in out]
            grades = setup.grade(texts, [problems[i] for i, _ in jobs])
            for (i, _), rec, text, grade in zip(jobs, out, texts, grades, strict=True):
                records[i].append({**rec, "completion": text})
                keys[i].append(vote_key(grade.extracted))
                compliant[i].append(bool(grade.compliant))
            k += add
            if k >= schedule.k_max:
                break
            seen = _trajectories(
                [ids[i] for i in going],
                [records[i] for i in going],
                [keys[i] for i in going],
                [compliant[i] for i in going],
            )
            features = decision_features(seen, k, None if embeddings is None else embeddings[going])
            p = setup.controller.p_enough(features)
            still = []
            for i, p_i in zip(going, p, strict=True):
                more = 1.0 - p_i > self.params["tau"]
                traces[i].append({"k": k, "p_enough": float(p_i), "more": float(more)})
                if more:
                    still.append(i)
            going = still

        results = []
        for i in range(n):
            logps = [r["logp_sum"] for r in records[i]]
            winner = majority(keys[i], logps)
            results.append(_voted_record(records[i], 0 if winner == NO_VOTE else winner, traces[i]))
        return results


def _pool_sampler(setup: DpsSetup, engine):
    """The power sampler of the pool method (built directly: the sampler registry names
    this module, so importing the registry from here would close an import cycle)."""
    from powersampling.samplers.power import PowerSampler

    if setup.power.get("sampler") != POOL_SAMPLER:
        raise UserError(f"the dps pool method must be a {POOL_SAMPLER} method: {setup.power}")
    return PowerSampler(engine, **{k: v for k, v in setup.power.items() if k != "sampler"})


def _trajectories(ids, records, keys, compliant):
    """The trajectories so far of the questions still going, as a Trajectories block."""
    from powersampling.dps.trajectories import DIAGNOSTICS, Trajectories

    def grid(name):
        return np.array([[_number(r[name]) for r in rows] for rows in records], dtype=float)

    diagnostics = {d: grid(d) for d in DIAGNOSTICS}
    diagnostics["acceptance_rate"] = np.nan_to_num(diagnostics["acceptance_rate"], nan=0.0)
    k = len(records[0])
    return Trajectories(
        problem_ids=np.asarray(ids, dtype=object),
        keys=np.array(keys, dtype=object).reshape(len(ids), k),
        correct=np.zeros((len(ids), k), dtype=bool),  # never read by a controller
        compliant=np.array(compliant, dtype=bool),
        logp=grid("logp_sum"),
        diagnostics=diagnostics,
        time_s=np.zeros((len(ids), k)),
    )


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _voted_record(trajectories: list[dict], winner: int, trace: list[dict]) -> dict:
    """The representative trajectory's record with the costs of all of them."""
    rec = dict(trajectories[winner])
    rec.pop("completion", None)
    proposals = sum(r["proposals"] or 0 for r in trajectories)
    accepted = sum((r["acceptance_rate"] or 0.0) * (r["proposals"] or 0) for r in trajectories)
    rec.update(
        chain=winner,
        tokens_decoded=sum(r["tokens_decoded"] for r in trajectories),
        tokens_prefilled=sum(r["tokens_prefilled"] for r in trajectories),
        proposals=proposals,
        acceptance_rate=accepted / proposals if proposals else None,
        chain_lifetime_s=math.nan,  # rounds run one after the other: no single lifetime
        sampler_trace=trace,
    )
    return rec
