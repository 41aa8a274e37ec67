"""The manuals (README.md and docs/**/*.md): every relative link resolves, and the numbers
they quote that the code computes cheaply are what the code computes.

Each check finds its number in the text by a pattern precise enough that the sentence is
the one meant; when the text or the code changes and the two no longer agree, the check
fails, and so does a check whose sentence was reworded away (edit the pattern with it).
Whitespace is normalised first, so a number may sit across a line break.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from powersampling.config import (
    GENERATED_KINDS,
    load_config,
    n_shards,
    planned_runs,
    run_seeds,
    task_size,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
MANUALS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def text(name: str) -> str:
    """A manual (path relative to the repository root), whitespace normalised."""
    return re.sub(r"\s+", " ", (ROOT / name).read_text())


def quoted(name: str, pattern: str) -> re.Match:
    """The one place where ``pattern`` occurs in manual ``name``."""
    matches = list(re.finditer(pattern, text(name)))
    assert len(matches) == 1, f"{name}: expected one match of {pattern!r}, got {len(matches)}"
    return matches[0]


def number(value: str) -> float:
    """A quoted number: thousands separators dropped ("3,072" → 3072)."""
    return float(value.replace(",", ""))


def config(name: str) -> dict:
    """A shipped config, validated (offline: nothing here reads a dataset or the hub)."""
    return load_config(ROOT / "config" / name, SCHEMA)


# ---------------------------------------------------------------------------- links

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The text of a manual without code: fenced blocks, indented blocks and code spans."""
    body = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    body = "\n".join(line for line in body.splitlines() if not line.startswith("    "))
    return re.sub(r"(`+).*?\1", "", body)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (a repeated one gets -1, -2, ...)."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_manuals_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in MANUALS}
    assert {"README.md", "docs/paper-scale.md", "docs/samplers/power.md"} <= names


@pytest.mark.parametrize("path", MANUALS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_manual_is_linked_from_another():
    linked = {
        (path.parent / target.partition("#")[0]).resolve()
        for path in MANUALS
        for target in relative_links(path)
        if target.partition("#")[0]
    }
    orphans = [p.relative_to(ROOT).as_posix() for p in MANUALS[1:] if p.resolve() not in linked]
    assert not orphans, f"manuals no other manual links to: {orphans}"


# ---------------------------------------------------------------------------- job counts


def planned_jobs(cfg: dict) -> Counter:
    """Jobs per rule of ``snakemake -n`` on a fresh checkout, from the library's planning
    (the rules' own helpers in rules/common.smk, restated): one generation and one grading
    job per shard of every (task, model, method), one calibration per (model, method) that
    decodes rows, one data job per task and one model job per
    model the runs and studies read, the studies' jobs, one plot per figure of the studies
    the config runs. A slow test below compares this with Snakemake's own count."""
    from powersampling.plots import FIGURES
    from powersampling.sources import model_source
    from powersampling.studies import active_studies

    runs = planned_runs(cfg)
    studies = {study.name for study in active_studies(cfg, runs)}
    from powersampling.plan import calibration_targets

    jobs: Counter[str] = Counter(config_snapshot=1, collect_metrics=1, all=1)
    jobs["generate"] = jobs["grade"] = sum(n_shards(cfg, task) for task, _, _ in run_seeds(cfg))
    # One calibration per (model, decoded method), their table, and the cost table.
    jobs["calibrate"] = len(calibration_targets(cfg))
    jobs["collect_calibration"] = jobs["collect_cost"] = 1
    read = {(run.task, run.model) for run in runs}
    for study in ("logit_lens", "patching"):
        if study in studies:
            section = cfg["studies"][study]
            cells = [(task, model) for task in section["tasks"] for model in section["models"]]
            read.update(cells)
            jobs[f"{study}_shard"] = sum(n_shards(cfg, task) for task, _ in cells)
            jobs[f"collect_{study}"] = 1
    for task in {task for task, _ in read}:
        generated = cfg["tasks"][task]["kind"] in GENERATED_KINDS
        jobs["synthetic_data" if generated else "download_dataset"] += 1
    rule_of_source = {
        "toy": "train_toy_model",
        "rehearsal": "build_rehearsal_model",
        "hub": "download_model",
    }
    for source in {model_source(cfg, model) for _, model in read}:
        if source.kind in rule_of_source:
            jobs[rule_of_source[source.kind]] += 1
    alpaca = [run for run in runs if cfg["tasks"][run.task]["kind"] == "alpaca"]
    jobs["export_alpaca_eval"] = len(alpaca)
    if "alpaca_eval_judge" in cfg:
        jobs["judge_alpaca_eval"] = len(alpaca)
    jobs["plot"] = sum(spec.study is None or spec.study in studies for spec in FIGURES.values())
    if "exact_toy" in studies:
        from powersampling.toy.studies import STUDIES as EXACT_STUDIES

        jobs["toy_study"] = len(EXACT_STUDIES)
    if "truncation" in studies:
        jobs["collect_truncation"] = 1
    if "dps" in studies:
        dps = cfg["studies"]["dps"]
        cells = len(dps["tasks"]) * len(dps["models"])
        jobs["dps_pool"] = jobs["evaluate_dps"] = cells
        jobs["train_controller"] = cells * len(dps["controllers"])
        jobs["question_embeddings"] = cells * ("mlp_hq" in dps["controllers"])
        jobs["collect_dps"] = 1
    if "reliability" in studies:
        jobs["collect_reliability"] = 1
    return +jobs


PLANS_ITS = r"`snakemake -n --configfile config/([\w.]+\.yaml)` plans its ([\d,]+) jobs"
# Where each full-size config's job count is quoted.
JOB_COUNT_QUOTES = {
    "paper.yaml": "docs/paper-scale.md",
    "truncation.yaml": "docs/studies/interpretability.md",
    "dps.yaml": "docs/studies/dps.md",
    "reliability.yaml": "docs/studies/reliability.md",
}


def test_every_quoted_job_count_is_checked():
    quotes = {
        p.relative_to(ROOT).as_posix(): re.findall(PLANS_ITS, text(p.relative_to(ROOT)))
        for p in MANUALS
    }
    found = {cfg: name for name, hits in quotes.items() for cfg, _ in hits}
    assert found == JOB_COUNT_QUOTES


@pytest.mark.parametrize("config_name", sorted(JOB_COUNT_QUOTES))
def test_quoted_job_count(config_name):
    doc = JOB_COUNT_QUOTES[config_name]
    match = quoted(doc, PLANS_ITS.replace(r"([\w.]+\.yaml)", re.escape(config_name)))
    jobs = planned_jobs(config(config_name))
    assert number(match.group(1)) == sum(jobs.values()), dict(jobs)


def test_the_paper_configs_jobs_by_rule():
    match = quoted(
        "docs/paper-scale.md",
        r"plans its [\d,]+ jobs in seconds without touching a dataset or model: ([\d,]+) "
        r"generation jobs \(one per shard of each task, model and method, SMC on MATH500 "
        r"included\), as many grading jobs and ([\d,]+) AlpacaEval exports",
    )
    jobs = planned_jobs(config("paper.yaml"))
    assert number(match.group(1)) == jobs["generate"] == jobs["grade"]
    assert number(match.group(2)) == jobs["export_alpaca_eval"]


def test_the_demos_job_count():
    match = quoted("docs/toy-world.md", r"once `\.venv` was installed \(([\d,]+) jobs\)")
    assert number(match.group(1)) == sum(planned_jobs(config("config.yaml")).values())


def test_the_rehearsals_generation_jobs():
    match = quoted("docs/testing.md", r"most of it the rehearsal \(([\d,]+) generation jobs")
    assert number(match.group(1)) == planned_jobs(config("rehearsal.yaml"))["generate"]


def dry_run_jobs(config_name: str, workdir: Path) -> Counter:
    """Snakemake's own plan for a config, on an empty working directory."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile")]
        + ["--directory", str(workdir), "--configfile", str(ROOT / "config" / config_name)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (result.stdout + result.stderr).split("Job stats:", 1)[1]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table.split("\n\n", 1)[0], flags=re.M)
    return Counter({rule: int(count) for rule, count in rows if rule != "total"})


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name", [*sorted(JOB_COUNT_QUOTES), "config.yaml", "rehearsal.yaml"]
)
def test_planned_jobs_is_snakemakes_plan(config_name, tmp_path):
    assert planned_jobs(config(config_name)) == dry_run_jobs(config_name, tmp_path)


# ---------------------------------------------------------------------------- the toy model


def toy_parameter_count() -> int:
    from powersampling.memory import parameter_count
    from powersampling.toy.model import toy_model_config
    from powersampling.toy.tokenizer import VOCAB_SIZE

    return parameter_count(toy_model_config(VOCAB_SIZE))


def test_the_toy_models_size_wherever_it_is_quoted():
    quotes = [
        (p.relative_to(ROOT).as_posix(), value)
        for p in MANUALS
        for value in re.findall(r"\b(\d+\.\d+)M parameters", text(p.relative_to(ROOT)))
    ]
    assert len(quotes) >= 2, quotes  # the toy world's model and the speed benchmark's
    expected = f"{toy_parameter_count() / 1e6:.2f}"
    assert all(value == expected for _, value in quotes), (expected, quotes)


def test_the_toy_models_shape_and_training():
    from powersampling.sources import toy_settings
    from powersampling.toy.shape import DEFAULT_MODEL_SHAPE
    from powersampling.toy.tokenizer import VOCAB_SIZE
    from powersampling.toy.train import train_config

    match = quoted(
        "docs/toy-world.md",
        r"model of [\d.]+M parameters \((\d+) blocks of width (\d+) with (\d+) attention "
        r"heads, .*? trained by rule `train_toy_model` on ([\d,]+) fresh problems of "
        r"(\d+)-(\d+) steps, held-out questions excluded, ([\d,]+) steps of (\d+) examples "
        r"\((\d+)% with the instruction-style prompt\)",
    )
    shape = DEFAULT_MODEL_SHAPE
    train = train_config(toy_settings(config("config.yaml"), "toy").get("train"))
    assert [number(v) for v in match.groups()] == [
        shape["num_hidden_layers"],
        shape["hidden_size"],
        shape["num_attention_heads"],
        train["n_problems"],
        *train["generator"]["steps"],
        train["steps"],
        train["batch_size"],
        round(100 * train["instruction_share"]),
    ]
    widths = quoted(
        "docs/studies/interpretability.md", r"For the toy model \(H = (\d+), V = (\d+);"
    )
    assert [number(v) for v in widths.groups()] == [shape["hidden_size"], VOCAB_SIZE]


def test_the_demo_configs_tasks():
    cfg = config("config.yaml")
    match = quoted(
        "docs/toy-world.md",
        r"The default tasks ask arithmetic with (\d+)-(\d+) steps and binding with (\d+)-(\d+):",
    )
    steps = [cfg["tasks"][task]["generator"]["steps"] for task in ("arithmetic", "binding")]
    assert [number(v) for v in match.groups()] == [*steps[0], *steps[1]]
    match = quoted("docs/toy-world.md", r"\(`make demo` on a 2-core CPU; (\d+) problems per task,")
    assert {cfg["tasks"][task]["limit"] for task in ("arithmetic", "binding")} == {
        number(match.group(1))
    }


# ---------------------------------------------------------------------------- published shapes


def test_published_model_shapes():
    from powersampling.architectures import published_config
    from powersampling.memory import attention_dims, kv_bytes_per_token

    qwen_math = published_config("qwen2.5-math-7b")
    match = quoted(
        "docs/studies/interpretability.md",
        r"For Qwen2\.5-Math-7B \(H = ([\d,]+), intermediate ([\d,]+), V = ([\d,]+)\)",
    )
    assert [number(v) for v in match.groups()] == [
        qwen_math.hidden_size,
        qwen_math.intermediate_size,
        qwen_math.vocab_size,
    ]
    match = quoted("docs/paper-scale.md", r"\(Qwen2\.5-Math-7B has ([\d,]+) tokens\)")
    assert number(match.group(1)) == qwen_math.max_position_embeddings

    phi, qwen = published_config("phi-3.5-mini-instruct"), published_config("qwen2.5-7b")
    match = quoted(
        "docs/paper-scale.md",
        r"Phi-3\.5-mini has (\d+) key-value heads of (\d+) dims in each of its (\d+) layers "
        r"\(no grouped-query attention\): (\d+) KiB of KV per token, (\w+) times "
        r"Qwen2\.5-7B's (\d+) KiB",
    )
    layers, heads, kv_heads, head_dim = attention_dims(phi)
    phi_kib = kv_bytes_per_token(phi, torch.bfloat16) / 1024
    qwen_kib = kv_bytes_per_token(qwen, torch.bfloat16) / 1024
    times = {"five": 5, "six": 6, "seven": 7, "eight": 8}[match.group(5)]
    assert kv_heads == heads  # no grouped-query attention
    assert [number(match.group(i)) for i in (1, 2, 3, 4, 6)] == [
        kv_heads,
        head_dim,
        layers,
        phi_kib,
        qwen_kib,
    ]
    assert times == round(phi_kib / qwen_kib)


# ---------------------------------------------------------------------------- the memory plan

MODEL_NAMES = {
    "Qwen2.5-Math-7B": "qwen2.5-math-7b",
    "Qwen2.5-7B": "qwen2.5-7b",
    "Phi-3.5-mini-instruct": "phi-3.5-mini-instruct",
}


def memory_cli(argv: list[str], capsys) -> dict[tuple[str, str], list[str]]:
    """``python -m powersampling.memory`` with ``argv``: its table, by (model, method)."""
    from powersampling.memory import main

    capsys.readouterr()
    assert main([*argv, "--schema", str(SCHEMA)]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    return {tuple(line.split()[:2]): line.split() for line in lines if line.strip()}


def test_the_memory_table(capsys):
    doc = (ROOT / "docs" / "paper-scale.md").read_text()
    command, table = re.search(
        r"^    python -m powersampling\.memory (.+)\n\n(\| model \| method .*?)\n\n",
        doc,
        re.M | re.S,
    ).groups()
    header, _, *rows = table.splitlines()
    assert header.startswith("| model | method | batch (80 GB) | peak GiB | batch (H200:")
    argv = command.split()
    assert argv[argv.index("--gpu-gib") + 1] == "80"
    h200 = re.search(r"batch \(H200: `--gpu-gib (\d+)`\)", header).group(1)
    at_80 = memory_cli(argv, capsys)
    at_h200 = memory_cli([*argv[: argv.index("--gpu-gib")], "--gpu-gib", h200], capsys)
    covered = set()
    for row in rows:
        models, methods, batch, peak, batch_h200 = (c.strip() for c in row.strip("|").split("|"))
        for model in models.split(", "):
            for method in methods.split(", "):
                key = (MODEL_NAMES[model], method.replace(" ", "_"))
                covered.add(key)
                assert at_80[key][2].split("/")[0] == batch, (key, at_80[key])
                assert at_80[key][3] == peak, (key, at_80[key])
                assert at_h200[key][2].split("/")[0] == batch_h200, (key, at_h200[key])
    assert covered == set(at_80), "the table leaves out (model, method) pairs the plan has"


def test_the_memory_tables_settings():
    from powersampling.memory.units import DEFAULT_PROMPT_TOKENS

    cfg = config("paper.yaml")
    match = quoted(
        "docs/paper-scale.md",
        r"\(bf16, (\d+)-token prompts, batch (\d+) requested, ([\d,]+) new tokens\.\)",
    )
    assert {cfg["models"][m]["dtype"] for m in MODEL_NAMES.values()} == {"bfloat16"}
    budgets = {method["max_new_tokens"] for method in cfg["methods"].values()}
    assert [number(v) for v in match.groups()] == [
        DEFAULT_PROMPT_TOKENS,
        cfg["generation"]["batch_size"],
        *budgets,
    ]


# ---------------------------------------------------------------------------- configs


def test_the_paper_configs_settings():
    cfg = config("paper.yaml")
    match = quoted(
        "docs/paper-scale.md",
        r"low temperature \(T = 1/α = ([\d.]+)\) and power sampling \(α = (\d+), block "
        r"(\d+), (\d+) tokens, (\d+) MH steps\); (\d+) seeds; .*? restricted to the top "
        r"(\d+) tokens",
    )
    power, low = cfg["methods"]["power"], cfg["methods"]["low_temperature"]
    seeds = {len(experiment["seeds"]) for experiment in cfg["experiments"]}
    assert [number(v) for v in match.groups()] == [
        low["T"],
        power["alpha"],
        power["block_size"],
        power["max_new_tokens"],
        power["mcmc_steps"],
        *seeds,
        power["proposal_top_k"],
    ]
    assert low["T"] == 1 / power["alpha"]
    assert {m.get("top_k") for m in cfg["methods"].values() if m["sampler"] == "temperature"} == {
        power["proposal_top_k"]
    }


def test_the_truncation_configs_settings():
    cfg = config("truncation.yaml")
    match = quoted(
        "docs/studies/interpretability.md",
        r"L = (\d+)…(\d+) plus the last block and the full models, power sampling α = (\d+) "
        r"\(proposal temperature ([\d.]+)\), (\d+)-token blocks, (\d+) MH steps, (\d+) new "
        r"tokens, a temperature-([\d.]+) baseline, all (\d+) MATH500 problems, (\d+) seeds",
    )
    layers = {m["truncation"]["layers"] for m in cfg["models"].values() if "truncation" in m}
    (power,) = [m for m in cfg["methods"].values() if m["sampler"] == "power"]
    (temperature,) = [m for m in cfg["methods"].values() if m["sampler"] == "temperature"]
    (seeds,) = {len(experiment["seeds"]) for experiment in cfg["experiments"]}
    assert [number(v) for v in match.groups()] == [
        min(layers),
        max(layers),
        power["alpha"],
        1 / power["alpha"],  # the default proposal temperature
        power["block_size"],
        power["mcmc_steps"],
        power["max_new_tokens"],
        temperature["T"],
        task_size(cfg, "math500"),
        seeds,
    ]
    assert layers == set(range(min(layers), max(layers) + 1))
    assert "proposal_temperature" not in power
