import io

import pytest
from tqdm import tqdm

import nas_mtl.progress as progress_mod
from nas_mtl import TrainConfig, create_dataset, load_search_space, train_graph
from nas_mtl.progress import (
    PlainProgress,
    TimeLeft,
    estimate_line,
    progress,
    remaining_seconds,
    run_estimates,
    run_kind,
)


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


FINISHED = {"search/branch": [100.0, 120.0], "arms/hard": [10.0, 14.0], "arms/single-task_left": [4.0]}
PENDING = ["search/branch", "search/affinity", "arms/hard", "arms/branch", "arms/single-task_left", "grid/static_a=1"]


def test_run_kind_is_the_search_method_or_the_arm():
    assert run_kind("search/branch/seed3") == "search/branch"
    assert run_kind("arms/single-task_left/mgda/seed0") == "arms/single-task_left"
    assert run_kind("grid/static_a=1.5_b=0.5/seed0") == "grid/static_a=1.5_b=0.5"


def test_each_pending_run_is_estimated_by_its_kind_else_its_family_else_not_at_all():
    # by hand: branch's other seed = mean(100, 120) = 110; affinity, no search of its own = the searches' 110;
    # hard = mean(10, 14) = 12; branch's retraining, none yet = every retraining = (10 + 14 + 4) / 3 (as a grid
    # point: grid runs are retrainings); single-task_left = 4
    retrain = 28 / 3
    assert run_estimates(FINISHED, PENDING) == pytest.approx([110, 110, 12, retrain, 4, retrain])
    assert run_estimates({"search/branch": [50.0]}, ["arms/hard"]) is None  # no retraining timed yet: no guess
    assert run_estimates({}, ["arms/hard"]) is None


def test_remaining_time_divides_by_the_workers_but_is_at_least_the_longest_run():
    total = 110 + 110 + 12 + 28 / 3 + 4 + 28 / 3  # 254.67 s of runs
    assert remaining_seconds(FINISHED, PENDING, 1) == pytest.approx(total)
    assert remaining_seconds(FINISHED, PENDING, 2) == pytest.approx(total / 2)  # 127.3 s
    assert remaining_seconds(FINISHED, PENDING, 4) == pytest.approx(110)  # 63.7 s < one search's 110 s
    assert remaining_seconds(FINISHED, [], 2) == 0.0
    assert remaining_seconds({}, PENDING, 2) is None


def test_estimate_line_says_it_is_an_estimate_and_how_many_run_at_once():
    line = estimate_line(7, 30, 360.0, 2, elapsed=130.0)
    assert line == (
        "study: 7 of 30 runs done in 2.2 min; about 6.0 min left (an estimate from the finished runs' times, 2 at once)"
    )
    assert estimate_line(30, 30, 0.0, 2, elapsed=130.0) == "study: 30 of 30 runs done in 2.2 min"
    assert "no estimate" in estimate_line(1, 3, None, 1)


def test_time_left_counts_only_whole_runs_of_this_session():
    """A run continuing from a checkpoint is done but not timed; the plan can be replaced once searches end."""
    resumed = "arms/hard/equal/seed1"
    clock = TimeLeft(1, partial=lambda key: key == resumed)
    clock.plan(["search/branch/seed0", "arms/hard/equal/seed0", resumed, "arms/branch/equal/seed0"])
    assert "1 of 4 runs done" in clock.finished("search/branch/seed0", 100.0)
    line = clock.finished(resumed, 1.0)  # not a hard run's time: no retraining timed, so no guess from the search's
    assert "2 of 4 runs done" in line and "no estimate of the time left yet" in line
    clock.plan(["arms/hard/equal/seed0", "arms/branch/equal/seed0", "arms/branch/mgda/seed0"])
    assert "3 of 5 runs done" in clock.finished("arms/hard/equal/seed0", 20.0)
    assert clock.durations == {"search/branch": [100.0], "arms/hard": [20.0]}
    line = clock.finished("grid/static/seed0", 30.0)  # a run the plan did not name: counted all the same
    # branch's 2 retrainings, none of their own yet: each the mean of every retraining, (20 + 30) / 2 = 25 s
    assert "4 of 6 runs done" in line and "about 50.0 s left" in line
    assert clock.done == 4 and list(clock.pending) == ["arms/branch/equal/seed0", "arms/branch/mgda/seed0"]


def test_a_stop_swallowed_by_a_finalizer_still_stops_the_next_step():
    """SIGTERM's handler raises KeyboardInterrupt; landing in a finalizer, Python prints "Exception ignored" and goes
    on (CI saw a launcher run its study to the end that way). The stop request makes the next step raise."""
    import gc

    from nas_mtl.cli_study import _interrupt
    from nas_mtl.progress import clear_stop, progress

    class Finalized:
        def __del__(self):
            _interrupt(15, None)

    try:
        Finalized()  # its __del__ runs now; the KeyboardInterrupt is printed and dropped
        gc.collect()
        steps = []
        with pytest.raises(KeyboardInterrupt):
            for i in progress(range(5), "loop", enabled=False):
                steps.append(i)
        assert steps == []
    finally:
        clear_stop()
    assert list(progress(range(3), "loop", enabled=False)) == [0, 1, 2]
