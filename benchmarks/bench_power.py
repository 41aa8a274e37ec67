"""Benchmark: batched exact power sampling vs the published one-proposal-at-a-time procedure.

Same model, α, block size, MH steps and token cap for both. The batched sampler runs
batches of 1, 8, 32, 64 problems (one chain each); the reference runs a few problems one
at a time, every proposal a fresh ``model.generate`` call (see ``reference_power.py``).
EOS is masked out of the model's logits so every run ends by the token cap and both do
the same amount of work per problem. Results: ``benchmarks/results/<name>.json`` and a
markdown table on stdout. Not a test; ratios are measured within one run: ``--repeats``
interleaved rounds (every batch size, then the reference), medians reported, and the ratio
at batch 32 also per round, by wall time and by CPU time of this process.

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
from powersampling.samplers.power import PowerSampler  # noqa: E402
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
    }
    gen = torch.Generator().manual_seed(0)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    prompts = torch.randint(0, vocab - 1, (max(batch_sizes), args.prompt_len), generator=gen)
    prompts = prompts.tolist()
    sampler = PowerSampler(
        engine,
        alpha=args.alpha,
        block_size=args.block_size,
        mcmc_steps=args.mcmc_steps,
        max_new_tokens=args.max_new_tokens,
    )
    sampler.sample(prompts[:2], torch_generator(0, device))  # warm-up

    # Interleaved repeats (every batch size, then the reference, per repeat) and medians:
    # the machine may be shared, so each repeat sees similar conditions for all methods.
    runs: dict[str, list[dict]] = {}
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
    out_path = Path(args.out_dir) / f"{result['name']}.json"
    write_text_atomic(out_path, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    print(f"\nwritten: {out_path}")
    return result


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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
