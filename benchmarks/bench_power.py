"""Benchmark: batched exact power sampling vs the published one-proposal-at-a-time procedure.

Same model, α, block size, MH steps and token cap for both. The batched sampler runs
batches of 1, 8, 32, 64 problems (one chain each); the reference runs a few problems one
at a time, every proposal a fresh ``model.generate`` call (see ``reference_power.py``).
EOS is masked out of the model's logits so every run ends by the token cap and both do
the same amount of work per problem. Results: ``benchmarks/results/<name>.json`` and a
markdown table on stdout. Not a test; ratios are measured within one run: ``--repeats``
interleaved rounds (every batch size, then the reference), medians reported, and the ratio
at batch 32 also per round, by wall time and by CPU time of this process.

The same run also compares three samplers at the same α, token cap and batch of prompts
(``--compare-batches``, default 1 and 8 prompts; the same prompts for all three): plain
temperature sampling at T = 1/α (one sample per prompt), the batched MH power sampler
above, and SMC power sampling (``SMCSampler``: ``--smc-particles`` particles per prompt,
resampling when ESS < ``--smc-ess-threshold``·N). Each round runs, per batch, temperature,
then MH, then SMC, then a control: temperature sampling of N answers per prompt in one batch
(SMC's decode rows without its weights and resampling). Reported: seconds per answer (per
prompt), tokens decoded per answer (compute), decoded tokens per second, and the time per
answer of each method over temperature's, per round and as the median of the rounds. With
EOS masked, every method decodes full-length answers (the cap), so all answers have the
same length.

    python benchmarks/bench_power.py --model toy                       # CPU, a few minutes
    python benchmarks/bench_power.py --model qwen2.5-math-1.5b-shape --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_power import reference_power_sample  # noqa: E402

from powersampling.engine import DecodingEngine  # noqa: E402
from powersampling.io import write_text_atomic  # noqa: E402
from powersampling.samplers.basic import TemperatureSampler  # noqa: E402
from powersampling.samplers.power import PowerSampler  # noqa: E402
from powersampling.samplers.smc import SMCSampler  # noqa: E402
from powersampling.seeding import torch_generator  # noqa: E402

# Peak HBM bandwidth in GB/s (vendor figures) for the memory-bandwidth bound.
BANDWIDTH_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}


def build_model(kind: str, model_dir: str | None, device: str):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if model_dir:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    elif kind == "toy":  # the toy world's model shape and vocabulary, random weights
        from powersampling.toy.model import build_toy_model, toy_model_config
        from powersampling.toy.tokenizer import VOCAB_SIZE

        config = toy_model_config(VOCAB_SIZE, max_position_embeddings=2048)
        model = build_toy_model(config, seed=0)
    elif kind == "qwen2.5-math-1.5b-shape":  # the shape of Qwen2.5-Math-1.5B, random weights
        config = Qwen2Config(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            torch_dtype="bfloat16",
        )
        model = Qwen2ForCausalLM(config)
    else:
        raise SystemExit(f"unknown --model {kind!r}")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return model.to(device=device, dtype=dtype).eval()


def mask_token(model, token: int) -> None:
    """Make ``token`` impossible (logit -1e4) in every forward pass, engine and generate alike."""

    def hook(module, inputs, output):
        output[..., token] = -1e4
        return output

    model.get_output_embeddings().register_forward_hook(hook)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy", choices=["toy", "qwen2.5-math-1.5b-shape"])
    ap.add_argument("--model-dir", default=None, help="a trained model directory instead")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--mcmc-steps", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--reference-problems", type=int, default=2)
    ap.add_argument(
        "--compare-batches",
        default="1,8",
        help="batches of prompts at which temperature, MH and SMC are compared ('': none)",
    )
    ap.add_argument("--smc-particles", type=int, default=32, help="SMC particles per prompt")
    ap.add_argument(
        "--smc-ess-threshold",
        type=float,
        default=0.5,
        help="SMC resamples when ESS < this fraction of the particles (κ)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians reported")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="HBM bandwidth (GPU)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (1 avoids thread contention on shared, small machines)",
    )
    ap.add_argument("--name", default=None)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)

    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
    model = build_model(args.model, args.model_dir, device)
    vocab = model.config.vocab_size
    eos = vocab - 1
    mask_token(model, eos)  # random weights: no run may end early, all end by the cap
    engine = DecodingEngine(model, eos_token_ids=[eos], pad_token_id=eos)
    settings = {
        "alpha": args.alpha,
        "block_size": args.block_size,
        "mcmc_steps": args.mcmc_steps,
        "max_new_tokens": args.max_new_tokens,
        "prompt_len": args.prompt_len,
        "smc_particles": args.smc_particles,
        "smc_ess_threshold": args.smc_ess_threshold,
    }
    gen = torch.Generator().manual_seed(0)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    compare_batches = [int(b) for b in args.compare_batches.split(",") if b.strip()]
    n_prompts = max(batch_sizes + compare_batches)
    prompts = torch.randint(0, vocab - 1, (n_prompts, args.prompt_len), generator=gen)
    prompts = prompts.tolist()
    sampler = PowerSampler(
        engine,
        alpha=args.alpha,
        block_size=args.block_size,
        mcmc_steps=args.mcmc_steps,
        max_new_tokens=args.max_new_tokens,
    )
    temperature = TemperatureSampler(engine, T=1.0 / args.alpha, max_new_tokens=args.max_new_tokens)
    smc = SMCSampler(
        engine,
        alpha=args.alpha,
        particles=args.smc_particles,
        ess_threshold=args.smc_ess_threshold,
        max_new_tokens=args.max_new_tokens,
    )
    # The methods of the comparison, in the order each round runs them. The last is no
    # power sampler: temperature sampling of N (= particles) answers per prompt in one
    # batch, the same rows and tokens as SMC's decode without its weights and resampling.
    n_rows = args.smc_particles
    methods = {
        "temperature": temperature.sample,
        "MH": sampler.sample,
        "SMC": smc.sample,
        f"temperature ×{n_rows} rows": lambda ps, g: temperature.sample(
            [q for q in ps for _ in range(n_rows)], g
        ),
    }
    sampler.sample(prompts[:2], torch_generator(0, device))  # warm-up
    if compare_batches:
        temperature.sample(prompts[:2], torch_generator(0, device))
        smc.sample(prompts[:2], torch_generator(0, device))

    # Interleaved repeats (every batch size, then the reference, per repeat) and medians:
    # the machine may be shared, so each repeat sees similar conditions for all methods.
    runs: dict[str, list[dict]] = {}
    compare_runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeats):
        for b in batch_sizes:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = sampler.sample(prompts[:b], torch_generator(1 + rep, device))
            sync(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.setdefault(f"batched (batch {b})", []).append(
                {
                    "batch": b,
                    "problems": b,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "tokens_decoded": sum(o["tokens_decoded"] for o in out),
                    "tokens_prefilled": sum(o["tokens_prefilled"] for o in out),
                    "acceptance_rate": sum(o["acceptance_rate"] for o in out) / b,
                }
            )
            print(f"repeat {rep} batched {b}: {wall:.2f}s wall, {cpu:.2f}s cpu", file=sys.stderr)
        ref = []
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(args.reference_problems):
            ref.append(
                reference_power_sample(
                    model,
                    prompts[k],
                    eos_id=eos,
                    alpha=args.alpha,
                    block_size=args.block_size,
                    mcmc_steps=args.mcmc_steps,
                    max_new_tokens=args.max_new_tokens,
                    seed=k + 1000 * rep,
                )
            )
        sync(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = args.reference_problems
        runs.setdefault("reference (one at a time)", []).append(
            {
                "batch": 1,
                "problems": n,
                "wall_s": wall,
                "cpu_s": cpu,
                "tokens_decoded": sum(r["tokens_decoded"] for r in ref),
                "tokens_prefilled": sum(r["tokens_prefilled"] for r in ref),
                "acceptance_rate": sum(r["acceptance_rate"] for r in ref) / n,
            }
        )
        print(f"repeat {rep} reference: {wall:.2f}s wall, {cpu:.2f}s cpu", file=sys.stderr)
        for b in compare_batches:  # the same prompts, α and cap for every method
            for label, method in methods.items():
                sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                out = method(prompts[:b], torch_generator(1 + rep, device))
                sync(device)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                compare_runs.setdefault((label, b), []).append(
                    {
                        "wall_s": wall,
                        "cpu_s": cpu,
                        "tokens_decoded": sum(o["tokens_decoded"] for o in out),
                        "tokens_prefilled": sum(o["tokens_prefilled"] for o in out),
                        "new_tokens": sum(o["n_new_tokens"] for o in out),
                        "outputs": len(out),
                    }
                )
                print(
                    f"repeat {rep} compare {label} {b}: {wall:.2f}s wall, {cpu:.2f}s cpu",
                    file=sys.stderr,
                )

    rows = [summarise(method, reps) for method, reps in runs.items()]
    # CPU time of this process is also recorded: on a shared CPU machine, wall time includes
    # waiting for other processes, while CPU seconds (one thread) measure the work itself.
    ref_runs = runs["reference (one at a time)"]
    ref_rate = rows[-1]["problems_per_s"]
    ref_cpu_per_problem = rows[-1]["cpu_s"] / rows[-1]["problems"]
    for row, reps in zip(rows, runs.values(), strict=True):
        row["speedup_vs_reference"] = row["problems_per_s"] / ref_rate
        row["cpu_speedup_vs_reference"] = ref_cpu_per_problem / (row["cpu_s"] / row["problems"])
        # The same ratios within each repeat (the reference run right after this one).
        row["speedup_per_repeat"] = [
            (r["problems"] / r["wall_s"]) / (q["problems"] / q["wall_s"])
            for r, q in zip(reps, ref_runs, strict=True)
        ]
        row["cpu_speedup_per_repeat"] = [
            (q["cpu_s"] / q["problems"]) / (r["cpu_s"] / r["problems"])
            for r, q in zip(reps, ref_runs, strict=True)
        ]

    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = None
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        bw = args.bandwidth_gbs or next((v for k, v in BANDWIDTH_GBS.items() if k in name), None)
        if bw:
            step_s = weight_bytes / (bw * 1e9)  # one decode step reads every weight once
            bound = {"bandwidth_gbs": bw, "min_s_per_decode_step": step_s}
            for row in rows:
                row["bound_decode_tokens_per_s"] = row["batch"] / step_s
    cfg = model.config
    result = {
        "name": args.name or f"power_{args.model}_{device.split(':')[0]}",
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "device_kind": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model_dir or args.model,
        "model_shape": {
            "parameters": n_params,
            "weight_bytes": weight_bytes,
            "dtype": str(next(model.parameters()).dtype),
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "layers": cfg.num_hidden_layers,
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
        },
        "settings": settings,
        "repeats": args.repeats,
        "bandwidth_bound": bound,
        "rows": rows,
        "speedup_batch32_vs_reference": next(
            (r["speedup_vs_reference"] for r in rows if r["batch"] == 32), None
        ),
        "cpu_speedup_batch32_vs_reference": next(
            (r["cpu_speedup_vs_reference"] for r in rows if r["batch"] == 32), None
        ),
    }
    if compare_batches:
        comparison = compare(compare_runs, compare_batches, list(methods), smc, args)
        result["comparison"] = comparison
        top = [r for r in comparison["rows"] if r["batch"] == comparison["headline_batch"]]
        by = {r["method"]: r for r in top}
        result["smc_vs_temperature_s_per_answer"] = by["SMC"]["time_ratio_vs_temperature"]
        result["mh_vs_temperature_s_per_answer"] = by["MH"]["time_ratio_vs_temperature"]
    out_path = Path(args.out_dir) / f"{result['name']}.json"
    write_text_atomic(out_path, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    print(f"\nwritten: {out_path}")
    return result


def compare(compare_runs: dict, batches: list[int], methods: list[str], smc, args) -> dict:
    """The temperature / MH / SMC comparison: one row per method and batch of prompts
    (answers: one per prompt; for the ``temperature ×N rows`` control, N per prompt, but
    its times and tokens are per prompt too)."""
    rows = []
    for b in batches:
        base = compare_runs[("temperature", b)]
        for label in methods:
            reps = compare_runs[(label, b)]
            med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
            # Within-round ratios: this method's time per answer over temperature's, both
            # on the same prompts in the same round (the same batch, so answers cancel).
            per_round = [r["wall_s"] / q["wall_s"] for r, q in zip(reps, base, strict=True)]
            per_round_cpu = [r["cpu_s"] / q["cpu_s"] for r, q in zip(reps, base, strict=True)]
            rows.append(
                {
                    "method": label,
                    "batch": b,
                    "prompts": b,
                    "wall_s": med["wall_s"],
                    "cpu_s": med["cpu_s"],
                    "wall_s_all": [r["wall_s"] for r in reps],
                    "cpu_s_all": [r["cpu_s"] for r in reps],
                    "s_per_answer": med["wall_s"] / b,
                    "cpu_s_per_answer": med["cpu_s"] / b,
                    "answers_per_s": b / med["wall_s"],
                    "outputs_per_prompt": reps[0]["outputs"] / b,
                    "new_tokens_per_output": med["new_tokens"] / reps[0]["outputs"],
                    "tokens_decoded": med["tokens_decoded"],
                    "tokens_decoded_per_answer": med["tokens_decoded"] / b,
                    "decode_tokens_per_s": med["tokens_decoded"] / med["wall_s"],
                    "tokens_prefilled": med["tokens_prefilled"],
                    "time_ratio_vs_temperature": statistics.median(per_round),
                    "time_ratio_vs_temperature_per_round": per_round,
                    "cpu_time_ratio_vs_temperature": statistics.median(per_round_cpu),
                    "cpu_time_ratio_vs_temperature_per_round": per_round_cpu,
                }
            )
    return {
        "batches": batches,
        "headline_batch": max(batches),
        "eos_masked": True,  # every answer runs to max_new_tokens for every method
        "methods": {
            "temperature": {"T": 1.0 / args.alpha},
            "MH": {
                "alpha": args.alpha,
                "block_size": args.block_size,
                "mcmc_steps": args.mcmc_steps,
            },
            "SMC": {
                "alpha": args.alpha,
                "particles": args.smc_particles,
                "ess_threshold": args.smc_ess_threshold,
                "resample_every": smc.params["resample_every"],
                "proposal_temperature": smc.temperature,
            },
            f"temperature ×{args.smc_particles} rows": {
                "T": 1.0 / args.alpha,
                "samples_per_prompt": args.smc_particles,
                "note": "control: SMC's decode batch without weights or resampling",
            },
        },
        "max_new_tokens": args.max_new_tokens,
        "prompt_len": args.prompt_len,
        "rows": rows,
    }


def summarise(method: str, reps: list[dict]) -> dict:
    """One table row from the repeats of one method: medians of times and of counters."""
    med = {k: statistics.median(r[k] for r in reps) for k in reps[0] if k not in ("batch",)}
    return {
        "method": method,
        "batch": reps[0]["batch"],
        "problems": reps[0]["problems"],
        "wall_s": med["wall_s"],
        "cpu_s": med["cpu_s"],
        "wall_s_all": [r["wall_s"] for r in reps],
        "cpu_s_all": [r["cpu_s"] for r in reps],
        "s_per_problem": med["wall_s"] / reps[0]["problems"],
        "problems_per_s": reps[0]["problems"] / med["wall_s"],
        "tokens_decoded": med["tokens_decoded"],
        "decode_tokens_per_s": med["tokens_decoded"] / med["wall_s"],
        "tokens_prefilled": med["tokens_prefilled"],
        "acceptance_rate": med["acceptance_rate"],
    }


def markdown_table(result: dict) -> str:
    cols = [
        ("method", "{}"),
        ("s_per_problem", "{:.3f}"),
        ("problems_per_s", "{:.3f}"),
        ("decode_tokens_per_s", "{:.0f}"),
        ("speedup_vs_reference", "{:.1f}×"),
        ("cpu_speedup_vs_reference", "{:.1f}×"),
    ]
    if result["bandwidth_bound"]:
        cols.append(("bound_decode_tokens_per_s", "{:.0f}"))
    lines = [
        f"{result['model']} on {result['device']} ({result['device_kind']}), "
        f"settings {result['settings']}",
        "",
        "| " + " | ".join(c for c, _ in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(f.format(row[c]) for c, f in cols) + " |")
    for row in result["rows"]:
        if row["batch"] == 32:
            per_wall = ", ".join(f"{x:.1f}" for x in row["speedup_per_repeat"])
            per_cpu = ", ".join(f"{x:.1f}" for x in row["cpu_speedup_per_repeat"])
            lines += [
                "",
                f"batch 32 vs reference over {result['repeats']} repeats (medians): "
                f"wall {row['speedup_vs_reference']:.1f}× (per repeat {per_wall}); "
                f"CPU {row['cpu_speedup_vs_reference']:.1f}× (per repeat {per_cpu})",
            ]
    if result.get("comparison"):
        lines += ["", comparison_table(result)]
    return "\n".join(lines)


def comparison_table(result: dict) -> str:
    """Temperature vs MH vs SMC at the same α, cap and prompts (rows of ``comparison``)."""
    comp = result["comparison"]
    smc = comp["methods"]["SMC"]
    lines = [
        f"temperature (T = 1/α) vs MH vs SMC ({smc['particles']} particles, "
        f"κ = {smc['ess_threshold']}), α = {smc['alpha']}, {comp['max_new_tokens']} new "
        f"tokens (EOS masked: every answer runs to the cap), medians of {result['repeats']} "
        "rounds",
        "",
        "| method | prompts | s / answer | tokens decoded / answer | decode tokens / s "
        "| time / answer vs temperature | per round | CPU time vs temperature |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in comp["rows"]:
        per = ", ".join(f"{x:.1f}" for x in r["time_ratio_vs_temperature_per_round"])
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['s_per_answer']:.4f} "
            f"| {r['tokens_decoded_per_answer']:.0f} | {r['decode_tokens_per_s']:.0f} "
            f"| {r['time_ratio_vs_temperature']:.2f}× | {per} "
            f"| {r['cpu_time_ratio_vs_temperature']:.2f}× |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
