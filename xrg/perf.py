"""What the hardware can do, and how much of it a step uses: FLOPs, peak FLOP/s, peak memory.

The benchmarks (``xrg bench train``) count each step's floating-point operations with
the formulas of ``torch.utils.flop_counter`` (matrix products and convolutions, forward and
backward: the arithmetic that dominates these models; the recurrent cells of the report
encoder on CPU run as one fused ``aten`` kernel the counter has no formula for, so text
encoding is left out of the count and the fraction of peak is a lower bound), and set the
achieved rate against :func:`device_peak`:

* a **CPU**: cores in use × clock × fp32 FLOPs per cycle and core, from the vector units the
  processor reports: AVX-512 on Intel (two 512-bit FMA units: 64), AVX2 + FMA (two 256-bit FMA
  units: 32, which is also AMD Zen's figure with AVX-512, executed as two 256-bit halves), SSE
  (8). The clock is the maximum frequency the kernel reports, else the current one;
* a **GPU**: the datasheet's dense bf16 tensor-core peak of the named card (fp32 for cards
  without bf16 tensor cores), matched by name in :data:`GPU_PEAKS`.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: Dense peak FLOP/s by GPU name fragment (first match wins; datasheet figures, no sparsity).
GPU_PEAKS: tuple[tuple[str, float, str], ...] = (
    ("H200", 989.4e12, "bf16 tensor core, SXM datasheet"),
    ("H100 PCIe", 756.0e12, "bf16 tensor core, PCIe datasheet"),
    ("H100", 989.4e12, "bf16 tensor core, SXM datasheet"),
    ("A100", 312.0e12, "bf16 tensor core, datasheet"),
    ("L40S", 362.1e12, "bf16 tensor core, datasheet"),
    ("L4", 121.0e12, "bf16 tensor core, datasheet"),
    ("A10", 125.0e12, "bf16 tensor core, datasheet"),
    ("V100", 15.7e12, "fp32 (no bf16 tensor cores), SXM2 datasheet"),
    ("1080 Ti", 11.3e12, "fp32 (no tensor cores), datasheet"),
)


@dataclass(frozen=True)
class Peak:
    """A device's peak arithmetic rate and how it was worked out."""

    device: str
    flops_per_s: float | None
    basis: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flops_per_cycle(flags: set[str], vendor: str) -> tuple[int, str]:
    """fp32 FLOPs per cycle and core for a processor with these ``flags`` from ``vendor``, and why."""
    if "avx512f" in flags and "intel" in vendor.lower():
        return 64, "AVX-512, two 512-bit FMA units"
    if "avx2" in flags and "fma" in flags:
        why = "AVX2 + FMA, two 256-bit FMA units"
        if "avx512f" in flags:
            why = "AVX-512 executed as two 256-bit FMA halves (AMD Zen 4)"
        return 32, why
    return 8, "SSE, no FMA"


def cpu_clock_hz(info: dict[str, str] | None = None) -> tuple[float | None, str]:
    """The CPU clock used for the peak: the kernel's maximum frequency, else ``cpu MHz`` of /proc/cpuinfo."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().strip())
        return khz * 1e3, "maximum frequency (cpufreq)"
    except (OSError, ValueError):
        pass
    info = _cpuinfo() if info is None else info
    try:
        return float(info["cpu MHz"]) * 1e6, "current frequency (/proc/cpuinfo; no cpufreq)"
    except (KeyError, ValueError):
        return None, "clock unknown"


def device_peak(device: str | torch.device, threads: int | None = None) -> Peak:
    """The peak fp32 (CPU) or bf16 (GPU) FLOP/s of ``device`` (CPU: over ``threads`` cores, default torch's)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, peak, basis in GPU_PEAKS:
            if fragment.lower() in name.lower():
                return Peak(name, peak, basis)
        return Peak(name, None, "no datasheet figure for this card in xrg.perf.GPU_PEAKS")
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    per_cycle, why = cpu_flops_per_cycle(flags, info.get("vendor_id", ""))
    clock, clock_basis = cpu_clock_hz(info)
    cores = threads or torch.get_num_threads()
    name = info.get("model name", "CPU")
    if clock is None:
        return Peak(name, None, f"{why}; {clock_basis}")
    return Peak(
        name,
        cores * clock * per_cycle,
        f"{cores} core(s) × {clock / 1e9:.2f} GHz ({clock_basis}) × {per_cycle} fp32 FLOP/cycle ({why})",
    )


def count_flops(fn: Callable[[], Any]) -> int:
    """The floating-point operations ``fn()`` runs (matrix products and convolutions, forward and backward).

    The formulas are torch's own (``torch.utils.flop_counter.flop_registry``, what
    ``FlopCounterMode`` counts with), applied by a plain dispatch mode: ``FlopCounterMode``
    itself also tracks modules with backward hooks, which fail inside ``torch.autograd.grad``
    (the critics' gradient penalty).
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Counter() as counter:
        fn()
    return counter.total


def reset_peak_memory(device: str | torch.device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: str | torch.device) -> tuple[int, str]:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocations, or the process's resident high-water mark on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "CUDA tensors allocated since the phase began"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process resident high-water mark (whole run)"


def environment() -> dict[str, Any]:
    """What a benchmark row records about where it ran."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpuinfo().get("model name", "unknown"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def flops_line(flops: float | None) -> str:
    """``flops`` with an SI prefix (``12.3 GFLOP``)."""
    if flops is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}"
    return f"{flops:.3g} "
