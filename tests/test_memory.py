"""The memory plan of a generation job: hand-computed shapes of the paper's models, the batch
it picks, its refusal, and its buffer and weights against real tensors."""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import pytest
import torch
from helpers_models import EOS_ID, PAD_ID, one_torch_thread, tiny_model  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import Qwen2Config, Qwen2ForCausalLM

from powersampling import memory
from powersampling.architectures import published_config
from powersampling.config import load_config
from powersampling.engine import DecodingEngine, RollingDecoder
from powersampling.engine.particles import ParticleBatch
from powersampling.engine.rolling import buffer_columns
from powersampling.engine.static_rows import BufferRows
from powersampling.errors import UserError
from powersampling.memory import (
    GIB,
    fits,
    kv_bytes_per_token,
    memory_items,
    parameter_count,
    plan_config,
    plan_memory,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
PAPER_POWER = {
    "sampler": "power",
    "alpha": 4.0,
    "block_size": 192,
    "max_new_tokens": 3072,
    "mcmc_steps": 10,
}
PAPER_BASE = {"sampler": "temperature", "T": 1.0, "max_new_tokens": 3072}


@pytest.fixture(scope="module")
def phi():
    return published_config("phi-3.5-mini-instruct")


@pytest.fixture(scope="module")
def qwen():
    return published_config("qwen2.5-7b")


# ------------------------------------------------------------------ the paper's shapes


@pytest.mark.parametrize(
    ("name", "kv_bytes"),
    [
        ("phi-3.5-mini-instruct", 32 * 2 * 32 * 96 * 2),  # no GQA: 384 KiB per token
        ("qwen2.5-7b", 28 * 2 * 4 * 128 * 2),
        ("qwen2.5-math-7b", 28 * 2 * 4 * 128 * 2),
    ],
)
def test_kv_bytes_per_token_of_the_paper_models(name, kv_bytes):
    assert kv_bytes_per_token(published_config(name), torch.bfloat16) == kv_bytes
    assert kv_bytes in (393_216, 57_344)


@pytest.mark.parametrize(
    ("name", "n_params"),
    [
        ("qwen2.5-math-7b", 7_615_616_512),
        ("qwen2.5-7b", 7_615_616_512),
        ("phi-3.5-mini-instruct", 3_821_079_552),
    ],
)
def test_parameter_counts_of_the_paper_models(name, n_params):
    assert parameter_count(published_config(name)) == n_params


def test_phi_power_sampling_at_batch_64_does_not_fit_80_gib(phi):
    budget = 80 * GIB
    plan = plan_memory(phi, "bfloat16", PAPER_POWER, [512], 64, budget, chain_store="device")
    shape = plan.shape
    assert memory_items(shape, 64, "device").peak > budget
    assert 1 <= plan.batch < 64
    assert plan.peak <= budget and fits(shape, plan.batch, "device", budget)
    assert not fits(shape, plan.batch + 1, "device", budget)  # the largest that fits
    columns = buffer_columns(512 + 3072)
    assert plan.items.buffer == plan.batch * columns * 393_216
    assert plan.items.chain_states == plan.batch * 3072 * 393_216  # answers only
    assert plan.items.prompt_caches == plan.batch * 512 * 393_216
    assert plan.items.cache_transient == 3072 * 393_216  # one answer being replaced
    assert plan.items.host_caches == 0
    assert plan.items.weights == 3_821_079_552 * 2
    assert f"batch {plan.batch + 1} would need" in plan.reason


def test_host_chain_store_only_when_it_fits_more_rows(phi, qwen):
    budget, kv = 80 * GIB, 393_216
    on_device = plan_memory(phi, "bfloat16", PAPER_POWER, [512], 64, budget, chain_store="device")
    auto = plan_memory(phi, "bfloat16", PAPER_POWER, [512], 64, budget)  # host: unlimited
    assert auto.chain_store == "host" and auto.batch > on_device.batch
    assert auto.items.chain_states == auto.items.prompt_caches == 0
    assert auto.items.host_caches == auto.batch * (512 + 3072) * kv + 3072 * kv
    assert auto.host_need == auto.items.weights + memory.RESERVE_BYTES + 2 * auto.items.host_caches
    assert auto.limit == "device memory" and not fits(auto.shape, auto.batch + 1, "host", budget)
    # The host budget bounds the batch with host caches.
    host = auto.host_need - 1
    bounded = plan_memory(phi, "bfloat16", PAPER_POWER, [512], 64, budget, host_bytes=host)
    if bounded.chain_store == "host":
        assert bounded.batch == auto.batch - 1 and bounded.limit == "host memory"
        assert bounded.host_need <= host
    # Little host memory: the chains cannot go there, so they stay on the device.
    tight = plan_memory(phi, "bfloat16", PAPER_POWER, [512], 64, budget, host_bytes=10 * GIB)
    assert (tight.chain_store, tight.batch) == ("device", on_device.batch)
    # When the requested batch fits with chains on the device, they stay there.
    small = plan_memory(qwen, "bfloat16", PAPER_POWER, [512], 64, budget)
    assert (small.chain_store, small.batch) == ("device", 64)
    assert small.reason == "the requested batch fits" and small.limit == "requested"
    # On a CPU the host is the device: nothing to gain by moving caches.
    cpu = plan_memory(phi, "bfloat16", PAPER_POWER, [512], 64, budget, device_type="cpu")
    assert (cpu.chain_store, cpu.batch) == ("device", on_device.batch)


def test_temperature_sampling_keeps_one_preallocated_buffer(phi):
    plan = plan_memory(phi, "bfloat16", PAPER_BASE, [300, 512], 64, 80 * GIB)
    assert plan.chain_store is None and plan.items.buffer == 0
    assert plan.items.kv_cache == plan.batch * (512 + 3072 - 1) * 393_216  # last token unfed
    # One layer of the prompt cache while it is copied into the buffer.
    assert plan.items.cache_transient == plan.batch * 512 * 393_216 // 32
    assert plan.batch < 64 and not fits(plan.shape, plan.batch + 1, None, 80 * GIB)
    assert plan_memory(phi, "bfloat16", PAPER_BASE, [512], 64, None).batch == 64


PAPER_SMC = {"sampler": "smc", "alpha": 4.0, "particles": 32, "max_new_tokens": 3072}


def test_smc_batches_whole_prompts_of_particles(qwen):
    plan = plan_memory(qwen, "bfloat16", PAPER_SMC, [300, 512], 64, 80 * GIB)
    kv = 28 * 2 * 4 * 128 * 2
    assert plan.shape.rows_per_prompt == 32 and plan.batch % 32 == 0 and plan.batch >= 32
    assert plan.items.buffer == plan.batch * (512 + 3072) * kv
    assert plan.items.cache_transient == plan.items.buffer // 28  # one layer's row copies
    assert plan.items.kv_cache == plan.items.chain_states == 0
    # A request smaller than one prompt's particles still runs one prompt.
    assert plan_memory(qwen, "bfloat16", PAPER_SMC, [512], 8, None).batch == 32
    assert plan_memory(qwen, "bfloat16", PAPER_SMC, [512], 100, None).batch == 96
    small = plan_memory(qwen, "bfloat16", PAPER_SMC, [512], 256, 40 * GIB)
    assert small.batch % 32 == 0 and small.limit == "device memory"
    assert not fits(small.shape, small.batch + 32, None, 40 * GIB)
    assert f"batch {small.batch + 32} would need" in small.reason
    with pytest.raises(UserError, match="not even one prompt's 32 particles fit"):
        plan_memory(qwen, "bfloat16", PAPER_SMC, [512], 64, 17 * GIB)


def test_a_device_too_small_for_the_weights_is_refused_with_the_numbers(qwen):
    with pytest.raises(UserError) as err:
        plan_memory(qwen, "bfloat16", PAPER_BASE, [512], 64, 8 * GIB, name="qwen2.5-7b / base")
    message = str(err.value)
    for number in ["14.2 GiB", "7,615,616,512", "56.0 KiB", "8.0 GiB", "512", "3072"]:
        assert number in message
    # Float32 doubles the weights: 28.4 GiB.
    with pytest.raises(UserError, match=r"28\.4 GiB"):
        plan_memory(qwen, "float32", PAPER_BASE, [512], 1, 20 * GIB)


def test_describe_gives_every_item_in_gib(phi):
    plan = plan_memory(phi, "bfloat16", PAPER_POWER, [512], 64, 80 * GIB)
    text = plan.describe()
    assert f"batch {plan.batch} of 64 requested, prompt and chain caches on the host" in text
    assert "384.0 KiB" in text and "3,821,079,552 parameters" in text
    assert f"peak                {plan.peak / GIB:.1f} GiB" in text
    for label in ["weights", "rolling KV buffer", "host caches", "prefill phase", "why:"]:
        assert label in text
    assert all(re.fullmatch(r"\d+\.\d", g) for g in re.findall(r"([\d.]+) GiB", text))


# ------------------------------------------------------------------ against real tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plan_matches_a_real_rolling_decoder_and_model(dtype):
    model = tiny_model(seed=0).to(dtype)
    engine = DecodingEngine(model, eos_token_ids=[EOS_ID], pad_token_id=PAD_ID)
    prompts, new_tokens, slots = [7, 5, 3], 9, 3
    decoder = RollingDecoder(engine, slots=slots, max_len=max(prompts) + new_tokens)
    method = {"sampler": "power", "max_new_tokens": new_tokens, "block_size": 4}
    plan = plan_memory(model.config, dtype, method, prompts, slots, None, device_type="cpu")
    assert plan.batch == slots
    assert plan.items.buffer == decoder.cache.buf.nbytes
    assert plan.items.weights == sum(p.numel() * p.element_size() for p in model.parameters())


def test_plan_matches_a_real_particle_batch():
    from powersampling.engine.particles import ParticleBatch

    model = tiny_model(seed=0)
    engine = DecodingEngine(model, eos_token_ids=[EOS_ID], pad_token_id=PAD_ID)
    prompts, new_tokens, particles = [[3, 4, 5, 6, 7], [8, 9]], 9, 4
    batch = ParticleBatch(engine, prompts, particles, new_tokens)
    method = {"sampler": "smc", "max_new_tokens": new_tokens, "particles": particles}
    plan = plan_memory(model.config, torch.float32, method, [5, 2], 8, None, device_type="cpu")
    assert plan.batch == batch.rows == 8
    assert plan.items.buffer == batch.cache.buf.nbytes


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created while active and not yet freed (``live``), and their
    peak, at operation boundaries: a storage counts from the operation that creates it until
    it is freed (views and in-place writes create none). ``window_peak`` is the peak since
    the last :meth:`open_window`."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.window_peak = 0
        self.sizes: dict[int, int] = {}

    def open_window(self) -> None:
        self.window_peak = self.live

    def _freed(self, key: int) -> None:
        self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable:
            for t in tree_leaves(out):
                storage = t.untyped_storage() if isinstance(t, torch.Tensor) else None
                if storage is not None and storage._cdata not in self.sizes:
                    self.sizes[storage._cdata] = storage.nbytes()
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, storage._cdata)
        self.peak = max(self.peak, self.live)
        self.window_peak = max(self.window_peak, self.live)
        return out


def planned_bytes(items) -> int:
    """What the plan holds besides the weights, the reserve and the headroom."""
    return items.resident - items.weights + max(items.decode_phase, items.prefill)


def deep_model() -> Qwen2ForCausalLM:
    """A random 8-layer Qwen2: one layer's cache is an eighth of the whole, so a transient of
    one layer is told apart from one of all layers, or of half the rows of all layers."""
    config = Qwen2Config(
        vocab_size=16,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(config).eval()


def test_static_plan_matches_a_real_extend(monkeypatch):
    """Greedy decoding of rows that end at different steps: the buffer is the plan's, its
    copy from the prefill holds one layer of the prompt cache twice at most, and the run's
    peak stays within the plan."""
    model = deep_model()
    engine = DecodingEngine(model, [], PAD_ID)
    prompts, budgets = [[3] * 20, [4] * 12, [5] * 7, [6] * 3], [40, 10, 25, 40]
    method = {"sampler": "greedy", "max_new_tokens": 40}
    lengths = [len(p) for p in prompts]
    plan = plan_memory(model.config, torch.float32, method, lengths, 4, None, device_type="cpu")
    mode, buffers, copies = LiveBytes(), [], []

    def first_step(module, args, kwargs):  # the whole buffer, before any row leaves
        if not buffers and kwargs["input_ids"].shape[1] == 1:
            buffers.append(sum(layer.nbytes for layer in kwargs[engine.cache_arg].buf))

    init = BufferRows.__init__

    def copy_in(self, *args, **kwargs):  # the copy's peak over what it leaves
        mode.open_window()
        init(self, *args, **kwargs)
        copies.append(mode.window_peak - mode.live)

    monkeypatch.setattr(BufferRows, "__init__", copy_in)
    handle = model.register_forward_pre_hook(first_step, with_kwargs=True)
    try:
        with mode:
            ext = engine.extend(prompts, budgets, greedy=True)
    finally:
        handle.remove()
    assert [len(t) for t in ext.tokens] == budgets
    assert buffers == [plan.items.kv_cache]
    # One prompt layer: 4 rows x 20 columns x kv / 8 (less the small mask allocated after).
    assert len(copies) == 1 and 0 < copies[0] <= plan.items.cache_transient
    assert plan.items.kv_cache <= mode.peak <= planned_bytes(plan.items)


def test_smc_plan_bounds_a_real_run_whose_prompts_finish_apart(monkeypatch):
    """One of two prompts ends after 2 tokens: its rows leave the particle batch, the kept
    rows move within the buffer (a new buffer of them would be half the old one, four
    layers' worth, on top of it), and the run's peak stays within the plan."""
    from powersampling.samplers.smc import SMCSampler

    model = deep_model()
    engine = DecodingEngine(model, [], PAD_ID)
    sampler = SMCSampler(engine, alpha=2.0, particles=4, ess_threshold=0.5, max_new_tokens=40)
    method = {"sampler": "smc", "max_new_tokens": 40, "particles": 4}
    plan = plan_memory(model.config, torch.float32, method, [10, 10], 8, None, device_type="cpu")
    mode, kept = LiveBytes(), []
    keep_rows = ParticleBatch.keep_rows

    def watched(self, keep):  # what keeping the rows allocates on top of the batch
        before = mode.live
        mode.open_window()
        keep_rows(self, keep)
        kept.append(mode.window_peak - before)

    monkeypatch.setattr(ParticleBatch, "keep_rows", watched)
    with mode:
        sampler.sample_swarms([[3] * 10, [4] * 10], budgets=[2, 40], chain_seeds=[0, 1])
    assert len(kept) == 1 and kept[0] <= plan.items.cache_transient  # one layer's kept rows
    assert plan.items.buffer <= mode.peak <= planned_bytes(plan.items)


def test_power_plan_bounds_a_real_run_whose_chains_end_apart(monkeypatch):
    """Chains of budgets 24, 4, 24 and 8 end apart: the rolling batch shrinks to its busy
    slots in the tail, moving them within the buffer (a new buffer of them would be half the
    old one on top of it), and the run's peak stays within the plan."""
    from powersampling.samplers.power import PowerSampler
    from powersampling.seeding import torch_generator

    model = deep_model()
    engine = DecodingEngine(model, [], PAD_ID)
    method = {"sampler": "power", "max_new_tokens": 24, "block_size": 8, "mcmc_steps": 3}
    sampler = PowerSampler(engine, alpha=2.0, max_new_tokens=24, block_size=8, mcmc_steps=3)
    prompts = [[3] * 10, [4] * 6, [5] * 8, [6] * 10]
    lengths = [len(p) for p in prompts]
    plan = plan_memory(
        model.config,
        torch.float32,
        method,
        lengths,
        4,
        None,
        chain_store="device",
        device_type="cpu",
    )
    assert plan.chain_store == "device"
    mode, shrinks = LiveBytes(), []
    shrink = RollingDecoder._shrink

    def watched(self):  # what shrinking the batch allocates on top of it
        before = mode.live
        mode.open_window()
        shrink(self)
        shrinks.append(mode.window_peak - before)

    monkeypatch.setattr(RollingDecoder, "_shrink", watched)
    with mode:
        sampler.sample(prompts, torch_generator(0), budgets=[24, 4, 24, 8])
    # One layer's busy slots over their live columns, within the decode step's one layer.
    assert shrinks and max(shrinks) <= plan.items.attention
    assert plan.items.buffer <= mode.peak <= planned_bytes(plan.items)


def test_kv_bytes_per_token_match_a_real_cache():
    model = tiny_model(seed=0)
    engine = DecodingEngine(model, eos_token_ids=[EOS_ID], pad_token_id=PAD_ID)
    ids, attn = engine.left_pad([[3, 4, 5, 6, 7], [8, 9]])
    _, cache = engine.prefill(ids, attn)
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert held == 2 * 5 * kv_bytes_per_token(model.config, torch.float32)


# ------------------------------------------------------------------ devices and configs


def test_meminfo_available_and_cuda_free_memory(monkeypatch):
    text = "MemTotal:       16318412 kB\nMemFree: 1 kB\nMemAvailable:    8000000 kB\n"
    assert memory.meminfo_available(text) == 8_000_000 * 1024
    assert memory.meminfo_available("MemTotal: 1 kB\n") is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    free, note = memory.device_memory("cuda")
    assert free == 70 * GIB and "a GPU" in note and "80.0 GiB" in note


def test_plan_config_of_the_toy_world_and_the_paper(capsys):
    toy = load_config(ROOT / "config" / "config.yaml", SCHEMA)
    jobs = plan_config(toy, None)
    assert jobs and all(j.plan is not None and j.plan.batch == 64 for j in jobs)

    argv = ["--configfile", str(ROOT / "config" / "paper.yaml"), "--gpu-gib", "80"]
    assert memory.main([*argv, "--schema", str(SCHEMA)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:] if line.strip()}
    models = ["qwen2.5-math-7b", "qwen2.5-7b", "phi-3.5-mini-instruct"]
    methods = ["base", "low_temperature", "power", "smc"]
    assert set(rows) == {(m, k) for m in models for k in methods}
    assert rows[("qwen2.5-7b", "base")][2] == "64/64"
    phi_power = rows[("phi-3.5-mini-instruct", "power")]
    assert int(phi_power[2].split("/")[0]) < 64 and float(phi_power[3]) <= 80
    phi_smc = int(rows[("phi-3.5-mini-instruct", "smc")][2].split("/")[0])
    assert phi_smc % 32 == 0 and 32 <= phi_smc < 64  # whole prompts of 32 particles


def test_plan_generation_reads_a_local_model_config(tmp_path):
    model = tiny_model(seed=0)
    model.config.save_pretrained(tmp_path)  # config.json only: the plan needs no weights
    method = {"sampler": "temperature", "T": 0.5, "max_new_tokens": 20}
    plan = memory.plan_generation(
        str(tmp_path), method, [[3, 4, 5], [6]], 8, device="cpu", device_bytes=4 * GIB
    )
    assert (plan.batch, plan.chain_store, plan.device_note) == (8, None, "given")
    assert plan.shape.dtype == torch.float32  # dtype auto on a CPU
    assert plan.items.kv_cache == 8 * (3 + 20 - 1) * kv_bytes_per_token(model.config, torch.float32)
    unknown = plan_memory(model.config, "float32", method, [3], 2, None, device_type="cpu")
    assert unknown.batch == 2 and "unlimited" in unknown.reason
    with pytest.raises(UserError, match="cannot read the config"):
        memory.model_config(str(tmp_path / "missing"))


def test_a_4bit_model_is_planned_with_its_quantized_weights():
    """NF4: 4.5 bits per weight of the linear layers; embeddings and head in bfloat16."""
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=1000, hidden_size=256, intermediate_size=512,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=8)  # fmt: skip
    method = {"sampler": "greedy", "max_new_tokens": 16}
    full = plan_memory(config, "bfloat16", method, [32], 4, None)
    nf4 = plan_memory(config, "bfloat16", method, [32], 4, None, quantization="4bit")
    n, embeddings = full.shape.n_params, 2 * 1000 * 256
    assert full.items.weights == 2 * n
    assert nf4.items.weights == int((n - embeddings) * 4.5 / 8 + embeddings * 2)
    assert nf4.items.weights < full.items.weights / 3
