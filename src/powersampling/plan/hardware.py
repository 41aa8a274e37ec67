"""What the time plan assumes about a device before anything is measured on it.

A decode step of ``rows`` rows, each ``context`` tokens into its answer, takes

    step = layers × layer_overhead + weight bytes / bandwidth
           + rows × (2 × parameters / FLOP/s + context × KV bytes per token / bandwidth)

(every step reads the weights once and each row's cache once; each row costs two FLOPs per
parameter; eager PyTorch pays a fixed launch and Python cost per decoder layer), so a batch
decodes ``rows / step`` tokens per second. A prefill of n tokens costs one forward pass:
``layers × layer_overhead + weight bytes / bandwidth + 2 × parameters × n / FLOP/s``; loading
a model, ``load_fixed + weight bytes / load bandwidth``.

These are **assumptions**, not measurements: the numbers of :data:`ASSUMED_GPU` and
:data:`ASSUMED_CPU` say where they come from. A calibration (rule ``calibrate``) measures the
real speeds; the plan then keeps only the shape of this model, to carry a speed measured at
one batch over to another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """The speeds the plan assumes for a kind of device, and where they come from."""

    name: str
    kind: str  # "cuda" or "cpu": which calibrations it stands for
    bandwidth: float  # bytes/s read while decoding (achieved, not peak)
    flops: float  # FLOP/s achieved by the matrix products
    layer_overhead_s: float  # per decoder layer and forward pass: kernel launches, Python
    load_fixed_s: float  # loading a model: process start, imports, building the model
    load_bytes_per_s: float  # reading the weights from disk (a shared filesystem)
    source: str  # where the numbers come from

    def describe(self) -> str:
        return (
            f"{self.name}: {self.bandwidth / 1e9:,.0f} GB/s, {self.flops / 1e9:,.0f} GFLOP/s, "
            f"{self.layer_overhead_s * 1e3:.2f} ms per layer and step, load "
            f"{self.load_fixed_s:.0f} s + weights at {self.load_bytes_per_s / 1e9:.1f} GB/s "
            f"({self.source})"
        )


# No GPU was available to this project: these numbers are assumptions, to be replaced by a
# calibration on the cluster's own GPUs.
ASSUMED_GPU = Device(
    name="NVIDIA H100 SXM 80GB",
    kind="cuda",
    bandwidth=0.6 * 3.35e12,
    flops=0.4 * 989e12,
    layer_overhead_s=0.7e-3,
    load_fixed_s=30.0,
    load_bytes_per_s=1e9,
    source="ASSUMED, not measured: NVIDIA's datasheet peaks (3.35 TB/s HBM3, 989 TFLOP/s "
    "dense bf16) at 60% and 40% achieved, and 0.7 ms per decoder layer for eager PyTorch "
    "launches; run rule calibrate to measure",
)
# Fitted to the README's power-sampling benchmark of the toy model (0.82M parameters, 4
# layers) on one thread of a 2-core AMD EPYC: 482 decode tokens/s at batch 1 and 6,972 at
# batch 64, i.e. a 2.0 ms step plus 0.11 ms per row.
ASSUMED_CPU = Device(
    name="one CPU thread (x86-64)",
    kind="cpu",
    bandwidth=10e9,
    flops=15e9,
    layer_overhead_s=0.45e-3,
    load_fixed_s=2.0,
    load_bytes_per_s=1e9,
    source="ASSUMED: fitted to the README's toy-model decode benchmark on one thread of a "
    "2-core AMD EPYC (2.0 ms per step + 0.11 ms per row); run rule calibrate to measure",
)


@dataclass(frozen=True)
class ModelCost:
    """What a forward pass of one model costs: from its shape (no weights)."""

    layers: int
    n_params: int
    weight_bytes: int
    kv_per_token: int  # bytes of keys and values per cached token


def step_seconds(device: Device, model: ModelCost, rows: int, context: float) -> float:
    """Seconds of one decode step of ``rows`` rows, ``context`` cached tokens each."""
    fixed = model.layers * device.layer_overhead_s + model.weight_bytes / device.bandwidth
    per_row = 2 * model.n_params / device.flops + context * model.kv_per_token / device.bandwidth
    return fixed + rows * per_row


def decode_tokens_per_s(device: Device, model: ModelCost, rows: int, context: float) -> float:
    """Tokens per second a batch of ``rows`` rows decodes (one token per row and step)."""
    return rows / step_seconds(device, model, rows, context)


def prefill_seconds(device: Device, model: ModelCost, tokens: float) -> float:
    """Seconds of one forward pass over ``tokens`` prompt tokens (a batch's prefill)."""
    fixed = model.layers * device.layer_overhead_s + model.weight_bytes / device.bandwidth
    return fixed + 2 * model.n_params * tokens / device.flops


def load_seconds(device: Device, model: ModelCost) -> float:
    return device.load_fixed_s + model.weight_bytes / device.load_bytes_per_s
