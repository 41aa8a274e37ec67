"""How much memory a job may use: free device memory, or the host's within its cgroup."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from powersampling.memory.units import gib


def meminfo_available(text: str) -> int | None:
    """MemAvailable in bytes from the text of ``/proc/meminfo``, or None."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            value, *unit = line.split(":", 1)[1].split()
            return int(value) * (1024 if unit == ["kB"] else 1)
    return None


def host_allocation(
    environ: Mapping[str, str] = os.environ, cgroup_root: str | os.PathLike = "/sys/fs/cgroup"
) -> tuple[int | None, str]:
    """The host memory this job was given, in bytes, and where the number comes from: the
    smallest of its cgroup's limit (``memory.max``, what the kernel enforces), Slurm's
    ``SLURM_MEM_PER_NODE`` and ``SLURM_MEM_PER_CPU`` x the job's CPUs (MB); None when
    nothing bounds it."""
    limits = []
    try:
        text = (Path(cgroup_root) / "memory.max").read_text().strip()
        if text.isdigit():
            limits.append((int(text), "the cgroup's memory.max"))
    except OSError:
        pass
    if environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        limits.append((int(environ["SLURM_MEM_PER_NODE"]) * 2**20, "SLURM_MEM_PER_NODE"))
    if environ.get("SLURM_MEM_PER_CPU", "").isdigit():
        cpus = environ.get("SLURM_CPUS_PER_TASK") or environ.get("SLURM_CPUS_ON_NODE") or "1"
        per_cpu = int(environ["SLURM_MEM_PER_CPU"]) * 2**20
        limits.append((per_cpu * int(cpus if cpus.isdigit() else 1), "SLURM_MEM_PER_CPU x CPUs"))
    return min(limits) if limits else (None, "no host memory limit known")


def _cgroup_free() -> int | None:
    """Room left under this process's cgroup (v2) memory limit, or None (no limit known):
    a Slurm job may have far less than the machine's MemAvailable."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return int(limit) - current if limit.isdigit() else None


def device_memory(device: torch.device | str) -> tuple[int | None, str]:
    """Memory a job may use on ``device`` and where the number comes from.

    CUDA: the free memory ``torch.cuda.mem_get_info`` reports. CPU: MemAvailable of
    /proc/meminfo (within the cgroup's limit, if any); None (unlimited) when unreadable.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)}, {gib(total)} in all"
    if device.type == "cpu":
        try:
            available = meminfo_available(Path("/proc/meminfo").read_text())
        except OSError:
            available = None
        if available is None:
            return None, "MemAvailable unreadable: treated as unlimited"
        cgroup = _cgroup_free()
        if cgroup is not None and cgroup < available:
            return cgroup, "room under the cgroup's memory limit"
        return available, "MemAvailable of /proc/meminfo"
    return None, f"free memory of a {device.type} device is unknown: treated as unlimited"
