"""Numbers as people read them: counts in K/M/G, multiply-accumulates in MMACs, durations in s/min/h."""

from __future__ import annotations

import math
from collections.abc import Sequence

_SCALES = ((1e9, "G"), (1e6, "M"), (1e3, "K"))


def count(x: float, digits: int = 3) -> str:
    """``175K``, ``1.23M``, ``850`` (``digits`` significant digits; "—" when not finite)."""
    if not math.isfinite(x):
        return "—"
    for scale, suffix in _SCALES:
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def mmacs(x: float, digits: int = 3) -> str:
    """Multiply-accumulates in millions (``12.3``; ``0.0521`` below one million)."""
    return "—" if not math.isfinite(x) else f"{x / 1e6:.{digits}g}"


def seconds(x: float) -> str:
    """``42.1 s`` below 90 s, ``3.4 min`` below 90 min, else ``1.5 h`` ("—" when not finite or negative)."""
    if not math.isfinite(x) or x < 0:
        return "—"
    if x < 90:
        return f"{x:.1f} s"
    if x < 90 * 60:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def seconds_unit(values: Sequence[float]) -> tuple[str, float]:
    """One unit for a column of durations (the unit :func:`seconds` picks for the largest): ``(name, seconds
    per unit)``."""
    finite = [x for x in values if math.isfinite(x) and x >= 0]
    largest = max(finite, default=0.0)
    if largest < 90:
        return "s", 1.0
    return ("min", 60.0) if largest < 90 * 60 else ("h", 3600.0)


def seconds_in(x: float, unit: tuple[str, float]) -> str:
    """``x`` seconds in ``unit`` (from :func:`seconds_unit`), one decimal, no unit name ("—" when not finite)."""
    return "—" if not math.isfinite(x) or x < 0 else f"{x / unit[1]:.1f}"


__all__ = ["count", "mmacs", "seconds", "seconds_in", "seconds_unit"]
