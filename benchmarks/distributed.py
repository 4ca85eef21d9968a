"""Wall time of one small study run by 1 worker vs 2 workers (``nas-mtl study --storage``), side by side.

    python benchmarks/distributed.py [--repeats 1] [--out benchmarks/results/distributed.json]

The study (written to a temporary folder): multidigits, 2048 training images of 16 px, a 2-stage ResNet, 8
epochs; single-task, hard and independent baselines, a branch search with 2 search seeds, 3 training seeds:
2 search jobs + 15 arm jobs. Rows (wall seconds from the first process's start to the last one's exit,
process start-up and imports included):

  * 1 worker, 1 torch thread;
  * 1 worker, 2 torch threads (all of this machine's cores in one process);
  * 2 workers, threads split automatically (cores / workers on the machine = 1 each): the publishing
    process, and a ``--worker`` started as soon as the study is in the storage.

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
n_train = 2048
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


def run(workers: int, threads: int | None, root: Path) -> float:
    """Seconds for ``workers`` processes to finish the study in a fresh folder under ``root``."""
    folder = Path(tempfile.mkdtemp(dir=root))
    (folder / "space.toml").write_text(SPACE)
    (folder / "study.toml").write_text(STUDY)
    cmd = [sys.executable, "-m", "nas_mtl.cli", *(["--threads", str(threads)] if threads else [])]
    cmd += ["study", str(folder / "study.toml"), "--out", str(folder / "run"), "--no-progress"]
    cmd += ["--storage", f"sqlite:///{folder / 'jobs.db'}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)]
    while workers > 1 and not (folder / "run" / "queue.json").is_file():
        if procs[0].poll() is not None:
            raise RuntimeError(procs[0].stderr.read())
        time.sleep(0.1)
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
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    args = parser.parse_args()
    configs = {"1 worker, 1 thread": (1, 1), "1 worker, 2 threads": (1, 2), "2 workers, 1 thread each": (2, None)}
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (workers, threads) in configs.items():
                seconds[name].append(run(workers, threads, Path(tmp)))
                print(f"{name}: {seconds[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(v) for name, v in seconds.items()}
    two = median["2 workers, 1 thread each"]
    print(f"\n{'configuration':<28}{'wall s (median)':>16}{'speed-up of 2 workers':>24}")
    for name, s in median.items():
        print(f"{name:<28}{s:>16.1f}{s / two:>23.2f}x")
    write_report(
        args.out,
        {
            "benchmark": "distributed study: 1 vs 2 workers (nas-mtl study --storage sqlite)",
            "jobs": 17,
            "repeats": args.repeats,
            "seconds": seconds,
            "median_seconds": median,
            "speedup_vs_1_worker_1_thread": median["1 worker, 1 thread"] / two,
            "speedup_vs_1_worker_2_threads": median["1 worker, 2 threads"] / two,
        },
    )


if __name__ == "__main__":
    main()
