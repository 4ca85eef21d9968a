"""Studies: one TOML file -> searches + baselines, each graph retrained per balancer and seed.

One plan, two executors. :func:`~.spec.parse_study` reads the study file once into typed configs;
:func:`~.plan.plan` turns it into units (:class:`~.plan.SearchRun`, :class:`~.plan.ArmRun`,
:class:`~.plan.GridPick`), each with the units it needs; :mod:`.units` does one unit (read back, skip or run);
:func:`~.local.run_study` runs the plan here or in a pool of processes, :func:`~.distributed.run_distributed_study`
through a job queue in an Optuna storage (:mod:`.jobs`). :mod:`.record` keeps what the results depend on in the
run folder, whose layout :mod:`nas_mtl.layout` owns.

Everything lands in a run folder, one sub-folder per search and per arm run, each written when it finishes;
rerunning the same study resumes: finished searches and arm runs are read back, an interrupted training run
continues from its last checkpoint.

Seeds: every arm is trained once per training seed (``seeds``). Each search runs once per search seed
(``search_seeds``, default: the method's own ``seed`` option, so one search); training seed number i
retrains the graph found by search seed number i (cycling through ``search_seeds``), so a searched arm's
spread over seeds covers the search's variance as well as the training's, at the cost of one retraining
per training seed. Runs go seed by seed (every arm at the first seed, then the second, ...), so a study
stopped early still compares every arm on the seeds it finished.
"""

from ..layout import GRID_RECORD, QUEUE_RECORD, ROW, RunRow, load_rows, slug
from .baselines import run_baselines
from .distributed import run_distributed_study
from .local import run_study
from .plan import Arm, ArmRun, GridPick, SearchRun, balancers_for, plan
from .spec import DataSpec, GridSpec, StudySpec, load_study, method_config, parse_study, seeds_of_search, with_device

__all__ = [
    "GRID_RECORD",
    "QUEUE_RECORD",
    "ROW",
    "Arm",
    "ArmRun",
    "DataSpec",
    "GridPick",
    "GridSpec",
    "RunRow",
    "SearchRun",
    "StudySpec",
    "balancers_for",
    "load_rows",
    "load_study",
    "method_config",
    "parse_study",
    "plan",
    "run_baselines",
    "run_distributed_study",
    "run_study",
    "seeds_of_search",
    "slug",
    "with_device",
]
