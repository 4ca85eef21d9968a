"""Contracts every registered search method keeps: its config survives the trip through the options dict (the
study file's and the CLI's form of it), its :class:`SearchResult` is saved and read back equal, and run again in
the same folder with the same config it resumes from what the folder holds and returns the same graph.

Each method runs once, tiny (toy 8 x 8 images, a three-block ResNet of width 4, one or two epochs of a few batches),
on CPU; the runs are shared by the tests through a module fixture.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from helpers import TINY_ADASHARE, TINY_PROXY, TOY_TASKS, tiny_space, toy_data, toy_split

from nas_mtl.config import build_config, options, to_options
from nas_mtl.search import SEARCH_METHODS, SearchResult, load_search_methods

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore:adashare. every learned select probability:UserWarning")

METHODS = load_search_methods()
TINY: dict[str, dict[str, Any]] = {
    "adashare": {**TINY_ADASHARE, "num_samples": 2, "seed": 3},
    "affinity": {"measure": ["lookahead", "rsa"], "epochs": 1, "batch_size": 32, "probe_size": 8, "plots": False},
    "branch": {**TINY_PROXY, "seed": 3, "n_trials": 3, "sampler": "tpe"},
    "exhaustive": {**TINY_PROXY, "seed": 3},
    "selection": {"epochs": 1, "batch_size": 32, "budget": 1.5, "random_draws": 20},
}
"""Each registered method's options for a run of about a second (a new method adds its own here)."""


def _config(method: str) -> Any:
    cls = SEARCH_METHODS.create(method).config
    return build_config(cls, {**TINY[method], "device": "cpu"})


@pytest.fixture(scope="module")
def setting():
    """Toy data (two tasks) and a space of three blocks (stem, s0.b0, s0.b1; all branchable, the last two
    skippable)."""
    return toy_data("toy", TOY_TASKS, toy_split), tiny_space(widths=(4,), depths=(2,))


@pytest.fixture(scope="module")
def runs(setting, tmp_path_factory) -> dict[str, tuple[SearchResult, Path]]:
    """Each method's tiny run, saved in its run folder: ``{method: (result, run folder)}``."""
    data, space = setting
    out = {}
    for method in METHODS:
        run_dir = tmp_path_factory.mktemp(method)
        search = SEARCH_METHODS.create(method)
        result = search.run(data, space, _config(method), run_dir)
        result.save(run_dir)
        out[method] = result, run_dir
    return out


def _text(value: Any) -> str:
    """``value`` as typed on the command line: a list comma-separated, a number or a boolean in JSON."""
    if isinstance(value, str):
        return value
    return ",".join(value) if isinstance(value, list) else json.dumps(value)


def _json(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def test_every_registered_method_has_a_tiny_run_here():
    assert sorted(TINY) == sorted(METHODS) == sorted(SEARCH_METHODS.names())


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("method", METHODS)
def test_config_round_trips_through_its_options(method):
    """config -> options dict -> config, for the defaults and for the tiny run's settings; also through JSON (a
    study record) and as command-line text, which gives every option as a string."""
    cls = SEARCH_METHODS.create(method).config
    for config in (cls(), _config(method)):
        values = to_options(config)
        assert list(values) == [o.key for o in options(cls)]  # every option, once, in field order
        assert build_config(cls, values) == config
        assert build_config(cls, _json(values)) == config
        assert to_options(build_config(cls, values)) == values
    text = {k: _text(v) for k, v in {**TINY[method], "device": "cpu"}.items()}
    assert build_config(cls, text, text=True) == _config(method)


@pytest.mark.parametrize("method", METHODS)
def test_the_tiny_config_passes_the_methods_check(method, setting):
    search = SEARCH_METHODS.create(method)
    if search.check is not None:
        search.check(*setting, _config(method))
    assert search.device(_config(method)) == "cpu"


# ---------------------------------------------------------------------- result
@pytest.mark.parametrize("method", METHODS)
def test_the_result_is_saved_and_read_back_equal(method, runs, setting):
    result, run_dir = runs[method]
    data, space = setting
    assert result.method == method
    space.check_graph(result.graph)
    assert result.graph.tasks == data.task_names
    loaded = SearchResult.load(run_dir)
    assert loaded == dataclasses.replace(result, candidates=(), info=_json(result.info))  # candidates: their files
    assert loaded.graph.to_dict() == result.graph.to_dict()  # meta included
    saved = sorted((run_dir / "candidates").glob("*.json")) if result.candidates else []
    assert [json.loads(p.read_text()) for p in saved] == [_json(g.to_dict()) for g in result.candidates]


@pytest.mark.parametrize("method", METHODS)
def test_running_again_in_the_same_folder_resumes_to_the_same_graph(method, runs, setting, monkeypatch):
    """The second run reads back what the first left (checkpoint, score table, storage, cached measurements),
    computes no gradient (it trains nothing again), and returns the same graph and candidates, meta included."""
    result, run_dir = runs[method]

    def refuse(name):  # one function per attribute: torch refuses one object registered under two names
        def no_training(*args, **kwargs):
            raise AssertionError(f"{method}: run again on a finished run folder, it called torch.autograd.{name}")

        return no_training

    monkeypatch.setattr(torch.autograd, "backward", refuse("backward"))  # Tensor.backward calls it
    monkeypatch.setattr(torch.autograd, "grad", refuse("grad"))
    again = SEARCH_METHODS.create(method).run(*setting, _config(method), run_dir)
    assert again.method == result.method
    assert again.graph.to_dict() == result.graph.to_dict()
    assert [g.to_dict() for g in again.candidates] == [g.to_dict() for g in result.candidates]
