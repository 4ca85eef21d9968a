"""CLI conventions: --help everywhere, exit codes, one-line errors naming the bad field or file."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from nas_mtl.cli import EXIT_USER_ERROR, build_parser, main
from nas_mtl.graph import SharingGraph


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if a.dest == "method"]
        out += [[name, m] for m in nested[0].choices] if nested else [[name]]
    return out


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: nas-mtl {' '.join(argv)}")


@pytest.mark.parametrize(
    "argv", [c for c in _commands() if c[0] in ("search", "train", "baselines", "demo")], ids=" ".join
)
def test_training_and_search_commands_take_device_and_seed(argv, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = capsys.readouterr().out
    assert "--device" in text and "--seed" in text


def _error(argv, capsys) -> str:
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas-mtl: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_graph_json_names_file_and_field(tmp_path, capsys):
    good = SharingGraph.hard_sharing(["left", "right"], ["a", "b"]).to_dict()
    bad = {**good, "assignment": [[0, 0], [0]]}
    path = tmp_path / "g.json"
    path.write_text(json.dumps(bad))
    err = _error(["graph", str(path)], capsys)
    assert str(path) in err and "assignment" in err


def test_graph_for_another_space_is_refused(tmp_path, capsys):
    path = tmp_path / "g.json"
    SharingGraph.hard_sharing(["left", "right"], ["a", "b"]).save(path)
    err = _error(["graph", str(path), "--space", "resnet_small"], capsys)
    assert "layers" in err


def test_unknown_names_and_missing_files(tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert "nodata" in _error([*base, "--data", "nodata", "--space", "resnet_small"], capsys)
    assert "nospace" in _error([*base, "--data", "multidigits", "--space", "nospace"], capsys)
    assert "missing.json" in _error(
        [*base, "--data", "multidigits", "--space", "resnet_small", "--graph", str(tmp_path / "missing.json")], capsys
    )
    assert "magic" in _error([*base, "--data", "multidigits", "--space", "resnet_small", "--balancer", "magic"], capsys)
    assert "nope.toml" in _error(["study", str(tmp_path / "nope.toml")], capsys)
    study = tmp_path / "s.toml"
    study.write_text(
        'format = "nas_mtl.study/1"\n[data]\nname = "multidigits"\n[space]\nname = "resnet_small"\n'
        "[search.branch]\nn_trials = 'many'\n"
    )
    err = _error(["study", str(study)], capsys)
    assert f"{study}: search.branch.n_trials: expected an integer, got 'many'" in err


def test_data_args_are_key_value_pairs_read_as_json(tmp_path, capsys):
    from nas_mtl.cli import UserError, parse_key_values

    assert parse_key_values(["n_train=32", "root=/tmp/x", "flag=true", "size=[2, 3]"], "--data-arg") == {
        "n_train": 32,
        "root": "/tmp/x",
        "flag": True,
        "size": [2, 3],
    }
    with pytest.raises(UserError, match=r"--data-arg: expected KEY=VALUE, got 'n_train'"):
        parse_key_values(["n_train"], "--data-arg")
    base = ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--space", "resnet_small"]
    assert "--data-arg" in _error([*base, "--data", "multidigits", "--data-arg", "=3"], capsys)


def test_unknown_backbone_in_a_space_file(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text('format = "nas_mtl.search_space/1"\n[backbone]\nname = "resnet_huge"\n')
    err = _error(["train", "--data", "multidigits", "--space", str(space), "--out", str(tmp_path / "r")], capsys)
    assert "resnet_huge" in err and "backbone" in err


def test_debug_env_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nas_mtl.cli", "study", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        env={**os.environ, "NAS_MTL_DEBUG": "1"},
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_threads_option_sets_torch_threads(capsys):
    import torch

    before = torch.get_num_threads()  # $NAS_MTL_TEST_THREADS (conftest)
    other = 1 if before > 1 else 2  # a change, whatever the suite runs at
    try:
        assert main(["--threads", str(other), "list"]) == 0
        assert torch.get_num_threads() == other
        assert main(["--threads", "0", "list"]) == EXIT_USER_ERROR
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_list_documents_every_balancer_with_its_paper_and_cost(capsys):
    from nas_mtl.balancing import list_balancers

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    for name in list_balancers():
        authors = r"[A-Z][\w-]+(?:, [A-Z][\w-]+)* (?:et al\.|& [A-Z]\w+)"  # "Yu et al.", "Kendall, Gal & Cipolla"
        assert re.search(rf"\((?:{authors}|.*Sener & Koltun).*20\d\d", lines[name]), lines[name]
        assert "backward pass" in lines[name]


def _parsers(parser, path=("nas-mtl",)):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_page_is_plain_text_and_every_argument_has_help(capsys):
    """The --help walk: no reStructuredText (double back-quotes, :role:`...`) in any page or in `nas-mtl list`,
    and no argument without a help line."""
    import argparse
    import re

    from nas_mtl.cli import build_parser, main

    rst = re.compile(r"``|:[a-z]+:`")
    pages = list(_parsers(build_parser()))
    assert len(pages) >= 20  # every command, search method and data sub-command
    for path, parser in pages:
        page = parser.format_help()
        assert not rst.search(page), f"{' '.join(path)} --help: {rst.search(page).group()!r}"
        bare = [
            a.option_strings or a.dest
            for a in parser._actions
            if not a.help and not isinstance(a, argparse._HelpAction)
        ]
        assert not bare, f"{' '.join(path)}: arguments without help: {bare}"
    assert main(["list"]) == 0
    assert not rst.search(capsys.readouterr().out)


def test_global_options_go_before_or_after_the_command_and_version_prints(capsys):
    import torch

    from nas_mtl.cli import main

    before = torch.get_num_threads()
    try:
        for argv in (["list", "--threads", "1"], ["--threads", "1", "list"]):
            torch.set_num_threads(2)
            assert main(argv) == 0 and torch.get_num_threads() == 1
        assert main(["list", "--threads", "0"]) == 2
        assert "--threads: expected a positive integer, got 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("nas-mtl ")


def test_device_cuda_n_is_one_grammar_for_every_command(monkeypatch, capsys, tmp_path):
    """``--device cuda:N`` (or ``--device=cuda:N``) on any command shows the process GPU N alone and runs on
    ``cuda``; without CUDA that is the one-line "no CUDA device" error, and a malformed index is refused."""
    from nas_mtl.cli import main

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    argv = [
        "train",
        "--data",
        "multidigits",
        "--space",
        "resnet_small",
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
    ]
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda:3"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
        assert not (tmp_path / "run").exists()  # refused before a run folder was made
    assert main([*argv, "--device=cuda:x"]) == 2
    assert "--device: expected one of ['auto', 'cpu', 'cuda'] or cuda:N, got 'cuda:x'" in capsys.readouterr().err
