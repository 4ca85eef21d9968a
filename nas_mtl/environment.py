"""Reproducibility facts: what, besides the seed and the settings, determines a run's numbers.

On the CPU the order of floating-point additions depends on the kernels torch picks for the processor
and on the number of threads, so two machines (or one machine with another thread count) can give
different numbers for the same seed; the same machine, versions and thread count give bitwise-equal
runs. Every run folder records these facts (``result.json``, ``search.json``, a study's ``row.json``)
and reports list them.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch


@cache
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The facts a run's numbers depend on, beyond its seed and settings (JSON-serialisable).

    Args:
        device: the device the run computes on; on CUDA the GPU's name is recorded as well.
    """
    device = torch.device(device)
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion, which torch.load(weights_only=True) refuses
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "device": device.type,
        "cpu": cpu_model(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = str(torch.version.cuda)
        facts["cudnn"] = torch.backends.cudnn.version()
    return facts


def built_on_cpu(build: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: ``build`` makes its modules and tensors on the CPU whatever torch's default device is. Networks
    start from the same weights on every machine (a CUDA default would draw them from CUDA's generator) and are
    moved to the training device afterwards; a user's ``torch.set_default_device("cuda")`` changes nothing."""

    @functools.wraps(build)
    def on_cpu(*args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):
            return build(*args, **kwargs)

    return on_cpu


__all__ = ["built_on_cpu", "cpu_model", "environment"]
