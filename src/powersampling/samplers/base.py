"""What every sampler shares: its parameter spec, the base class, and the record it returns.

A sampler declares its parameters once, in ``PARAMS`` (name → :class:`Param`: a JSON Schema
of the value, a description and a default). That spec is the only copy: config validation
builds the schema of a method entry from it (:func:`powersampling.samplers.method_schema`)
so a bad parameter stops the workflow before any job runs, and :func:`resolve_params`
checks the same schema when a sampler is built directly.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import jsonschema
import numpy as np

if TYPE_CHECKING:  # grading and metrics jobs read parameter specs without loading torch
    import torch

from powersampling.errors import UserError
from powersampling.seeding import derive_seed

# Marks a parameter without a default.
REQUIRED: Any = object()


def _is_strict_integer(checker, instance) -> bool:
    # JSON Schema counts 3.0 as an integer; a token budget of 3.0 would fail much later.
    return isinstance(instance, int) and not isinstance(instance, bool)


# Draft 2020-12, except that an integer must be an int (not 3.0, not a bool).
StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", _is_strict_integer
    ),
)


@dataclass(frozen=True)
class Param:
    """One sampler parameter: the JSON Schema of its value, what it means, its default."""

    schema: dict[str, Any]
    description: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def json_schema(self) -> dict[str, Any]:
        """The value's schema with its description (no default: samplers fill those in)."""
        return {**copy.deepcopy(self.schema), "description": self.description}


# The parameters of the samplers that target π_α(x) ∝ p(x)^α (power, smc): one definition.
ALPHA = Param(
    {"type": "number", "exclusiveMinimum": 0},
    "Power-sampling exponent; the target is p(x)^alpha over whole answers.",
    default=4.0,
)
LONG_ANSWERS = Param({"type": "integer", "minimum": 1}, "Most new tokens per answer.", default=3072)
PROPOSAL_TEMPERATURE = Param(
    {"type": ["number", "null"], "exclusiveMinimum": 0},
    "Temperature of the proposal (null: 1/alpha).",
    default=None,
)
PROPOSAL_TOP_K = Param(
    {"type": ["integer", "null"], "minimum": 1},
    "Restrict proposals to the top-k tokens (null: the whole vocabulary); the target is "
    "then p^alpha over the answers the proposal can produce.",
    default=None,
)


class Sampler(ABC):
    """Draws one completion per prompt, and says what a run of it needs.

    Subclasses set ``name`` and ``PARAMS`` and implement :meth:`sample`; the validated
    parameters, defaults filled in, are in ``self.params``. A sampler that records
    per-stage diagnostics documents the keys of its ``sampler_trace`` records in
    ``TRACE_FIELDS`` (key → meaning).

    The rest is the sampler's side of the contract with the workflow: config validation,
    the rules, the memory planner and the generation job ask the sampler class, and never
    branch on its name. Every hook has a default that fits a sampler decoding one row per
    prompt from the prompt alone; a sampler overrides only what differs.

    Before any job (classmethods, from the config alone):

    - ``DECODER``: the engine that decodes its rows, for the memory plan: ``"static"``
      (:meth:`~powersampling.engine.DecodingEngine.extend`), ``"rolling"``
      (:class:`~powersampling.engine.RollingDecoder`, which keeps prompt and chain caches
      between proposals, on the device or in host memory) or ``"particles"``
      (:class:`~powersampling.engine.ParticleBatch`).
    - :meth:`rows_per_prompt`: rows decoded together for one prompt (a batch is a whole
      number of prompts).
    - ``DETERMINISTIC``: every seed gives the same answers (one run is all runs).
    - ``COMBINES_ANSWERS``: an answer is chosen among several drawn ones (a vote), so it
      is not one draw of a decoding setting.
    - :meth:`check_method`: problems of a method entry that its schema cannot see.
    - :meth:`job_files` and :meth:`job_settings`: the files (a controller) and plain
      values a generation job of the method needs beyond its prompts.
    - :meth:`decoded_method`: the method whose decoder and token budget its rows use.
    - :meth:`expected_tokens`: its cost model, tokens decoded per answer (the time plan).

    In the generation job, before the weights are loaded: :meth:`load_setup` reads the
    job's files into whatever :meth:`prepare` takes, and :meth:`rows_to_answer` may leave
    problems out. With the engine: :meth:`prepare`, :meth:`row_streams` (per-row random
    streams), :meth:`prompts_per_call` and :meth:`sampling_record`.
    """

    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Param]] = {}
    TRACE_FIELDS: ClassVar[dict[str, str]] = {}
    DECODER: ClassVar[str] = "static"
    DETERMINISTIC: ClassVar[bool] = False
    COMBINES_ANSWERS: ClassVar[bool] = False
    # Where a rolling decoder keeps prompt and chain caches between proposals ("device" or
    # "host"): it changes where memory is used, never an answer. The job sets it from its
    # memory plan through prepare().
    kv_store: str = "device"

    def __init__(self, engine, **params):
        self.engine = engine
        self.params = resolve_params(self.name, self.PARAMS, params)

    # ------------------------------------------------------------ before any job

    @classmethod
    def rows_per_prompt(cls, params: dict[str, Any]) -> int:
        """Rows one prompt takes in a batch, for ``params`` with defaults filled in."""
        return 1

    @classmethod
    def check_method(cls, name: str, method: dict[str, Any], config: dict[str, Any]) -> list[str]:
        """Problems of method ``name`` in a validated ``config``, one line each."""
        return []

    @classmethod
    def job_settings(cls, method: dict[str, Any], config: dict[str, Any]) -> dict | None:
        """Plain values a generation job of ``method`` needs from ``config`` beyond the
        method itself (None: nothing)."""
        return None

    @classmethod
    def job_files(
        cls, method: dict[str, Any], config: dict[str, Any], task: str, model: str
    ) -> dict[str, str]:
        """Files (name → path) a generation job of ``method`` on ``task`` and ``model``
        reads besides the task's data and the model: the rule's extra inputs."""
        return {}

    @classmethod
    def decoded_method(cls, method: dict[str, Any], settings: dict | None) -> dict[str, Any]:
        """The method whose decoder and token budget this method's rows use (``settings``:
        its :meth:`job_settings`): the method itself, unless it drives another sampler."""
        return method

    @classmethod
    def expected_tokens(
        cls, params: dict[str, Any], answer_tokens: float, settings: dict | None = None
    ) -> float:
        """Tokens decoded for one answer (``tokens_decoded``) when an answer is
        ``answer_tokens`` long: the cost model the time plan multiplies by problems and seeds
        (``params``: the method's parameters with defaults filled in; ``settings``: its
        :meth:`job_settings`). By default every token of the answer is decoded once."""
        return float(answer_tokens)

    # ------------------------------------------------------------ in the job

    @classmethod
    def load_setup(cls, files: dict[str, str], settings: dict | None, log=None) -> Any:
        """What :meth:`prepare` takes, read from the job's files (None: nothing)."""
        return None

    @classmethod
    def rows_to_answer(cls, setup: Any, problem_ids: list[str]) -> list[int]:
        """Indices of the problems a job answers (all of them unless the sampler says)."""
        return list(range(len(problem_ids)))

    def prepare(self, setup: Any = None, *, kv_store: str = "device", grade=None, decode=None):
        """Called once by a generation job before :meth:`sample`: ``setup`` from
        :meth:`load_setup`, where caches live (``kv_store``), and the task's grader
        (completions, problem rows → grades) and the tokenizer's decoder, for a sampler that
        reads its own answers."""
        self.kv_store = kv_store

    def row_streams(self, rows: list[dict], seed: int, names: tuple[str, str, str]) -> dict:
        """Keyword arguments of :meth:`sample` that give rows their own random streams
        (``rows``: the problems of a call; ``names``: task, model, method): none by
        default, so a batch shares the job's generator."""
        return {}

    def max_new_tokens(self) -> int | None:
        """The most new tokens a row decodes (None: the sampler has no token budget)."""
        return self.params.get("max_new_tokens")

    def prompts_per_call(self, batch: int) -> int:
        """Prompts per :meth:`sample` call when the memory plan allows ``batch`` rows (a
        sampler that decodes several rows per prompt splits a call into batches itself)."""
        return batch

    def sampling_record(self) -> dict[str, Any]:
        """The effective settings of a run (the ``sampling`` column)."""
        return {"sampler": self.name, **self.params}

    @abstractmethod
    def sample(
        self,
        prompts: list[list[int]],
        generator: torch.Generator,
        budgets: list[int] | None = None,
    ) -> list[dict]:
        """One dict per prompt (in order) with the keys of :func:`completion_record`.

        ``budgets``: the most new tokens of each row (see :func:`token_budgets`); None gives
        every row the method's ``max_new_tokens``. A generation job gives a smaller budget to
        a row whose prompt leaves less room in the model's context.
        """


def chain_seed(seed: int, task_name: str, model_name: str, method_name: str, problem_id) -> int:
    """The seed of a problem's chain under a run seed: the same in any shard or batch."""
    return derive_seed(seed, task_name, model_name, method_name, "problem", str(problem_id))


class PerProblemStreams:
    """Mixin of samplers that give each problem's chain (or particles) its own random stream,
    seeded by :func:`chain_seed` from the run seed and the problem: an answer then depends
    on neither its shard nor its batch."""

    def row_streams(self, rows: list[dict], seed: int, names: tuple[str, str, str]) -> dict:
        return {"chain_seeds": [chain_seed(seed, *names, row["problem_id"]) for row in rows]}


def power_target(params: dict[str, Any]) -> tuple[float, float]:
    """(alpha, proposal temperature) of a sampler targeting p^alpha; a null
    ``proposal_temperature`` in ``params`` becomes 1/alpha there, as recorded."""
    if params["proposal_temperature"] is None:
        params["proposal_temperature"] = 1.0 / float(params["alpha"])
    return float(params["alpha"]), float(params["proposal_temperature"])


def row_seeds(seeds: list[int] | None, generator: torch.Generator | None, n: int) -> list[int]:
    """One seed >= 0 per row for a sampler that gives each row its own random stream:
    ``seeds`` checked (n of them), or n drawn from ``generator`` when None."""
    if seeds is None:
        import torch

        device = generator.device if generator is not None else "cpu"
        return torch.randint(2**62, (n,), generator=generator, device=device).tolist()
    if len(seeds) != n:
        raise UserError(f"{len(seeds)} chain seeds for {n} prompts")
    return [int(s) for s in seeds]


def token_budgets(budgets: list[int] | None, n: int, max_new_tokens: int) -> list[int]:
    """One budget per row: ``budgets`` checked (n integers, each 1..max_new_tokens), or
    ``max_new_tokens`` for every row when None."""
    if budgets is None:
        return [int(max_new_tokens)] * n
    budgets = list(budgets)
    if len(budgets) != n:
        raise UserError(f"{len(budgets)} token budgets for {n} prompts")
    for i, b in enumerate(budgets):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise UserError(f"row {i}: the token budget must be an integer (got {b!r})")
        if not 1 <= b <= max_new_tokens:
            raise UserError(
                f"row {i}: token budget {b} is outside 1..{max_new_tokens} (max_new_tokens)"
            )
    return [int(b) for b in budgets]


def resolve_params(sampler: str, spec: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``spec`` and completed with its defaults.

    Unknown or missing names and values outside a parameter's schema are UserErrors.
    """
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise UserError(
            f"sampler {sampler!r}: unknown parameter {unknown[0]!r}; it takes {sorted(spec)}"
        )
    missing = [name for name, param in spec.items() if param.required and name not in given]
    if missing:
        raise UserError(f"sampler {sampler!r}: missing parameter {missing[0]!r}")
    for name, value in given.items():
        error = jsonschema.exceptions.best_match(
            StrictValidator(spec[name].schema).iter_errors(value)
        )
        if error is not None:
            raise UserError(f"sampler {sampler!r}: {name}: {error.message}")
    return {name: given.get(name, param.default) for name, param in spec.items()}


def completion_record(
    tokens: list[int],
    logp: torch.Tensor,
    entropy: torch.Tensor,
    top1: torch.Tensor,
    finish_reason: str,
    *,
    temperature: float,
    tokens_decoded: int,
    tokens_prefilled: int,
    token_budget: int,
    acceptance_rate: float | None = None,
    proposals: int | None = None,
    sampler_trace: list[dict[str, float]] | None = None,
    logq: torch.Tensor | None = None,
) -> dict:
    """The per-completion fields of the generation schema.

    ``logp``, ``entropy`` and ``top1`` are per new token (EOS included), from the base model
    at T=1: ``mean_entropy`` is the mean entropy of the next-token distributions,
    ``perplexity`` exp(-mean log p), ``self_confidence`` the mean probability of the most
    likely token, ``mean_token_prob`` the mean probability of the chosen token. An empty
    completion has NaN for all four. ``min_token_logp`` is the least likely token's log p
    (base model, T=1); ``sampled_logq_sum`` the answer's log q under the distribution its
    tokens were drawn from (temperature and top-k applied; 0 for greedy decoding; NaN when
    the sampler does not give ``logq``): the two are different confidences, named apart.
    ``sampler_trace`` is the sampler's per-stage diagnostics: one record per stage, in
    order, each a mapping from the keys in the sampler's ``TRACE_FIELDS`` to numbers.
    ``token_budget`` is the most new tokens the row was allowed.
    """
    n = len(tokens)
    logp_sum = float(logp.sum()) if n else 0.0
    return {
        "completion_ids": [int(t) for t in tokens],
        "n_new_tokens": n,
        "finish_reason": finish_reason,
        "logp_sum": logp_sum,
        "mean_entropy": float(entropy.mean()) if n else math.nan,
        "perplexity": math.exp(-logp_sum / n) if n else math.nan,
        "self_confidence": float(top1.mean()) if n else math.nan,
        "mean_token_prob": float(logp.exp().mean()) if n else math.nan,
        "min_token_logp": float(logp.min()) if n else math.nan,
        "sampled_logq_sum": (float(logq.sum()) if n else 0.0) if logq is not None else math.nan,
        "temperature": float(temperature),
        "tokens_decoded": int(tokens_decoded),
        "tokens_prefilled": int(tokens_prefilled),
        "token_budget": int(token_budget),
        "acceptance_rate": acceptance_rate,
        "proposals": proposals,
        "sampler_trace": sampler_trace,
    }
