"""Multi-task metrics: Δm, the average relative change vs single-task baselines."""

from __future__ import annotations

from collections.abc import Mapping


def delta_m(
    multi: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
) -> float:
    """Δm in percent (Maninis et al. 2019, Eq. 5; Vandenhende et al. 2021):

        Δm = 100/T · Σ_t 1/|M_t| · Σ_j (-1)^{l_tj} (M_mt,j − M_st,j) / M_st,j,

    with l_tj = 1 when lower is better for metric j of task t. Positive = the multi-task model beats
    the single-task baselines on average.

    Args:
        multi: ``{task: {metric: value}}`` of the model under test.
        single: the same for the single-task baselines (the reference).
        higher_is_better: ``{task: {metric: bool}}``; the metrics counted are exactly these.
    """
    if not higher_is_better:
        raise ValueError("delta_m: no tasks given")
    total = 0.0
    for task, directions in higher_is_better.items():
        if not directions:
            raise ValueError(f"delta_m: task {task!r} has no metrics")
        for name, table in (("multi", multi), ("single", single)):
            if task not in table or any(m not in table[task] for m in directions):
                raise ValueError(f"delta_m: {name} results lack task {task!r} metric(s) {sorted(directions)}")
        per_task = 0.0
        for metric, higher in directions.items():
            base = float(single[task][metric])
            if base == 0.0:
                raise ValueError(f"delta_m: single-task {task}.{metric} is 0; relative change undefined")
            change = (float(multi[task][metric]) - base) / abs(base)
            per_task += change if higher else -change
        total += per_task / len(directions)
    return 100.0 * total / len(higher_is_better)


__all__ = [
    "delta_m",
]
