"""Data on disk with no code: a folder with tasks.toml, read as stacked arrays, per-sample files or the MTAN
layout; `nas-mtl data check`; a study and the CLI on it; one-line errors naming the file and key."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from nas_mtl.cli import main
from nas_mtl.data import create_dataset, iterate_batches
from nas_mtl.data.folder import read_tasks_file, summarize

TASKS_TOML = """
[data]
layout = "HWC"
[tasks.digit]
kind = "classification"
num_classes = 4
[tasks.level]
kind = "regression"
metric = "rmse"
[tasks.mask]
kind = "segmentation"
num_classes = 3
target = "masks"
"""


def _write_stacked(root, seed: int = 0, mask_files: bool = True) -> dict:
    """train/ and test/ with inputs.npy (N, H, W, C) uint8, digit.npy (-1 = missing), level.npy (NaN = missing)
    and masks/ (one PNG per sample; every 7th absent = missing), or with ``mask_files=False`` masks.npy (every
    7th -1). Returns the arrays written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", 40), ("test", 12)):
        d = root / split
        (d / "masks").mkdir(parents=True)
        x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        digit = rng.integers(0, 4, n)
        digit[:3] = -1
        level = rng.random(n).astype(np.float32)
        level[2:5] = np.nan
        masks = rng.integers(0, 3, (n, 8, 8), dtype=np.uint8)
        np.save(d / "inputs.npy", x)
        np.save(d / "digit.npy", digit)
        np.save(d / "level.npy", level)
        for i in range(n):
            if i % 7 and mask_files:
                Image.fromarray(masks[i]).save(d / "masks" / f"{i}.png")
        if not mask_files:  # every component stacked: the split is held in memory
            (d / "masks").rmdir()
            np.save(d / "masks.npy", np.where(np.arange(n)[:, None, None] % 7 == 0, -1, masks.astype(np.int64)))
        written[split] = {"x": x, "digit": digit, "level": level, "masks": masks}
    (root / "tasks.toml").write_text(TASKS_TOML)
    return written


def test_a_folder_reads_as_written_with_missing_labels(tmp_path):
    written = _write_stacked(tmp_path)
    data = create_dataset(str(tmp_path))
    assert data.origin == {"dataset": "folder", "kwargs": {"root": str(tmp_path.resolve())}}
    assert data.task_names == ("digit", "level", "mask") and data.input_shape == (3, 8, 8)
    assert [t.primary_metric for t in data.tasks] == ["accuracy", "rmse", "miou"]
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 12)  # val: a seeded 10 % of train
    val_idx = data.info["val_indices"]
    train_idx = sorted(set(range(40)) - set(val_idx))
    w = written["train"]
    for k, i in enumerate(train_idx):
        x, y = data.train[k]
        torch.testing.assert_close(x, torch.from_numpy(w["x"][i].transpose(2, 0, 1) / 255.0).float(), rtol=0, atol=0)
        assert int(y["digit"]) == w["digit"][i]
        assert (math.isnan(w["level"][i]) and torch.isnan(y["level"]).all()) or float(y["level"]) == w["level"][i]
        want = torch.full((8, 8), -1) if i % 7 == 0 else torch.from_numpy(w["masks"][i]).long()
        assert torch.equal(y["mask"], want)
    for x, y in iterate_batches(data.test, 5, shuffle=False):  # batches through the default collation
        for t in data.tasks:
            t.validate_target(y[t.name], x.shape[0])
    summary = summarize(data)
    test = summary["splits"]["test"]["tasks"]
    assert test["digit"] == {"labelled": 9, "missing": 3, "classes": sorted(set(written["test"]["digit"][3:]))}
    assert test["level"]["labelled"] == 9 and test["level"]["max"] == pytest.approx(np.nanmax(written["test"]["level"]))
    assert test["mask"]["labelled"] == 12 - 2  # files 0 and 7 absent


def test_per_sample_image_inputs_and_a_val_folder(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "depth").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(
                tmp_path / split / "images" / f"{i}.png"
            )
            depth = rng.random((5, 7)).astype(np.float32) + 0.1
            depth[0, 0] = 0.0  # MTAN's invalid pixel
            np.save(tmp_path / split / "depth" / f"{i}.npy", depth)
        np.save(tmp_path / split / "attrs.npy", rng.integers(0, 2, (n, 2)).astype(np.float32))
    (tmp_path / "tasks.toml").write_text(
        '[data]\ninputs = "images"\n[tasks.depth]\nkind = "dense_regression"\n'
        '[tasks.attrs]\nkind = "multilabel"\nnum_labels = 2\nmetric = "f1"\n'
    )
    data = create_dataset("folder", root=str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (6, 3, 3) and data.input_shape == (3, 5, 7)
    x, y = data.val[2]
    image = np.asarray(Image.open(tmp_path / "val" / "images" / "2.png"))
    torch.testing.assert_close(x, torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float(), rtol=0, atol=0)
    assert y["depth"].shape == (1, 5, 7) and torch.equal(
        y["depth"][0], torch.from_numpy(np.load(tmp_path / "val/depth/2.npy"))
    )
    assert summarize(data)["splits"]["val"]["tasks"]["depth"]["min"] == 0.0


def test_the_mtan_layout_is_an_instance_of_the_format(tmp_path):
    """NYUv2 in the MTAN/LibMTL .npy layout, read by the folder format, is item for item what `nyuv2` reads."""
    rng = np.random.default_rng(2)
    arrays = {
        "image": lambda: rng.random((6, 8, 3), dtype=np.float32),
        "label": lambda: rng.integers(-1, 13, (6, 8)).astype(np.float32),
        "depth": lambda: rng.random((6, 8, 1), dtype=np.float32) * (rng.random((6, 8, 1)) > 0.2),
        "normal": lambda: rng.normal(size=(6, 8, 3)).astype(np.float32),
    }
    for split, n in (("train", 10), ("val", 3)):
        for folder, make in arrays.items():
            (tmp_path / split / folder).mkdir(parents=True)
            for i in range(n):
                np.save(tmp_path / split / folder / f"{i}.npy", make())
    nyu = create_dataset("nyuv2", root=str(tmp_path))
    (tmp_path / "tasks.toml").write_text(
        textwrap.dedent("""
        [data]
        inputs = "image"
        layout = "HWC"
        test = "val"
        val = false
        [tasks.segmentation]
        kind = "segmentation"
        num_classes = 13
        target = "label"
        [tasks.depth]
        kind = "dense_regression"
        [tasks.normal]
        kind = "normals"
        """)
    )
    mine = create_dataset(str(tmp_path))
    assert mine.tasks == nyu.tasks and mine.input_shape == nyu.input_shape
    for split in ("train", "val", "test"):
        a, b = getattr(mine, split), getattr(nyu, split)
        assert len(a) == len(b)
        for k in range(len(a)):
            (xa, ya), (xb, yb) = a[k], b[k]
            assert torch.equal(xa, xb) and all(torch.equal(ya[t], yb[t]) for t in yb)


def test_data_check_cli_summarises(tmp_path, capsys):
    _write_stacked(tmp_path)
    assert main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test: 12 samples, inputs in [0, 1]" in out
    assert "digit (classification, metric accuracy): 9 labelled, 3 missing; classes [" in out
    assert "mask (segmentation, metric miou): 10 labelled, 2 missing; classes [0, 1, 2]" in out


STUDY = """
format = "nas_mtl.study/1"
name = "nocode"
seeds = [0]
[data]
name = "mydata"
[space]
name = "space.toml"
[train]
epochs = 1
batch_size = 12
device = "cpu"
[arms]
baselines = ["single", "hard"]
"""
SPACE = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
in_chans = 3
widths = [4]
depths = [1]
"""


def test_a_study_and_the_cli_on_a_data_folder(tmp_path, tmp_path_factory, capsys):
    """The folder is named relative to the study file, so the study runs from any working directory."""
    _write_stacked(tmp_path / "mydata")
    (tmp_path / "study.toml").write_text(STUDY)
    (tmp_path / "space.toml").write_text(SPACE)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert main(["study", str(tmp_path / "study.toml"), "--out", str(elsewhere / "run"), "--no-progress"]) == 0
    assert "Verdict" in capsys.readouterr().out
    argv = ["train", "--data", str(tmp_path / "mydata"), "--space", str(tmp_path / "space.toml"), "--epochs", "1"]
    assert main([*argv, "--batch-size", "12", "--out", str(elsewhere / "t"), "--no-progress"]) == 0


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas-mtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _break_toml(old, new):
    def edit(root):
        (root / "tasks.toml").write_text(TASKS_TOML.replace(old, new))

    return edit


def _save(relpath, array):
    return lambda root: np.save(root / relpath, array)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_break_toml("[tasks.digit]", "[tasks.digit"), "tasks.toml: not valid TOML"),
        (_break_toml('kind = "regression"', 'kind = "regresion"'), "tasks.toml: tasks.level.kind: expected one of"),
        (
            _break_toml("num_classes = 4", "num_class = 4"),
            "tasks.toml: tasks.digit: task spec (classification): unknown",
        ),
        (_break_toml('metric = "rmse"', 'metric = "r2"'), "tasks.toml: tasks.level: task 'level' (regression): metric"),
        (_break_toml('layout = "HWC"', 'layout = "NHWC"'), "tasks.toml: data.layout: expected one of ['CHW', 'HWC']"),
        (
            _save("train/level.npy", np.zeros((40, 3), np.float32)),
            "train/level.npy[0]: task 'level' (regression) expects a target of shape (1,) per sample, got (3,)",
        ),
        (_save("train/digit.npy", np.zeros(39, np.int64)), "train/digit.npy: 39 rows but 40 inputs"),
        (
            _save("train/digit.npy", np.full(40, 4)),
            "train/digit.npy[0]: task 'digit' (classification): class labels must lie in [0, 3]",
        ),
        (_save("test/digit.npy", np.full(12, 0.5)), "test/digit.npy[0]: task 'digit' (classification) expects integer"),
        (lambda root: (root / "train" / "level.npy").unlink(), "train: no level.npy nor level/ for task 'level'"),
        (_save("train/masks/99.npy", np.zeros((8, 8))), "train/masks: file(s) for no input, e.g. 99.npy"),
    ],
)
def test_a_broken_folder_is_a_one_line_error_naming_file_and_key(tmp_path, capsys, damage, message):
    root = tmp_path / "mydata"
    _write_stacked(root)
    damage(root)
    assert message in _error(["data", "check", str(root)], capsys)
    (tmp_path / "study.toml").write_text(STUDY)
    (tmp_path / "space.toml").write_text(SPACE)
    assert message in _error(["study", str(tmp_path / "study.toml"), "--out", str(tmp_path / "run")], capsys)
    assert not (tmp_path / "run").exists()
    argv = ["train", "--data", str(root), "--space", "resnet_small", "--out", str(tmp_path / "t"), "--epochs", "1"]
    assert message in _error(argv, capsys)
    assert not (tmp_path / "t").exists()


def test_in_memory_splits_check_whole_arrays(tmp_path, capsys):
    written = _write_stacked(tmp_path, mask_files=False)
    data = create_dataset(str(tmp_path))
    assert type(data.train).__name__ == "TensorMultiTaskDataset"
    assert summarize(data)["splits"]["test"]["tasks"]["mask"]["labelled"] == 10
    x, y = data.test[7]
    assert (y["mask"] == -1).all() and torch.equal(
        data.test[1][1]["mask"], torch.from_numpy(written["test"]["masks"][1]).long()
    )
    np.save(tmp_path / "train" / "level.npy", np.zeros((40, 3), np.float32))
    message = "train/level.npy: task 'level' (regression) expects a target of shape (1,) per sample, got (3,)"
    assert message in _error(["data", "check", str(tmp_path)], capsys)
    np.save(tmp_path / "train" / "level.npy", np.zeros(40, np.float32))
    np.save(tmp_path / "test" / "masks.npy", np.full((12, 8, 8), 3))
    message = "test/masks.npy: task 'mask' (segmentation): class labels must lie in [0, 2] (or ignore_index -1)"
    assert message in _error(["data", "check", str(tmp_path)], capsys)


def test_a_bad_per_sample_file_is_named_by_data_check(tmp_path, capsys):
    _write_stacked(tmp_path)
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "test" / "masks" / "5.png")  # wrong size
    message = "test/masks/5.png: task 'mask' (segmentation) expects a target of shape (8, 8) per sample, got (8, 9)"
    assert message in _error(["data", "check", str(tmp_path)], capsys)


def test_read_tasks_file_requires_tasks(tmp_path):
    (tmp_path / "tasks.toml").write_text('[data]\nname = "x"\n')
    with pytest.raises(ValueError, match=r"tasks.toml: tasks: expected one \[tasks.NAME\] table per task"):
        read_tasks_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere: data folder not found"):
        read_tasks_file(tmp_path / "nowhere")


def test_loader_workers_give_bitwise_the_batches_and_the_training_of_the_in_process_path(tmp_path):
    """A folder read per sample (mask PNGs): the trainer's DataLoader at 0 and 2 workers yields bitwise the batches
    of the in-process path for each epoch's seed, and a training run at 2 workers is bitwise the one at 0."""
    from nas_mtl import SharingGraph, TrainConfig, load_search_space, train_graph
    from nas_mtl.data import batch_loader

    _write_stacked(tmp_path)
    data = create_dataset("folder", root=str(tmp_path))
    assert not hasattr(data.train, "batch")  # read per sample: the DataLoader path
    for epoch_seed in (0, 100_003):
        reference = list(iterate_batches(data.train, 8, True, torch.Generator().manual_seed(epoch_seed), True))
        for workers in (0, 2):
            order = torch.Generator()
            loader = batch_loader(data.train, 8, order, workers)
            for _ in range(2):  # the same loader, re-seeded: each epoch's order again (workers persist)
                order.manual_seed(epoch_seed)
                got = list(loader)
                assert len(got) == len(reference)
                for (x, y), (rx, ry) in zip(got, reference):  # missing levels are NaN: equal as NaN
                    assert torch.equal(x, rx)
                    for k in ry:
                        torch.testing.assert_close(y[k], ry[k], rtol=0, atol=0, equal_nan=True)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    graph = SharingGraph.hard_sharing(data.task_names, space.layers)
    runs = {}
    for workers in (0, 2):
        config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, device="cpu", num_workers=workers)
        net, result = train_graph(graph, data, space, config)
        runs[workers] = (net.state_dict(), result.val)
    assert runs[0][1] == runs[2][1]
    assert all(torch.equal(runs[0][0][k], runs[2][0][k]) for k in runs[0][0])


class _Augmenting(torch.utils.data.Dataset):
    """Each sample drawn from the reading process's random streams, as an augmenting dataset's would be."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import random

        return torch.tensor([float(torch.rand(())), float(np.random.rand()), random.random()]), {}


def test_loader_workers_draw_from_the_runs_seed():
    """The workers' torch, NumPy and ``random`` streams come from the run's seed: equal for one seed, other for
    another (not from a constant of the order generator at the loader's construction)."""
    from nas_mtl.data import batch_loader

    def draws(seed):
        order = torch.Generator().manual_seed(0)
        loader = batch_loader(_Augmenting(), 4, order, num_workers=2, seed=seed)
        return torch.cat([x for x, _ in loader])

    first, again, other = draws(0), draws(0), draws(1)
    assert torch.equal(first, again) and not torch.isclose(first, other).any()
