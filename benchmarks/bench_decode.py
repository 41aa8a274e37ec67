"""Benchmark: a greedy/temperature decode step against context length, with and without copying
the KV cache at each step.

Two paths decode the same rows on the same model, side by side in one run, both through
:meth:`DecodingEngine.extend` (the same loop, token picks and bookkeeping):

* ``buffer``: the engine as it is, which writes each step's keys and values in place into
  one preallocated buffer (``engine/static_rows.py``, ``BufferRows``);
* ``dynamic_cache``: the engine's layout before the buffer, transformers' ``DynamicCache``,
  whose ``update`` concatenates each layer's keys and values with the new token's
  (``torch.cat``: a copy of the whole cache at every step). The engine keeps it for the
  models a buffer cannot serve (``GrowingRows``); :func:`dynamic_cache_engine` makes an
  engine use it for every model.

For each context length (prompt columns), both paths start from the same prefill and run
``--steps`` decode steps; a step's time is the interval between the starts of two
consecutive decode forwards (the forward, the token pick and the bookkeeping), median over
the steps. The prefill itself is replaced by random keys and values of the prompt's shape
(a step's cost does not depend on their values), so a run measures decode steps only and
stays short. Rounds interleave the paths at every length; medians of the rounds are
reported, and the old/new ratio as the median of the per-round ratios, by wall and by CPU
time of this process. Writes ``benchmarks/results/<name>.json`` and a markdown table.

    python benchmarks/bench_decode.py                    # CPU, about a minute
    python benchmarks/bench_decode.py --device cuda --batch 64 --lengths 256,1024,4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from powersampling.engine import DecodingEngine
from powersampling.engine.static_rows import GrowingRows
from powersampling.io import write_text_atomic

PATHS = ("dynamic_cache", "buffer")


def build_model(args) -> Qwen2ForCausalLM:
    """A random Qwen2 wide enough that the cache dominates a step: no grouped-query
    attention, so KV per token = layers x 2 x hidden x dtype bytes (32 KiB at the default
    512 x 8 layers in float32)."""
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.lengths) + args.steps + 8,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    return Qwen2ForCausalLM(config).to(device=args.device, dtype=dtype).eval()


def random_prefill(engine: DecodingEngine):
    """A stand-in for ``engine.prefill``: last-position logits [B, V] and a ``DynamicCache``
    of random keys and values [B, kv_heads, P, head_dim] per layer, for any left-padded
    ``ids`` [B, P] (the benchmark's prompts are unpadded)."""
    cfg = engine.model.config
    dtype = next(engine.model.parameters()).dtype
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    def prefill(ids, attn):
        B, P = ids.shape
        cache = DynamicCache(config=cfg)
        shape = (B, cfg.num_key_value_heads, P, head_dim)
        for layer in range(cfg.num_hidden_layers):
            keys = torch.randn(shape, dtype=dtype, device=ids.device)
            cache.update(keys, torch.randn_like(keys), layer)
        return torch.randn((B, cfg.vocab_size), dtype=dtype, device=ids.device), cache

    return prefill


def dynamic_cache_engine(engine: DecodingEngine) -> DecodingEngine:
    """An engine on the same model and prefill whose rows always decode through the
    prefill's ``DynamicCache`` (``GrowingRows``), whatever the model."""
    old = DecodingEngine(engine.model, engine.eos_token_ids, engine.pad_token_id)
    old.prefill = engine.prefill

    def running_rows(ids, attn, max_new_tokens):
        logits, cache = old.prefill(ids, attn)
        return GrowingRows(old, logits, cache, attn)

    old._running_rows = running_rows
    return old


class StepClock:
    """Wall and CPU time at the start of every decode forward (one token per row), and the
    class of the cache the forwards were given."""

    def __init__(self, engine: DecodingEngine, device: str):
        self.wall, self.cpu, self.device, self.caches = [], [], device, set()
        self.cache_arg = engine.cache_arg
        self.handle = engine.model.register_forward_pre_hook(self.tick, with_kwargs=True)

    def tick(self, module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            self.caches.add(type(kwargs[self.cache_arg]).__name__)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

    def step_ms(self) -> tuple[float, float]:
        """Median wall and CPU milliseconds between consecutive decode forwards."""
        wall = [1e3 * (b - a) for a, b in zip(self.wall, self.wall[1:], strict=False)]
        cpu = [1e3 * (b - a) for a, b in zip(self.cpu, self.cpu[1:], strict=False)]
        return statistics.median(wall), statistics.median(cpu)


def time_path(engine, prefixes: list[list[int]], steps: int, device: str):
    """Median (wall, CPU) ms of ``steps`` decode steps, and the cache class they used."""
    clock = StepClock(engine, device)
    try:
        engine.extend(prefixes, steps + 2, greedy=True)  # steps + 1 decode forwards
    finally:
        clock.handle.remove()
    return (*clock.step_ms(), "/".join(sorted(clock.caches)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="64,128,256,512,1024,2048", help="prompt columns")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="decode steps timed per run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians reported")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    ap.add_argument("--name", default=None)
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    model = build_model(args)
    engine = DecodingEngine(model, eos_token_ids=[], pad_token_id=0)  # no EOS: full budgets
    engine.prefill = random_prefill(engine)
    engines = {"dynamic_cache": dynamic_cache_engine(engine), "buffer": engine}
    kv_bytes = 2 * args.layers * args.hidden * next(model.parameters()).element_size()
    gen = torch.Generator().manual_seed(0)
    cache_class = {  # the warm-up: which cache each path's steps are given
        path: time_path(engines[path], [[1] * 16] * args.batch, 2, args.device)[2] for path in PATHS
    }
    assert cache_class == {"dynamic_cache": "DynamicCache", "buffer": "BufferCache"}, cache_class

    load_before = os.getloadavg()[0]
    runs = {(p, n): [] for p in PATHS for n in args.lengths}
    for _ in range(args.rounds):
        for n in args.lengths:
            prefixes = torch.randint(1, args.vocab, (args.batch, n), generator=gen).tolist()
            for path in PATHS:
                runs[path, n].append(time_path(engines[path], prefixes, args.steps, args.device))
    rows = []
    for n in args.lengths:
        old, new = runs["dynamic_cache", n], runs["buffer", n]
        rows.append(
            {
                "context_tokens": n,
                "cache_mib": args.batch * n * kv_bytes / 2**20,
                "dynamic_cache_ms_per_step": statistics.median(r[0] for r in old),
                "buffer_ms_per_step": statistics.median(r[0] for r in new),
                "dynamic_cache_cpu_ms_per_step": statistics.median(r[1] for r in old),
                "buffer_cpu_ms_per_step": statistics.median(r[1] for r in new),
                "ratio_per_round": [o[0] / b[0] for o, b in zip(old, new, strict=True)],
                "ratio": statistics.median(o[0] / b[0] for o, b in zip(old, new, strict=True)),
                "cpu_ratio": statistics.median(o[1] / b[1] for o, b in zip(old, new, strict=True)),
            }
        )
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_name()
    )
    result = {
        "name": args.name or f"decode_{args.device.split(':')[0]}",
        "device": device_name,
        "device_kind": args.device,
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0]],  # before and after the rounds
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "model": {
            "family": "Qwen2 (random weights)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype),
            "hidden_size": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "kv_heads": args.heads,
            "vocab_size": args.vocab,
            "kv_kib_per_token": kv_bytes / 1024,
        },
        "cache_class": cache_class,
        "settings": {
            "batch": args.batch,
            "steps_timed": args.steps,
            "rounds": args.rounds,
            "prefill": "random keys and values of the prompt's shape",
            "sampling": "greedy",
        },
        "rows": rows,
    }
    out_path = Path(args.out_dir) / f"{result['name']}.json"
    write_text_atomic(out_path, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    print(f"\nwritten: {out_path}")
    return result


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(result: dict) -> str:
    lines = [
        "| context tokens | cache MiB | DynamicCache ms / step | buffer ms / step "
        "| DynamicCache / buffer | per round | by CPU time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rounds = ", ".join(f"{x:.1f}" for x in r["ratio_per_round"])
        lines.append(
            f"| {r['context_tokens']:,} | {r['cache_mib']:.0f} "
            f"| {r['dynamic_cache_ms_per_step']:.1f} | {r['buffer_ms_per_step']:.1f} "
            f"| {r['ratio']:.1f}× | {rounds} | {r['cpu_ratio']:.1f}× |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
