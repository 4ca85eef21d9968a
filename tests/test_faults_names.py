"""Names are names (D2): a task, arm, balancer or method name never leads a write outside the run folder.

Names are checked where they enter (a data folder's tasks.toml, a task spec, a registry), and every path built
from a name under a run folder goes through ``runs.run_path``; these tests walk the writers with hostile names and
compare the file tree around the run folder before and after.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_mtl.baselines import train_single_tasks
from nas_mtl.cli import main
from nas_mtl.data import MultiTaskData, TensorMultiTaskDataset
from nas_mtl.registry import Registry
from nas_mtl.runs import check_name, run_path
from nas_mtl.space import load_search_space
from nas_mtl.study import slug
from nas_mtl.tasks import ClassificationTask
from nas_mtl.train import TrainConfig

HOSTILE = ["../../ESCAPED", "/tmp/ESCAPED-abs", "..", ".", "a/b", ".hidden", "-flag", "", "x" * 101, "a\nb"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_is_refused_where_it_enters(name):
    with pytest.raises(ValueError, match="not a name"):
        check_name(name, "task name")
    with pytest.raises(ValueError, match="not a name|non-empty"):
        ClassificationTask(name, 2)
    with pytest.raises(ValueError, match="not a name"):
        Registry("search method", path_names=True).register(name)


@pytest.mark.parametrize("name", ["left", "5_o_Clock_Shadow", "seg-v2.1", "a+b", "mgda=1"])
def test_ordinary_names_pass(name):
    assert check_name(name, "task name") == name and ClassificationTask(name, 2).name == name


def test_run_path_refuses_every_way_out(tmp_path):
    run = tmp_path / "run"
    (run / "inside").mkdir(parents=True)
    os.symlink(tmp_path, run / "out-link")
    assert run_path(run, "inside", "x.json") == run / "inside" / "x.json"
    for parts in (("..", "x"), ("/etc/passwd",), ("inside", "..", "..", "x"), ("out-link", "x")):
        with pytest.raises(ValueError, match="leads outside this folder"):
            run_path(run, *parts)


@pytest.mark.parametrize("name", ["..", "...", ".hidden", "", "single-task/../../x", "mgda:normalization=l2"])
def test_a_slug_is_one_visible_path_part(name):
    part = slug(name)
    assert part and not part.startswith(".") and "/" not in part and Path(part).name == part


def _data_folder(root: Path, task: str) -> Path:
    """A data folder whose one task has the given name (written as a quoted TOML key)."""
    root.mkdir()
    (root / "tasks.toml").write_text(f'[tasks."{task}"]\nkind = "classification"\nnum_classes = 2\ntarget = "y"\n')
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 16)):
        (root / split).mkdir()
        np.save(root / split / "inputs.npy", rng.standard_normal((n, 3, 8, 8)).astype(np.float32))
        np.save(root / split / "y.npy", rng.integers(0, 2, n))
    return root


WRITERS = {
    "data check": lambda data, out: ["data", "check", data],
    "train": lambda data, out: ["train", "--data", data, "--out", out],
    "baselines": lambda data, out: ["baselines", "--data", data, "--out", out, "--arms", "single"],
    "affinity (single-task nets)": lambda data, out: [
        "search",
        "affinity",
        "--data",
        data,
        "--out",
        out,
        "--measure",
        "rsa",
    ],
    "branch (references)": lambda data, out: ["search", "branch", "--data", data, "--out", out],
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("task", ["../../ESCAPED", "/tmp/ESCAPED-abs", ".."])
def test_every_writer_refuses_a_hostile_task_name_and_writes_nothing_outside(tmp_path, capsys, writer, task):
    data = _data_folder(tmp_path / "data", task)
    before = _tree(tmp_path)
    argv = WRITERS[writer](str(data), str(tmp_path / "work" / "run"))
    if writer in ("train", "baselines"):
        argv += ["--epochs", "1", "--device", "cpu", "--no-progress"]
    if writer != "data check":
        argv += ["--space", "resnet_small"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{data / 'tasks.toml'}: tasks.{task}" in err and "not a name" in err, err
    assert _tree(tmp_path) - before <= {"work"} and not Path("/tmp/ESCAPED-abs").exists()


def test_a_name_that_slips_past_the_entry_check_still_cannot_leave_the_run_folder(tmp_path, monkeypatch):
    """Second line: with the task-spec check switched off, the single-task writer's run_path still refuses."""
    monkeypatch.setattr("nas_mtl.tasks.check_name", lambda name, what, source=None: name)
    monkeypatch.setattr("nas_mtl.baselines.check_name", lambda name, what, source=None: name)
    task = ClassificationTask("../../ESCAPED", 2)
    split = TensorMultiTaskDataset(torch.randn(8, 3, 16, 16), {task.name: torch.randint(0, 2, (8,))})
    data = MultiTaskData("hostile", (task,), (3, 16, 16), split, split, split)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="leads outside this folder"):
        train_single_tasks(data, space, TrainConfig(epochs=1, device="cpu", progress=False), tmp_path / "a" / "run")
    assert _tree(tmp_path) - before <= {"a", "a/run"}
