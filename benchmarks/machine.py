"""What machine a benchmark ran on: one description for every benchmark's JSON and for RESULTS.md."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info() -> dict:
    """The measured machine: CPUs (host, usable), CPU model, RAM, Python, platform, package versions, torch
    threads, GPU."""
    info: dict = {"host_cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info.setdefault("cpu", platform.processor() or platform.machine())
    versions = {}
    for module in ("torch", "monai", "numpy", "SimpleITK", "batchgenerators", "batchgeneratorsv2"):
        try:
            from importlib.metadata import version

            versions[module] = version(module)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            versions[module] = "not installed"
    info["versions"] = versions
    import torch

    info["torch_threads"] = torch.get_num_threads()
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return info
