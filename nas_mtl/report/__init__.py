"""Study reports: Δm per run, statistics over seeds, paired comparisons and a verdict (Markdown, HTML, CSV, figures).

What is computed (every number that ranks arms carries its seeds):

- Δm of every run (Maninis et al. 2019, Eq. 5) against the single-task reference **averaged over all
  seeds**. A per-seed reference would add that seed's single-task noise to every Δm of the seed; the
  average has that noise shrunk by √(seeds), and the single-task arm's own rows get a Δm whose spread
  shows the noise (their mean is 0: Δm is linear in the metrics).
- Per (arm, balancer) over its training seeds: n, mean, sample std (ddof 1) and the 95 % Student-t
  interval mean ± t₀.₉₇₅,ₙ₋₁ · std / √n (none at n = 1).
- Paired differences of Δm on the seeds two rows share, against the best row (highest mean Δm), hard
  sharing and the single-task nets, with the paired-t 95 % interval (the one ``scipy.stats.ttest_rel``
  gives). An interval above 0 is "better with confidence", below 0 "worse", containing 0 a tie.
  Intervals are per comparison: no multiplicity correction.
"""

from .document import load_curves, still_improving, write_report
from .tables import (
    COSTS,
    LEVEL,
    MIN_SEEDS,
    SeedStats,
    format_paired,
    format_runs,
    format_table,
    outcome,
    paired_table,
    pooled_std,
    runs_table,
    seed_stats,
    single_task_reference,
    summary_table,
)
from .verdict import Verdict, best_at_or_under, cost_front, verdict

__all__ = [
    "COSTS",
    "LEVEL",
    "MIN_SEEDS",
    "SeedStats",
    "Verdict",
    "best_at_or_under",
    "cost_front",
    "format_paired",
    "format_runs",
    "format_table",
    "load_curves",
    "outcome",
    "paired_table",
    "pooled_std",
    "runs_table",
    "seed_stats",
    "single_task_reference",
    "still_improving",
    "summary_table",
    "verdict",
    "write_report",
]
