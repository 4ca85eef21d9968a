"""Typed configs: one dataclass per component is the schema of its study-file keys and command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping

import pytest

from nas_mtl.cli import CLI_DEFAULTS, add_config_arguments, build_parser, config_from_args
from nas_mtl.config import build_config, field_docs, nested, option, options, to_options
from nas_mtl.search import SEARCH_METHODS, load_search_methods
from nas_mtl.search.adashare import AdaShareConfig
from nas_mtl.search.branching import BranchSearchConfig
from nas_mtl.search.exhaustive import ExhaustiveConfig
from nas_mtl.search.proxy import ProxyConfig
from nas_mtl.study import method_config, parse_study
from nas_mtl.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Inner:
    """Inner settings.

    Args:
        epochs: how long.
        seed: which seed.
        lr: how fast, a long line
            that continues here.
    """

    epochs: int = 3
    seed: int = 0
    lr: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"inner: epochs must be >= 0, got {self.epochs}")


@dataclasses.dataclass(frozen=True)
class Outer:
    """Outer settings.

    Args:
        first, second: the two phases.
        seed: sampler seed.
        names: a list.
        weights: per name.
        mode: a choice.
        flag: a switch.
        limit: maybe a number.
    """

    first: Inner = nested(Inner(epochs=5), only=("epochs", "seed"), rename={"epochs": "first_epochs"})
    second: Inner = nested(Inner(), rename={"epochs": "second_epochs"}, helps={"lr": "second lr"})
    seed: int = 0
    names: tuple[str, ...] = ("a",)
    weights: Mapping[str, float] = option(default_factory=dict)
    mode: str = option("x", choices=("x", "y"), key="kind")
    flag: bool = False
    limit: int | None = None


def test_options_flatten_rename_and_share_keys():
    opts = {o.key: o for o in options(Outer)}
    assert list(opts) == ["first_epochs", "seed", "second_epochs", "lr", "names", "weights", "kind", "flag", "limit"]
    assert opts["seed"].paths == (("first", "seed"), ("second", "seed"), ("seed",))
    assert opts["first_epochs"].default == 5 and opts["second_epochs"].default == 3
    assert opts["lr"].help == "second lr" and opts["first_epochs"].help == "how long."
    assert opts["kind"].choices == ("x", "y")
    assert field_docs(Inner)["lr"] == "how fast, a long line that continues here."
    assert field_docs(Outer)["second"] == "the two phases."


def test_build_sets_every_path_of_a_key_and_round_trips():
    config = build_config(Outer, {"seed": 7, "first_epochs": 2, "names": "b, c", "weights": {"a": 2}, "kind": "y"})
    assert config.first == Inner(epochs=2, seed=7) and config.second.seed == 7 and config.seed == 7
    assert config.names == ("b", "c") and config.weights == {"a": 2.0} and config.mode == "y"
    assert build_config(Outer, to_options(config)) == config
    assert build_config(Outer, {}) == Outer()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"sed": 1},
            "X.sed: unknown option; allowed: first_epochs, flag, kind, limit, lr, names, second_epochs, seed, weights",
        ),
        ({"seed": "1"}, "X.seed: expected an integer, got '1'"),
        ({"seed": True}, "X.seed: expected an integer, got True"),
        ({"lr": "fast"}, "X.lr: expected a number, got 'fast'"),
        ({"flag": 1}, "X.flag: expected true or false, got 1"),
        ({"kind": "z"}, "X.kind: expected one of ['x', 'y'], got 'z'"),
        ({"limit": 1.5}, "X.limit: expected an integer or none, got 1.5"),
        ({"weights": "a"}, "X.weights: expected KEY=VALUE, got 'a'"),
        ({"weights": {"a": "b"}}, "X.weights.a: expected a number, got 'b'"),
        ({"first_epochs": -1}, "X.first_epochs: inner: epochs must be >= 0, got -1"),
    ],
)
def test_errors_are_one_line_naming_the_key(values, message):
    with pytest.raises(ValueError) as err:
        build_config(Outer, values, where=lambda k: f"X.{k}")
    assert str(err.value) == message


def test_command_line_flags_come_from_the_same_fields():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(parser, Outer, "outer")
    text = parser.format_help()
    for flag in ("--first-epochs", "--second-epochs", "--seed", "--kind {x,y}", "--flag, --no-flag", "--limit"):
        assert flag in text
    assert "how long (default: 5)" in text and "second lr (default: 0.1)" in text
    args = parser.parse_args(["--seed", "4", "--weights", "a=1,b=2", "--weights", "c=3", "--flag", "--limit", "none"])
    config = config_from_args(Outer, args)
    assert config.seed == config.first.seed == 4 and config.weights == {"a": 1, "b": 2, "c": 3}
    assert config.flag is True and config.limit is None and config.first.epochs == 5  # not given: the default
    with pytest.raises(ValueError, match=r"^--seed: expected an integer, got 'x'$"):
        config_from_args(Outer, parser.parse_args(["--seed", "x"]))


def test_every_search_method_has_one_schema_for_cli_and_study():
    """For each registered method: every option has help, its flag parses to the value the study key gives,
    and the default config is the dataclass's own."""
    load_search_methods()
    parser = build_parser()
    for name in SEARCH_METHODS.names():
        method = SEARCH_METHODS.create(name)
        assert method_config(name, {}) == method.config()
        for opt in options(method.config):
            assert opt.help, f"{name}.{opt.key} has no help line"
        changed = {o.key: _other_value(o) for o in options(method.config)}
        changed = {k: v for k, v in changed.items() if v is not None}
        from_toml = method_config(name, changed)
        argv = ["search", name, "--data", "shapes", "--space", "resnet_small", "--out", "x"]
        for key, value in changed.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else f"--no-{key.replace('_', '-')}")
            elif isinstance(value, dict):
                argv += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
            else:
                argv += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
        from_cli = config_from_args(method.config, parser.parse_args(argv), CLI_DEFAULTS)
        assert from_cli == from_toml, name
        for key, value in changed.items():
            assert to_options(from_toml)[key] == (list(value) if isinstance(value, tuple) else value), (name, key)


def _other_value(opt):
    """A valid value for ``opt`` other than its default (None where no simple one exists)."""
    if opt.choices is not None:
        return next((c for c in opt.choices if c != opt.default), None)
    if opt.type is bool:
        return not opt.default
    if opt.type is int:
        return opt.default + 1
    if opt.type is float:
        return opt.default / 2 if opt.default else 0.5
    if opt.key in ("objectives", "measure"):
        return None
    if isinstance(opt.default, Mapping):
        return {"left": 2.0}
    return None


def test_a_branch_seed_seeds_the_proxy_and_the_sampler():
    config = method_config("branch", {"seed": 3, "warmstart_epochs": 4, "proxy_epochs": 1, "batch_size": 16})
    assert isinstance(config, BranchSearchConfig) and config.seed == 3
    assert config.proxy.warmstart == TrainConfig(epochs=4, batch_size=16, seed=3)
    assert config.proxy.finetune == TrainConfig(epochs=1, batch_size=16, seed=3)
    assert config.proxy == ProxyConfig(warmstart=config.proxy.warmstart, finetune=config.proxy.finetune)


def test_adashare_takes_the_training_options_it_uses_from_train_config():
    keys = {o.key for o in options(AdaShareConfig)}
    assert {"epochs", "batch_size", "lr", "weight_decay", "seed", "device", "progress"} <= keys
    assert not keys & {"optimizer", "scheduler", "momentum", "on_nonfinite", "eval_batch_size"}
    with pytest.raises(ValueError, match="train.optimizer is not used by AdaShare"):
        AdaShareConfig(train=TrainConfig(optimizer="sgd"))
    assert AdaShareConfig().to_dict()["epochs"] == 30  # the recorded form stays flat


def test_a_check_of_a_nested_field_names_the_key_that_set_it():
    """Both epochs keys end in "epochs": the message names finetune.epochs, so proxy_epochs is to blame."""
    with pytest.raises(ValueError, match=r"^X\.proxy_epochs: proxy config: finetune\.epochs must be >= 1"):
        build_config(ExhaustiveConfig, {"warmstart_epochs": 0, "proxy_epochs": 0}, where=lambda k: f"X.{k}")


def test_a_study_file_error_names_file_table_and_key():
    raw = {"format": "nas_mtl.study/1", "data": {"name": "multidigits"}, "space": {"name": "resnet_small"}}
    with pytest.raises(ValueError, match=r"^s\.toml: search\.adashare\.tau_decay: adashare config: tau_decay must"):
        parse_study({**raw, "search": {"adashare": {"tau_decay": 2.0}}}, source="s.toml")
    with pytest.raises(ValueError, match=r"^s\.toml: train\.lr: expected a number, got 'x'$"):
        parse_study({**raw, "train": {"lr": "x"}}, source="s.toml")
