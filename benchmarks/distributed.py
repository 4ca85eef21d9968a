"""Wall time of one small study run by 1 worker vs 2 workers (``nas-mtl study --storage``), side by side.

    python benchmarks/distributed.py [--n-train 2048,8192] [--repeats 1] [--out benchmarks/results/distributed.json]

The study (written to a temporary folder): multidigits, N training images of 16 px (``--n-train``, one study
per size), a 2-stage ResNet, 8 epochs; single-task, hard and independent baselines, a branch search with 2
search seeds, 3 training seeds: 2 search jobs + 15 arm jobs. Rows (wall seconds from the first process's
start to the last one's exit, process start-up, imports, data and the report included):

  * 1 worker, 1 torch thread;
  * 1 worker, 2 torch threads (all of this machine's cores in one process);
  * 2 workers, threads split automatically (cores / workers on the machine = 1 each): the publishing
    process and a ``--worker``, started together (the worker waits for the study to be published).

Each process spends about 10 s starting (imports, data, the study record) and writes the report at the end:
the smaller study shows that fixed cost, the larger one what the jobs themselves gain.

Each configuration gets a fresh run folder and SQLite storage; configurations are interleaved over repeats.
The speed-up is 1-worker time / 2-worker time (median over repeats). Run it on an otherwise idle machine.
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

from _report import write_report

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


def run(workers: int, threads: int | None, n_train: int, root: Path) -> float:
    """Seconds for ``workers`` processes to finish the study (``n_train`` images) in a fresh folder under ``root``."""
    folder = Path(tempfile.mkdtemp(dir=root))
    (folder / "space.toml").write_text(SPACE)
    (folder / "study.toml").write_text(STUDY.replace("N_TRAIN", str(n_train)))
    cmd = [sys.executable, "-m", "nas_mtl.cli", *(["--threads", str(threads)] if threads else [])]
    cmd += ["study", str(folder / "study.toml"), "--out", str(folder / "run"), "--no-progress"]
    cmd += ["--storage", f"sqlite:///{folder / 'jobs.db'}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)]
    procs += [
        subprocess.Popen([*cmd, "--worker"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(workers - 1)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(err)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", default="2048,8192", help="training images of each study, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    args = parser.parse_args()
    configs = {"1 worker, 1 thread": (1, 1), "1 worker, 2 threads": (1, 2), "2 workers, 1 thread each": (2, None)}
    sizes = [int(n) for n in args.n_train.split(",")]
    seconds = {n: {name: [] for name in configs} for n in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for n in sizes:
                for name, (workers, threads) in configs.items():
                    seconds[n][name].append(run(workers, threads, n, Path(tmp)))
                    print(f"n_train {n}, {name}: {seconds[n][name][-1]:.1f} s", flush=True)
    studies = []
    print(f"\n{'n_train':>8}  {'configuration':<28}{'wall s (median)':>16}{'speed-up of 2 workers':>24}")
    for n in sizes:
        median = {name: statistics.median(v) for name, v in seconds[n].items()}
        two = median["2 workers, 1 thread each"]
        for name, s in median.items():
            print(f"{n:>8}  {name:<28}{s:>16.1f}{s / two:>23.2f}x")
        studies.append(
            {
                "n_train": n,
                "seconds": seconds[n],
                "median_seconds": median,
                "speedup_vs_1_worker_1_thread": median["1 worker, 1 thread"] / two,
                "speedup_vs_1_worker_2_threads": median["1 worker, 2 threads"] / two,
            }
        )
    write_report(
        args.out,
        {
            "benchmark": "distributed study: 1 vs 2 workers (nas-mtl study --storage sqlite)",
            "jobs": 17,
            "repeats": args.repeats,
            "studies": studies,
        },
    )


if __name__ == "__main__":
    main()
