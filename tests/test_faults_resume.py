"""Nothing resumes on what it was not made from: other data (AdaShare, trees, caches, score tables share one data
fingerprint), another sampler, a row or search record copied into another folder, and non-finite inputs are each
one-line errors naming the file and key (exit code 2) before any training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_data_folder import SPACE as FOLDER_SPACE
from test_data_folder import STUDY as FOLDER_STUDY
from test_data_folder import _write_stacked
from test_faults import STUDY, _error, _no_training

from nas_mtl.cli import main
from nas_mtl.data import MultiTaskData, create_dataset, data_fingerprint
from nas_mtl.data.base import TensorMultiTaskDataset

TINY = ["--data", "multidigits", "--data-arg", "n_val=32", "--data-arg", "n_test=32", "--data-arg", "size=16"]


def test_data_fingerprint_is_deterministic_and_tells_equal_sizes_apart():
    """Whatever the thread count (a search's workers rebuild the data with fewer threads)."""
    one = data_fingerprint(create_dataset("multidigits", n_train=32, n_val=16, n_test=16, size=16))
    threads = torch.get_num_threads()
    torch.set_num_threads(4 if threads != 4 else 1)
    try:
        again = data_fingerprint(create_dataset("multidigits", n_train=32, n_val=16, n_test=16, size=16))
    finally:
        torch.set_num_threads(threads)
    other = data_fingerprint(create_dataset("multidigits", n_train=32, n_val=16, n_test=16, size=16, seed=1))
    assert one == again and one["sizes"] == [32, 16, 16] and one["tasks"] == ["left", "right"]
    assert other["sample"] != one["sample"]


def test_adashare_resumed_on_other_data_is_refused(tmp_path, capsys, monkeypatch):
    argv = ["search", "adashare", *TINY, "--space", "resnet_small", "--out", str(tmp_path), "--no-progress"]
    argv += ["--epochs", "1", "--warmup-epochs", "1", "--batch-size", "32", "--device", "cpu"]
    assert main([*argv, "--data-arg", "n_train=64"]) == 0
    graph = (tmp_path / "graph.json").read_text()
    monkeypatch.setattr(
        "nas_mtl.search.adashare_training.AdaShareSearch.run_epoch", lambda self: pytest.fail("searched again")
    )
    err = _error([*argv, "--data-arg", "n_train=96"], capsys)
    assert "checkpoint.pt: this checkpoint was made with other settings: data.origin.kwargs.n_train (64 -> 96)" in err
    assert "data.sizes" in err and "data.sample" in err and (tmp_path / "graph.json").read_text() == graph


def test_a_branch_search_resumed_with_another_sampler_is_refused(tmp_path):
    """The sampler and pruner are part of the study record; the budget may grow."""
    from nas_mtl.search.branching import BranchSearchConfig, branch_search
    from nas_mtl.search.proxy import Score
    from nas_mtl.space import load_search_space

    class Free:
        def score(self, graph, report=None):
            return Score(0.0, (0.0,), {}, {}, 1, 1, 0.0)

    data = create_dataset("multidigits", n_train=32, n_val=16, n_test=16, size=16)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    branch_search(data, space, BranchSearchConfig(n_trials=2), tmp_path, scorer=Free())
    branch_search(data, space, BranchSearchConfig(n_trials=3), tmp_path, scorer=Free())  # a larger budget resumes
    for config, changed in (
        (BranchSearchConfig(n_trials=4, sampler="random"), "sampler ('tpe' -> 'random')"),
        (BranchSearchConfig(n_trials=4, pruner="none"), "pruner ('median' -> 'none')"),
    ):
        with pytest.raises(ValueError, match=r"^study 'branch': this search was made with other settings: ") as err:
            branch_search(data, space, config, tmp_path, scorer=Free())
        assert changed in str(err.value) and "\n" not in str(err.value)
    other = create_dataset("multidigits", n_train=32, n_val=16, n_test=16, size=16, seed=1)
    with pytest.raises(ValueError, match=r"other settings: data\.origin\.kwargs\.seed \(None -> 1\), data\.sample"):
        branch_search(other, space, BranchSearchConfig(n_trials=4), tmp_path, scorer=Free())


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """A finished tiny study with training seeds 0 and 1 and search seeds 0 and 1 (affinity)."""
    root = tmp_path_factory.mktemp("two_seeds")
    text = STUDY.replace("seeds = [0]", "seeds = [0, 1]\nsearch_seeds = [0, 1]")
    text = text.replace('["single", "hard"]', '["hard"]')
    (root / "study.toml").write_text(text)
    assert main(["study", str(root / "study.toml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root


def test_a_row_or_search_record_copied_into_another_folder_is_refused(two_seeds, tmp_path, capsys, monkeypatch):
    shutil.copytree(two_seeds, tmp_path, dirs_exist_ok=True)
    path, run = tmp_path / "study.toml", tmp_path / "run"
    _no_training(monkeypatch)
    assert main(["study", str(path), "--out", str(run), "--no-progress"]) == 0  # a finished study reads back
    capsys.readouterr()
    seed0, seed1 = run / "arms" / "hard" / "equal" / "seed0", run / "arms" / "hard" / "equal" / "seed1"
    row1 = (seed1 / "row.json").read_text()
    shutil.copy(seed0 / "row.json", seed1 / "row.json")
    message = f"{seed1 / 'row.json'}: seed 0 does not match its folder (seed1); delete {seed1} to retrain it"
    assert message in _error(["study", str(path), "--out", str(run)], capsys)
    assert message in _error(["report", str(run)], capsys)
    (seed1 / "row.json").write_text(row1)
    balancer = json.loads(row1) | {"balancer": "mgda"}
    (seed1 / "row.json").write_text(json.dumps(balancer))
    assert "row.json: balancer 'mgda' does not match its folder (equal)" in _error(["report", str(run)], capsys)
    (seed1 / "row.json").write_text(row1)
    search0, search1 = run / "search" / "affinity" / "seed0", run / "search" / "affinity" / "seed1"
    assert json.loads((search1 / "search.json").read_text())["study"] == {"method": "affinity", "seed": 1}
    shutil.copy(search0 / "search.json", search1 / "search.json")
    message = f"{search1 / 'search.json'}: seed 0 does not match its folder (seed1); delete {search1} to rerun it"
    assert message in _error(["study", str(path), "--out", str(run)], capsys)


def test_non_finite_inputs_are_refused_by_data_check_and_before_training(tmp_path, capsys):
    for root, mask_files in ((tmp_path / "files", True), (tmp_path / "memory", False)):
        _write_stacked(root, mask_files=mask_files)
        x = np.load(root / "train" / "inputs.npy").astype(np.float32) / 255
        x[5, 2, 3, 1] = np.nan
        np.save(root / "train" / "inputs.npy", x)
        message = f"{root / 'train' / 'inputs.npy'}: sample 5 has a NaN or Inf input; inputs must be finite numbers"
        assert message in _error(["data", "check", str(root)], capsys)
        (tmp_path / "space.toml").write_text(FOLDER_SPACE)
        out = tmp_path / f"t-{root.name}"
        argv = ["train", "--data", str(root), "--space", str(tmp_path / "space.toml"), "--epochs", "1"]
        assert message in _error([*argv, "--out", str(out), "--device", "cpu"], capsys)
        assert not out.exists()
    (tmp_path / "study.toml").write_text(FOLDER_STUDY.replace('name = "mydata"', 'name = "memory"'))
    assert message in _error(["study", str(tmp_path / "study.toml"), "--out", str(tmp_path / "run")], capsys)
    assert not (tmp_path / "run").exists()
    np.save(root / "train" / "level.npy", np.full(40, np.nan, np.float32))  # a NaN target is a missing label
    x[5, 2, 3, 1] = 0.5
    np.save(root / "train" / "inputs.npy", x)
    assert main(["data", "check", str(root)]) == 0


def test_non_finite_inputs_built_in_python_are_refused():
    images = torch.zeros(4, 1, 2, 2)
    images[2, 0, 1, 1] = torch.inf
    split = TensorMultiTaskDataset(images, {"t": torch.zeros(4, 1)})
    fine = TensorMultiTaskDataset(torch.zeros(4, 1, 2, 2), {"t": torch.zeros(4, 1)})
    from nas_mtl.tasks import create_task

    task = create_task("regression", name="t")
    with pytest.raises(ValueError, match=r"^dataset 'mine': val images: sample 2 has a NaN or Inf input; "):
        MultiTaskData("mine", (task,), (1, 2, 2), fine, split, fine)
