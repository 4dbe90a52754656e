"""What machine a measurement ran on: CPU model and the instruction-set flags that decide fp32/int8 speed
(avx2, avx512*, vnni, amx), cores, memory, load, library versions, GPU.

Every report and bench script prints this, because these machines differ: int8 is about 3x fp32 with AVX-512
VNNI and about 1.05x on an AVX2-only host, so a speed figure means nothing without the flags next to it.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any

_FLAG_RE = re.compile(r"^(avx2|avx512\w*|avx_vnni\w*|amx\w*|fma)$")


def cpu_info() -> dict[str, Any]:
    """CPU model, the speed-relevant flags, whether it has VNNI / AMX, and the logical CPU count (Linux reads
    ``/proc/cpuinfo``; elsewhere the platform's processor string and no flags)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = {f for f in value.split() if _FLAG_RE.match(f)}
    return {"model": name, "flags": sorted(flags), "vnni": any("vnni" in f for f in flags),
            "amx": any(f.startswith("amx") for f in flags), "logical_cpus": os.cpu_count()}


def host_info() -> dict[str, Any]:
    """:func:`cpu_info` plus memory, load average, Python/torch/ONNX Runtime/Ray versions, GPU and the time."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_info(), "python": platform.python_version(), "platform": platform.platform(),
                            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                            "date": time.strftime("%Y-%m-%d %H:%M")}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    for lib in ("onnxruntime", "ray"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            pass
    return info


def host_line(info: dict[str, Any] | None = None) -> str:
    """One line for a report: ``AMD EPYC (2 CPUs, 23.4 GiB; avx2 avx512_vnni ...), no GPU, torch 2.13.0``."""
    info = info or host_info()
    cpu = info["cpu"]
    flags = " ".join(cpu["flags"]) or "none of avx2/avx512/amx"
    mem = f", {info['memory_gib']} GiB" if info.get("memory_gib") else ""
    load = f"; load average {', '.join(f'{x:.1f}' for x in info['load_average'])}" if info.get("load_average") else ""
    return (f"{cpu['model']} ({cpu['logical_cpus']} CPUs{mem}; flags: {flags}), {info.get('gpu') or 'no GPU'}, "
            f"torch {info['torch']}{load}")
