"""Training time on a data folder read per sample (PNG inputs), at 0 and N DataLoader workers, side by side.

    python benchmarks/input_pipeline.py [--images 2000] [--size 64] [--workers 2] [--repeats 3] [--threads 1]
                                        [--out benchmarks/results/input_pipeline.json]

The folder: ``train/images/I.png`` (RGB, ``--size`` pixels square) and a per-split ``label.npy`` (4 classes), plus
a test split of a quarter the size, written once to a temporary folder. Each repeat trains a hard-shared
``resnet_small`` (2 epochs, batch 64, ``--threads`` torch threads) once with ``num_workers = 0`` and once with
``--workers``, in alternating order; the ratio is the median over repeats of the per-repeat time ratio (paired:
load that drifts over the run cancels). Both runs' weights are compared bitwise (the batches do not depend on the
worker count).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report
from PIL import Image

from nas_mtl import SharingGraph, TrainConfig, create_dataset, load_search_space, train_graph


def _write_folder(root: Path, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", images), ("test", max(images // 4, 64))):
        (root / split / "images").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png"
            )
        np.save(root / split / "label.npy", rng.integers(0, 4, n))
    (root / "tasks.toml").write_text(
        '[data]\ninputs = "images"\n[tasks.label]\nkind = "classification"\nnum_classes = 4\n'
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_folder(root, args.images, args.size)
        data = create_dataset(str(root))
        space = load_search_space("resnet_small", input_shape=data.input_shape)
        graph = SharingGraph.hard_sharing(data.task_names, space.layers)
        times: dict[int, list[float]] = {0: [], args.workers: []}
        weights = {}
        for r in range(args.repeats):
            for workers in (0, args.workers) if r % 2 == 0 else (args.workers, 0):
                config = TrainConfig(epochs=2, batch_size=64, device="cpu", num_workers=workers)
                t0 = time.perf_counter()
                net, _ = train_graph(graph, data, space, config)
                times[workers].append(time.perf_counter() - t0)
                weights[workers] = net.state_dict()
                print(f"repeat {r}: {workers} workers: {times[workers][-1]:.1f} s", flush=True)
    ratios = [a / b for a, b in zip(times[0], times[args.workers])]
    same = all(torch.equal(weights[0][k], weights[args.workers][k]) for k in weights[0])
    report = {
        "settings": vars(args),
        "seconds": {str(k): v for k, v in times.items()},
        "speedup_median": statistics.median(ratios),
        "speedups": ratios,
        "bitwise_same_weights": same,
    }
    speedup = statistics.median(ratios)
    print(f"{args.workers} workers vs 0: {speedup:.2f}x faster (median of {len(ratios)}); same weights: {same}")
    return write_report(args.out, report)


if __name__ == "__main__":
    main()
