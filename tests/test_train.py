import re
import warnings

import pytest
import torch

from nas_mtl.backbones import create_backbone
from nas_mtl.data.base import MultiTaskData, TensorMultiTaskDataset
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.tasks import ClassificationTask, RegressionTask
from nas_mtl.train import TrainConfig, evaluate, seed_everything, train

TASKS = (ClassificationTask("sign", 2), RegressionTask("level", 1))


def _split(n: int, seed: int) -> TensorMultiTaskDataset:
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(n, generator=g) * 2 - 1
    quadrant = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g) + level.view(n, 1, 1, 1)
    x[quadrant == 1, :, :4, :4] += 2.0  # "sign" = a bright top-left quadrant
    targets = {"sign": quadrant, "level": level.view(n, 1).clone()}
    return TensorMultiTaskDataset(x, targets)


def _data(poison: bool = False) -> MultiTaskData:
    data = MultiTaskData("toy", TASKS, (1, 8, 8), _split(256, 0), _split(128, 1), _split(128, 2))
    if poison:  # a NaN input after the data's own check (as a transform or a device fault could make it): the
        data.train.images[5] = float("nan")  # trainer's guard against non-finite losses is the last line
    return data


def _net(seed: int = 0, tasks=TASKS) -> MultiTaskNetwork:
    seed_everything(seed)
    bb = create_backbone("resnet_small", in_chans=1, input_size=(8, 8), widths=(8,), depths=(1,))
    return MultiTaskNetwork.from_tasks(SharingGraph.hard_sharing([t.name for t in tasks], bb.layer_names), bb, tasks)


TASKS3 = (*TASKS, RegressionTask("opposite", 1))


def _data3() -> MultiTaskData:
    """Small, three tasks ("opposite" = -"level" conflicts): PCGrad's random projection orders matter."""
    splits = [_split(n, seed) for n, seed in ((128, 0), (64, 1), (64, 2))]
    for split in splits:
        split.targets["opposite"] = -split.targets["level"]
    return MultiTaskData("toy3", TASKS3, (1, 8, 8), *splits)


def _train_killed_in_epoch_two(monkeypatch, *args, **kwargs) -> None:
    """``train(*args, **kwargs)`` interrupted (KeyboardInterrupt) at the end of epoch 2, before its checkpoint."""
    import nas_mtl.train as train_mod

    real_evaluate, calls = train_mod.evaluate, {"n": 0}

    def dies_in_epoch_two(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_evaluate(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "evaluate", dies_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            train(*args, **kwargs)


CFG = TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False, device="cpu")


def test_training_learns_both_tasks():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = train(net, _data(), CFG)
    assert result.test["sign"]["accuracy"] > 0.9  # chance is 0.5
    assert result.test["level"]["mae"] < 0.3  # predicting the mean gives 0.5
    assert result.history[-1]["train_loss"]["level"] < result.history[0]["train_loss"]["level"]
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_same_seed_same_result():
    a, b = train(_net(), _data(), CFG), train(_net(), _data(), CFG)
    assert a.test == b.test


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    reference = _net()
    train(reference, _data(), CFG)

    _train_killed_in_epoch_two(monkeypatch, _net(), _data(), CFG, run_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 1

    resumed = _net(seed=123)  # different init: everything must come from the checkpoint
    result = train(resumed, _data(), CFG, run_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for (k, v), (k2, v2) in zip(resumed.state_dict().items(), reference.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)
    assert (tmp_path / "result.json").is_file() and (tmp_path / "graph.json").is_file()


def test_resume_refuses_a_different_config_or_graph(tmp_path):
    train(_net(), _data(), TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu"), run_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"checkpoint was made with other settings: config\.lr \(0\.001 -> 0\.1\); use"
    ):
        train(
            _net(),
            _data(),
            TrainConfig(epochs=1, batch_size=32, lr=0.1, progress=False, device="cpu"),
            run_dir=tmp_path,
        )
    bb = create_backbone("resnet_small", in_chans=1, input_size=(8, 8), widths=(8,), depths=(1,))
    other = MultiTaskNetwork.from_tasks(SharingGraph.independent(["sign", "level"], bb.layer_names), bb, TASKS)
    with pytest.raises(
        ValueError, match=r"other settings: graph\.assignment \(\[\[0, 0\], \[0, 0\]\] -> \[\[0, 1\], \[0, 1\]\]\)"
    ):
        train(
            other,
            _data(),
            TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu"),
            run_dir=tmp_path,
        )


def test_resume_refuses_a_different_balancer(tmp_path):
    from nas_mtl.balancing import create_balancer

    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu")
    train(_net(), _data(), cfg, create_balancer("pcgrad"), run_dir=tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError, match=rf"{ckpt}.*'pcgrad:seed=null'.*'mgda:normalization=none'"):
        train(_net(), _data(), cfg, create_balancer("mgda"), run_dir=tmp_path)
    with pytest.raises(ValueError, match="'pcgrad:seed=3'"):  # the options are part of the identity
        train(_net(), _data(), cfg, create_balancer("pcgrad:seed=3"), run_dir=tmp_path)
    assert train(_net(), _data(), cfg, create_balancer("pcgrad"), run_dir=tmp_path).history
    state = torch.load(ckpt, weights_only=True)
    del state["balancer_spec"]  # a checkpoint that does not say its balancer (or its data) cannot be checked
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match=r"balancer \(None -> 'pcgrad:seed=null'\)"):
        train(_net(), _data(), cfg, create_balancer("pcgrad"), run_dir=tmp_path)


def test_nan_loss_raises_before_touching_weights(tmp_path):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    cfg = TrainConfig(epochs=1, batch_size=256, progress=False, device="cpu")  # one step: the poisoned batch
    with pytest.raises(FloatingPointError, match="task.*'level'.*epoch 1 step 1"):
        train(net, _data(poison=True), cfg, run_dir=tmp_path)
    for k, v in before.items():
        if "running" not in k and "num_batches" not in k:  # BN statistics move in the forward pass
            torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)


def test_nan_loss_skip_mode_warns_and_keeps_weights_finite():
    net = _net()
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu", on_nonfinite="skip")
    with pytest.warns(UserWarning, match="skipping step"):
        result = train(net, _data(poison=True), cfg)
    assert result.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": float("nan")}, "lr"),
        ({"optimizer": "lion"}, r"optimizer must be one of \['adam', 'adamw', 'sgd'\]"),
        ({"device": "tpu"}, "device"),
        ({"on_nonfinite": "ignore"}, "on_nonfinite"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"epoch": 3})


def test_dataset_network_mismatch_errors():
    bb = create_backbone("resnet_small", in_chans=3, input_size=(8, 8), widths=(8,), depths=(1,))
    net = MultiTaskNetwork.from_tasks(SharingGraph.hard_sharing(["sign", "level"], bb.layer_names), bb, TASKS)
    with pytest.raises(ValueError, match=r"inputs are \(1, 8, 8\) but the network expects \(3, 8, 8\)"):
        train(net, _data(), CFG)


def test_batch_larger_than_the_training_set_is_refused():
    with pytest.raises(ValueError, match=r"batch_size: 512 is larger than the 256 training samples"):
        train(_net(), _data(), TrainConfig(epochs=1, batch_size=512, progress=False, device="cpu"))


def test_balancer_hook_is_removed_when_training_stops_with_an_error():
    from nas_mtl.balancing import create_balancer

    net = _net()
    balancer = create_balancer("mgda-ub")
    with pytest.raises(FloatingPointError):
        train(net, _data(poison=True), CFG, balancer)
    assert all(not m._forward_hooks for m in net.modules())


def test_skipped_step_leaves_batchnorm_statistics_untouched():
    data = _data()
    data.train.images[5].fill_(float("inf"))  # one bad image: its batch's losses and BN statistics are non-finite
    net = _net()
    snapshots = []  # every buffer (running statistics and num_batches_tracked) before each forward pass
    net.register_forward_pre_hook(lambda m, args: snapshots.append([b.clone() for b in m.buffers()]))
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu", on_nonfinite="skip")
    with pytest.warns(UserWarning, match="skipping step") as caught:
        result = train(net, data, cfg)
    assert result.skipped_steps == 1
    step = int(re.search(r"epoch 1 step (\d+)", str(caught[0].message)).group(1))
    before, after = snapshots[step - 1], snapshots[step]  # the next forward: a training step or evaluation
    assert len(before) == len(after) > 0
    for old, new in zip(before, after):
        assert torch.equal(old, new)
    kept = 1 if step != 1 else 2  # a step that was taken: its forward pass does move them
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[kept - 1], snapshots[kept]))
    assert all(torch.isfinite(b).all() for b in net.buffers())
    assert all(torch.isfinite(torch.tensor(m)).all() for d in result.test.values() for m in d.values())


def test_checkpoint_keeps_the_balancer_state(tmp_path):
    from nas_mtl.balancing import create_balancer

    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu")
    balancer = create_balancer("pcgrad")
    train(_net(), _data(), cfg, balancer, run_dir=tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["balancer"]
    assert torch.equal(saved["generator"], balancer.state_dict()["generator"])


def test_killed_pcgrad_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """The checkpointed projection-order generator: a resumed PCGrad run continues the same orders."""
    from nas_mtl.balancing import PCGrad

    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, progress=False, device="cpu")
    reference = _net(tasks=TASKS3)
    train(reference, _data3(), cfg, PCGrad())
    _train_killed_in_epoch_two(monkeypatch, _net(tasks=TASKS3), _data3(), cfg, PCGrad(), run_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = _net(seed=123, tasks=TASKS3)  # different init and torch seed: everything must come from the checkpoint
    result = train(resumed, _data3(), cfg, PCGrad(), run_dir=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for (k, v), (k2, v2) in zip(resumed.state_dict().items(), reference.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)


def test_resuming_with_another_thread_count_warns_and_names_the_change(tmp_path, monkeypatch):
    """A checkpoint records its environment; resuming training on another thread count says its numbers may
    differ from an uninterrupted run (reading back a finished run does not)."""
    _train_killed_in_epoch_two(monkeypatch, _net(), _data(), CFG, run_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["env"]["threads"] == torch.get_num_threads()
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    try:
        torch.set_num_threads(other)
        with pytest.warns(UserWarning, match=rf"resuming in another environment \(threads {before} -> {other}\)"):
            result = train(_net(), _data(), CFG, run_dir=tmp_path)
        assert result.env["threads"] == other
    finally:
        torch.set_num_threads(before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finished: read back and evaluated, whatever the threads
        train(_net(), _data(), CFG, run_dir=tmp_path)


def test_epoch_hooks_see_the_end_of_epoch_network_and_extend_the_history():
    from nas_mtl.train import evaluate

    data, seen = _data(), []

    def hook(ctx):
        seen.append(evaluate(ctx.network, data.val, TASKS, device="cpu"))
        assert ctx.record["val"] == seen[-1] and ctx.record["epoch"] == ctx.epoch
        return {"mark": 10 * ctx.epoch}

    result = train(_net(), data, CFG, epoch_hooks=[hook])
    assert [h["mark"] for h in result.history] == [10, 20, 30] and len(seen) == 3
    assert result.val == seen[-1]  # the last epoch's validation is the result's


def test_trainer_parts_checkpoint_extra_state_and_resume_bitwise(tmp_path):
    """restore / run_epoch / save by hand, with a state of the caller's in the checkpoint: stopping after one
    epoch and resuming in a new Trainer gives bitwise the weights of train() run straight through."""
    from nas_mtl.train import Trainer

    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    data, counter = _data(), Counter()
    first = Trainer(_net(), data, CFG, run_dir=tmp_path / "run", state={"counter": counter})
    assert first.restore() is False
    first.prepare()
    first.run_epoch()
    counter.n = 7
    first.save()
    first.close()
    again = Trainer(_net(1), data, CFG, run_dir=tmp_path / "run", state={"counter": Counter()})
    assert again.restore() is True and again.epoch == 1
    restored = again.state["counter"]
    assert restored.n == 7
    again.prepare()
    while again.epoch < CFG.epochs:
        again.run_epoch()
        again.save()
    again.close()
    resumed = again.finish()
    straight_net = _net()
    straight = train(straight_net, data, CFG)
    assert resumed.test == straight.test
    for a, b in zip(again.network.state_dict().values(), straight_net.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_without_the_callers_state_is_refused_by_name(tmp_path):
    from nas_mtl.train import Trainer

    train(_net(), _data(), CFG, run_dir=tmp_path)

    class Stateful:
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(ValueError, match=r"checkpoint\.pt: no 'search' state in this checkpoint; use a new run"):
        Trainer(_net(), _data(), CFG, run_dir=tmp_path, state={"search": Stateful()}).restore()


def test_diverging_training_is_reported_and_normal_training_is_not():
    """Adam at lr 1e6 ends at huge losses and chance-level metrics; it used to finish without a word."""
    import dataclasses

    with pytest.warns(UserWarning, match=r"task '\w+' mean training loss .* training diverges \(learning rate"):
        train(_net(), _data(), dataclasses.replace(CFG, lr=1e6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(_net(), _data(), CFG)


def test_validation_losses_and_curves_csv_hold_each_epochs_numbers(tmp_path):
    """evaluate(losses=) gives the mean loss over the whole set (batch means weighted by their labelled samples);
    curves.csv has one row per epoch and task with the history's numbers."""
    import csv

    import torch.nn.functional as F

    net, data = _net(), _data()
    losses = {}
    evaluate(net, data.val, TASKS, batch_size=48, losses=losses)  # 128 samples: batches of 48, 48, 32
    net.eval()
    with torch.no_grad():
        out = net(data.val.images)
    net.train()
    assert losses["sign"] == pytest.approx(float(F.cross_entropy(out["sign"], data.val.targets["sign"])), rel=1e-5)
    assert losses["level"] == pytest.approx(float(F.mse_loss(out["level"], data.val.targets["level"])), rel=1e-5)
    result = train(net, data, CFG, run_dir=tmp_path)
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert [(r["epoch"], r["task"]) for r in rows] == [(str(e), t) for e in (1, 2, 3) for t in ("sign", "level")]
    for r in rows:
        h = result.history[int(r["epoch"]) - 1]
        assert float(r["train_loss"]) == h["train_loss"][r["task"]] and float(r["val_loss"]) == h["val_loss"][r["task"]]
        assert float(r["val_metric"]) == h["val"][r["task"]][r["metric"]]
    assert {(r["task"], r["metric"]) for r in rows} == {(t.name, t.primary_metric) for t in TASKS}
