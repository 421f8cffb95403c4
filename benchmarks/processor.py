"""Which CPU or GPU a timed benchmark ran on.

The 2-core machines this project's benchmarks run on come as AMD EPYC with AVX-512 or without and
as Intel Xeon, and differ up to twofold in training speed; two machines of one kind can differ
by half again (an AMD EPYC with AVX-512 trained at 3.0 and at 2.0 images/s). A budget in minutes
buys a different number of epochs on each, so results trained under one compare only on the same
machine; the recorded name catches a mix of kinds, not of machines.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def processor() -> str:
    """The CPU's model name, its core count and whether it has AVX-512."""
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:  # not Linux
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    fields = dict(line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    avx512 = "with" if "avx512f" in fields.get("flags", "").split() else "without"
    return f"{fields.get('model name', platform.machine())}, {os.cpu_count()} cores, {avx512} AVX-512"


def device_name(device: torch.device) -> str:
    """The GPU's name, or :func:`processor` on a CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else processor()
