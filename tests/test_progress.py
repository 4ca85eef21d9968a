import io

import pytest
from tqdm import tqdm

import nas_mtl.progress as progress_mod
from nas_mtl import TrainConfig, create_dataset, load_search_space, train_graph
from nas_mtl.progress import PlainProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_file_gets_plain_lines():
    assert isinstance(progress(range(3), "x", True, stream=Terminal()), tqdm)
    log = io.StringIO()
    bar = progress(range(4), "train 1/2", True, total=4, stream=log)
    assert isinstance(bar, PlainProgress)
    for i in bar:
        bar.set_postfix(loss=f"{i:.3f}")
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train 1/2: 4/4 steps, ") and lines[0].endswith("loss=3.000")
    assert "\r" not in log.getvalue()


def test_disabled_progress_prints_nothing_anywhere():
    for stream in (io.StringIO(), Terminal()):
        items = progress(range(3), "x", False, stream=stream)
        items.set_postfix(loss=1)
        assert list(items) == [0, 1, 2] and stream.getvalue() == ""


def test_a_long_loop_prints_a_line_every_interval(monkeypatch):
    clock = iter(range(0, 1000, 25))  # each step takes 25 s
    monkeypatch.setattr(progress_mod, "monotonic", lambda: next(clock))
    log = io.StringIO()
    assert list(progress(range(6), "epoch", True, stream=log)) == list(range(6))
    # steps end at 25, 50, ... 150 s: a line when 60 s passed since the last one (75 s, 150 s) and one at the end
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == [
        "epoch: 3 steps",
        "epoch: 6 steps",
        "epoch: 6 steps",
    ]


@pytest.fixture(scope="module")
def tiny():
    data = create_dataset("multidigits", n_train=64, n_val=32, n_test=32, size=16)
    return data, load_search_space("resnet_small", input_shape=data.input_shape)


def test_the_python_api_prints_nothing_unless_asked(tiny, capfd):
    data, space = tiny
    graph = space.hard_sharing(data.task_names)
    train_graph(graph, data, space, TrainConfig(epochs=1, batch_size=32))
    assert capfd.readouterr().err == ""
    train_graph(graph, data, space, TrainConfig(epochs=1, batch_size=32, progress=True))
    err = capfd.readouterr().err  # captured output is not a terminal: plain lines
    assert err.startswith("train 1/1: 2/2 steps, ") and "loss=" in err and "\r" not in err
