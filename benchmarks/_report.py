"""What every benchmark does last: write its JSON report, with the environment it ran in."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def write_report(out: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """Add torch / Python / machine details to ``report``, write it to ``out`` as JSON, return it."""
    report = {
        **report,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {out}")
    return report
