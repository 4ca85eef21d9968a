"""Wall time of one small study run by 1 worker vs 2 workers (``nas-mtl study --storage``), side by side.

    python benchmarks/distributed.py [--n-train 2048,8192] [--repeats 1] [--only 1x1,1x2,2]
                                     [--out benchmarks/results/distributed.json]

The study (written to a temporary folder): multidigits, N training images of 16 px (``--n-train``, one study
per size), a 2-stage ResNet, 8 epochs; single-task, hard and independent baselines, a branch search with 2
search seeds, 3 training seeds: 2 search jobs + 15 arm jobs. Rows (wall seconds of one command, process
start-up, imports, data and the report included):

  * ``1x1``: 1 worker, 1 torch thread;
  * ``1x2``: 1 worker, 2 torch threads (all of this machine's cores in one process);
  * ``2``: 2 workers from one command, ``nas-mtl study --workers 2``: the process publishes the study and starts
    a ``--worker`` beside it; each job gets cores / 2 torch threads from the first; the report is written once.

Each process spends ~3 s starting (imports, data, the study record) and the launcher writes the report at the
end (~1 s): the smaller study shows more of that fixed cost, the larger one what the jobs themselves gain. Each
run also records (``runs``, from the storage) ``work``: the sum of its jobs' own seconds, so wall - work / workers
is what start-up, the report and idle workers cost; ``first_job``: when each worker started its first job
(seconds after the command started); ``after_last_job``: the seconds from the last job's end to the exit.

Each configuration gets a fresh run folder and SQLite storage; configurations are interleaved over repeats.
The speed-up is 1-worker time / 2-worker time: of the medians over repeats, and repeat by repeat (``paired_``: the
two runs of one repeat ran minutes apart, so a machine that slows down for a while slows both); ``--only`` runs
some rows (a quick check), speed-ups are printed where both rows ran. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from _report import write_report
from optuna.trial import TrialState

from nas_mtl.study.jobs import PREFIX

SPACE = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [8, 16]
depths = [1, 1]
"""

STUDY = """
format = "nas_mtl.study/1"
name = "bench"
seeds = [0, 1, 2]
search_seeds = [0, 1]
balancers = ["equal"]
[data]
name = "multidigits"
n_train = N_TRAIN
n_val = 256
n_test = 256
size = 16
[space]
name = "space.toml"
[train]
epochs = 8
batch_size = 64
[arms]
baselines = ["single", "hard", "independent"]
[search.branch]
n_trials = 4
sampler = "random"
warmstart_epochs = 2
proxy_epochs = 2
batch_size = 64
"""


CONFIGS = {
    "1x1": ("1 worker, 1 thread", 1, 1),
    "1x2": ("1 worker, 2 threads", 1, 2),
    "2": ("2 workers (--workers 2)", 2, None),
}
"""Row id -> (name, workers, torch threads; None: the study's own split, cores / workers)."""


def run(workers: int, threads: int | None, n_train: int, root: Path) -> dict[str, Any]:
    """One ``nas-mtl study --workers workers`` command finishing the study (``n_train`` images) in a fresh folder
    under ``root``: its wall seconds, the sum of its jobs' own seconds (``work``), when each worker started its first
    job (``first_job``: seconds after the command started) and how long the command ran after the last job ended
    (``after_last_job``: the report, exits)."""
    folder = Path(tempfile.mkdtemp(dir=root))
    (folder / "space.toml").write_text(SPACE)
    (folder / "study.toml").write_text(STUDY.replace("N_TRAIN", str(n_train)))
    url = f"sqlite:///{folder / 'jobs.db'}"
    cmd = [sys.executable, "-m", "nas_mtl.cli", *(["--threads", str(threads)] if threads else [])]
    cmd += ["study", str(folder / "study.toml"), "--out", str(folder / "run"), "--no-progress"]
    cmd += ["--storage", url, "--workers", str(workers)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0, started = time.perf_counter(), time.time()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    trials = optuna.load_study(study_name=PREFIX + "bench", storage=url).get_trials(deepcopy=False)
    trials = [t for t in trials if t.state == TrialState.COMPLETE]
    first: dict[str, float] = {}
    for t in trials:
        at = t.datetime_start.timestamp() - started
        first[t.user_attrs["worker"]] = min(first.get(t.user_attrs["worker"], at), at)
    return {
        "wall": seconds,
        "work": sum(t.value for t in trials),
        "first_job": sorted(first.values()),
        "after_last_job": started + seconds - max(t.datetime_complete.timestamp() for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", default="2048,8192", help="training images of each study, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", default=",".join(CONFIGS), help=f"rows to run, comma-separated from {list(CONFIGS)}")
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    args = parser.parse_args()
    ids = [i.strip() for i in args.only.split(",") if i.strip()]
    if not ids or any(i not in CONFIGS for i in ids):
        parser.error(f"--only: expected ids from {list(CONFIGS)}, got {args.only!r}")
    configs = {CONFIGS[i][0]: CONFIGS[i][1:] for i in ids}
    sizes = [int(n) for n in args.n_train.split(",")]
    seconds = {n: {name: [] for name in configs} for n in sizes}
    details = {n: {name: [] for name in configs} for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for n in sizes:
                for name, (workers, threads) in configs.items():
                    one = run(workers, threads, n, Path(tmp))
                    seconds[n][name].append(one.pop("wall"))
                    details[n][name].append(one)
                    first = ", ".join(f"{s:.1f}" for s in one["first_job"])
                    print(
                        f"n_train {n}, {name}: {seconds[n][name][-1]:.1f} s (jobs {one['work']:.1f} s; first jobs at "
                        f"{first} s; {one['after_last_job']:.1f} s after the last)",
                        flush=True,
                    )
    two_name = CONFIGS["2"][0]
    studies = []
    print(f"\n{'n_train':>8}  {'configuration':<28}{'wall s (median)':>16}{'jobs s':>9}{'speed-up of 2 workers':>24}")
    for n in sizes:
        median = {name: statistics.median(v) for name, v in seconds[n].items()}
        two = median.get(two_name)
        for name, s in median.items():
            ratio = f"{s / two:>23.2f}x" if two else f"{'-':>24}"
            work = statistics.median(d["work"] for d in details[n][name])
            print(f"{n:>8}  {name:<28}{s:>16.1f}{work:>9.1f}{ratio}")
        study = {"n_train": n, "seconds": seconds[n], "runs": details[n], "median_seconds": median}
        for key, name in (("1_worker_1_thread", CONFIGS["1x1"][0]), ("1_worker_2_threads", CONFIGS["1x2"][0])):
            if two and name in median:
                study[f"speedup_vs_{key}"] = median[name] / two
                # repeat by repeat (the two runs of one repeat ran minutes apart, so a slower machine slows both)
                paired = [a / b for a, b in zip(seconds[n][name], seconds[n][two_name], strict=True)]
                study[f"paired_speedups_vs_{key}"] = paired
                print(
                    f"{'':>10}2 workers vs {name}, by repeat: {', '.join(f'{r:.2f}x' for r in paired)} "
                    f"(median {statistics.median(paired):.2f}x, {min(paired):.2f}-{max(paired):.2f}x)"
                )
        studies.append(study)
    write_report(
        args.out,
        {
            "benchmark": "distributed study: 1 vs 2 workers (nas-mtl study --storage sqlite, --workers 2)",
            "jobs": 17,
            "repeats": args.repeats,
            "studies": studies,
        },
    )


if __name__ == "__main__":
    main()
