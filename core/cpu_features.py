"""What the CPU's matrix hardware offers: shared by the service (its precision) and training
(mixed precision). torch is imported inside, so that importing this module stays cheap."""

from __future__ import annotations


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16).

    Elsewhere bfloat16 is emulated, and slower than float32.
    """
    import torch  # here, not at import: quads-serve sets the OpenMP policy before torch loads

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows: every
    benchmark and build report names its host."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
