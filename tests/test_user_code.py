"""The user's own datasets by reference (MODULE:FUNCTION, FILE.py:FUNCTION) and by entry point, from a study file
and the command line, with one-line errors for bad references; nothing of the user's lives in nas_mtl."""

from __future__ import annotations

import sys
import textwrap

import pytest

from nas_mtl.cli import main
from nas_mtl.data import create_dataset, list_datasets
from nas_mtl.study import load_rows

FACTORY = '''
import torch

from nas_mtl.data import MultiTaskData, TensorMultiTaskDataset
from nas_mtl.tasks import ClassificationTask, RegressionTask


def make(n_train: int = 64, seed: int = 0) -> MultiTaskData:
    """Two tasks read from one planted factor: its sign (classes) and its value (regression)."""
    g = torch.Generator().manual_seed(seed)
    splits = []
    for n in (n_train, 32, 32):
        level = torch.rand(n, generator=g) * 2 - 1
        x = 0.3 * torch.randn(n, 1, 16, 16, generator=g) + level.view(n, 1, 1, 1)
        splits.append(TensorMultiTaskDataset(x, {"sign": (level > 0).long(), "level": level.view(n, 1)}))
    return MultiTaskData("mine", (ClassificationTask("sign", 2), RegressionTask("level", 1)), (1, 16, 16), *splits)


def broken(n_train: int = 64):
    raise RuntimeError("the data server is down")


def not_data():
    return 42
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user project outside the package tree: my_pkg/data.py, importable from its folder."""
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "data.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:  # another test's project
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path
    for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        del sys.modules[name]


def test_a_dataset_by_module_or_file_reference(project):
    by_module = create_dataset("my_pkg.data:make", n_train=48)
    by_file = create_dataset(f"{project / 'my_pkg' / 'data.py'}:make", n_train=48)
    assert by_module.task_names == by_file.task_names == ("sign", "level") and len(by_module.train) == 48
    assert by_module.origin == {"dataset": "my_pkg.data:make", "kwargs": {"n_train": 48}}
    assert (by_module.train.images == by_file.train.images).all()


STUDY = """
format = "nas_mtl.study/1"
name = "mine"
seeds = [0]
[data]
name = "my_pkg/data.py:make"
n_train = 64
[space]
name = "space.toml"
[train]
epochs = 1
batch_size = 32
device = "cpu"
[arms]
baselines = ["single", "hard"]
"""
SPACE = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4]
depths = [1]
"""


def test_a_study_and_the_cli_run_on_the_users_data(project, capsys, tmp_path_factory):
    """The study's file reference is relative to the study file, so it runs from any folder."""
    (project / "study.toml").write_text(STUDY)
    (project / "space.toml").write_text(SPACE)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert main(["study", str(project / "study.toml"), "--out", str(elsewhere / "run"), "--no-progress"]) == 0
    assert "Verdict" in capsys.readouterr().out
    argv = ["train", "--data", "my_pkg.data:make", "--data-arg", "n_train=64", "--space", str(project / "space.toml")]
    assert main([*argv, "--epochs", "1", "--batch-size", "32", "--out", str(elsewhere / "t"), "--no-progress"]) == 0


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas-mtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module:make", "dataset 'no_such_module:make': no module 'no_such_module'"),
        ("my_pkg.data:nope", "dataset 'my_pkg.data:nope': my_pkg.data has no function 'nope'"),
        ("missing.py:make", "file not found: "),
        ("my_pkg.data:broken", "dataset 'my_pkg.data:broken' failed: RuntimeError: the data server is down"),
        ("my_pkg.data:not_data", "the factory returned a int, not a MultiTaskData"),
    ],
)
def test_bad_references_are_one_line_and_make_no_run_folder(project, capsys, name, message):
    out = project / "never"
    argv = ["train", "--data", name, "--space", "resnet_small", "--out", str(out), "--epochs", "1"]
    assert message in _error(argv, capsys)
    assert not out.exists()


def test_a_study_names_the_key_of_a_bad_reference_or_option(project, capsys):
    (project / "space.toml").write_text(SPACE)
    for edit, message in [
        (("my_pkg/data.py:make", "my_pkg/data.py:nope"), "study.toml: data.name: dataset "),
        (("n_train = 64", "n_trian = 64"), "study.toml: data.n_trian: unknown key for dataset"),
    ]:
        (project / "study.toml").write_text(STUDY.replace(*edit))
        assert message in _error(["study", str(project / "study.toml"), "--out", str(project / "r")], capsys)
        assert not (project / "r").exists()


def test_an_installed_packages_entry_point_is_a_dataset_name(project, capsys):
    dist = project / "my_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent("""
        [nas_mtl.datasets]
        mine = my_pkg.data:make
    """)
    )
    assert "mine" in list_datasets()
    assert create_dataset("mine", n_train=32).task_names == ("sign", "level")
    assert main(["list"]) == 0 and "mine" in capsys.readouterr().out


BALANCER = '''
from nas_mtl.balancing import EqualWeights


class Scaled(EqualWeights):
    """Equal weights times beta: a user's balancer with an option."""

    name = "scaled"
    shared_only = False

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def options(self):
        return {"beta": self.beta}

    def backward(self, losses, network):
        (self.beta * sum(losses.values())).backward()
        return dict.fromkeys(losses, self.beta)


def make(beta: float = 1.0) -> Scaled:
    return Scaled(beta)
'''


def test_a_balancer_by_reference_with_options_in_the_cli_and_a_study(project, capsys, tmp_path_factory):
    from nas_mtl.balancing import create_balancer

    (project / "my_pkg" / "bal.py").write_text(BALANCER)
    made = create_balancer("my_pkg.bal:make:beta=0.5")
    assert made.spec == "scaled:beta=0.5" and made.beta == 0.5
    assert create_balancer(f"{project / 'my_pkg' / 'bal.py'}:make").beta == 1.0
    assert create_balancer("mgda:normalization=l2").spec.startswith("mgda:")  # registered names keep their syntax
    (project / "space.toml").write_text(SPACE)
    (project / "study.toml").write_text(
        STUDY.replace("seeds = [0]", 'seeds = [0]\nbalancers = ["equal", "my_pkg/bal.py:make:beta=0.5"]')
    )
    out = tmp_path_factory.mktemp("elsewhere") / "run"
    assert main(["study", str(project / "study.toml"), "--out", str(out), "--no-progress"]) == 0
    rows = {(r.arm, r.balancer.rsplit("/", 1)[-1]) for r in load_rows(out)}
    assert ("hard", "bal.py:make:beta=0.5") in rows and ("hard", "equal") in rows
    with pytest.raises(ValueError, match="balancer 'my_pkg.bal:nope': my_pkg.bal has no function 'nope'"):
        create_balancer("my_pkg.bal:nope")


def test_a_lazy_registration_imports_its_module_on_first_use_and_a_failure_once(tmp_path, monkeypatch):
    """``Registry.register_lazy`` (how the timm backbones are registered): the names are listed at once, the module
    that registers them is imported the first time one is used, and a module that fails to import is tried once:
    every later use gives the first failure's message (a half-imported library may fail differently the second
    time). Only that module may register the names."""
    import importlib
    import types

    from nas_mtl.registry import Registry

    registry = Registry("thing")
    holder = types.ModuleType("lazy_holder")
    holder.registry = registry
    monkeypatch.setitem(sys.modules, "lazy_holder", holder)
    (tmp_path / "lazy_things.py").write_text(
        "from lazy_holder import registry\n\n@registry.register('big')\ndef big(size=1):\n    return ['big'] * size\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register_lazy(("big",), "lazy_things", lambda err: f"unavailable: {type(err).__name__}")
    registry.register_lazy(("broken",), "lazy_missing_module", lambda err: f"unavailable: {type(err).__name__}")
    assert registry.names() == ["big", "broken"] and "big" in registry and not registry.is_user_code("big")
    assert "lazy_things" not in sys.modules
    with pytest.raises(ValueError, match="thing 'big' is already registered"):
        registry.register("big")(lambda: [])  # not from the module that owns the name
    assert registry.create("big", size=2) == ["big", "big"] and "lazy_things" in sys.modules
    imports = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: (imports.append(name), real(name, *a))[1])
    for _ in range(2):
        with pytest.raises(ValueError, match=r"^unavailable: ModuleNotFoundError$"):
            registry.create("broken")
    assert imports == ["lazy_missing_module"]
