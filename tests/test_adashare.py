import copy
import dataclasses
import json
import warnings

import pytest
import torch
from timm.layers.norm_act import BatchNormAct2d

from nas_mtl.backbones import create_backbone
from nas_mtl.cli import main
from nas_mtl.config import build_config
from nas_mtl.data import create_dataset
from nas_mtl.data.base import MultiTaskData, TensorMultiTaskDataset
from nas_mtl.graph import SKIP, SharingGraph
from nas_mtl.network import MultiTaskNetwork, StreamBatchNorm2d, stream_norms
from nas_mtl.search import adashare
from nas_mtl.search.adashare import (
    AdaShareConfig,
    AdaShareSupernet,
    adashare_search,
    depth_weights,
    policy_regularizer,
    sharing_loss,
)
from nas_mtl.search.adashare_training import AdaShareSearch
from nas_mtl.space import SearchSpace, load_search_space
from nas_mtl.tasks import ClassificationTask, RegressionTask, labelled_losses
from nas_mtl.train import seed_everything

TASKS = (ClassificationTask("sign", 2), RegressionTask("level", 1), ClassificationTask("parity", 2))


def _split(n: int, seed: int) -> TensorMultiTaskDataset:
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(n, generator=g) * 2 - 1
    quadrant = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g) + level.view(n, 1, 1, 1)
    x[quadrant == 1, :, :4, :4] += 2.0
    targets = {"sign": quadrant, "level": level.view(n, 1).clone(), "parity": (level > 0).long()}
    return TensorMultiTaskDataset(x, targets)


@pytest.fixture(scope="module")
def data(seed) -> MultiTaskData:
    train, val, test = (_split(n, 3 * seed + k) for k, n in enumerate((64, 32, 32)))
    return MultiTaskData("toy", TASKS, (1, 8, 8), train, val, test)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    # stem, s0.b0, s0.b1, s1.b0, s1.b1: three skippable blocks (s1.b0 downsamples)
    bb = create_backbone("resnet_small", in_chans=1, input_size=(8, 8), widths=(4, 8), depths=(2, 2))
    return SearchSpace("toy", bb, bb.layer_names, bb.skippable)


def _config(**kw) -> AdaShareConfig:
    base = dict(
        epochs=2,
        warmup_epochs=0,
        batch_size=16,
        weight_steps=2,
        policy_steps=4,
        curriculum=False,
        progress=False,
        device="cpu",
    )
    return build_config(AdaShareConfig, {**base, **kw})


def _supernet(space: SearchSpace, seed: int = 0) -> AdaShareSupernet:
    seed_everything(seed)
    layers = [i for i, n in enumerate(space.layers) if n in space.skippable]
    return AdaShareSupernet(space.backbone, TASKS, layers)


def test_sparsity_term_drives_select_probability_down(data, space, seed):
    """Measured for data and training seeds 0-4 at 1 and 2 threads: λ_sparsity alone leaves every p_select
    <= 0.119 (asserted < 0.3) and skips 5-8 blocks; the task losses alone lift some block to >= 0.88
    (asserted > 0.8); both, with λ_sparsity = 5, keep all <= 0.12 (asserted < 0.35)."""
    off = {t.name: 0.0 for t in TASKS}  # task losses switched off: only the regulariser moves the policy
    fast = dict(sharing=0.0, policy_steps=20, policy_lr=0.03, seed=seed)
    sparse = adashare_search(data, space, _config(sparsity=1.0, task_weights=off, **fast))
    prob = torch.tensor(sparse.info["select_prob"])
    assert prob.shape == (3, 3) and (prob < 0.3).all(), prob  # from 0.5
    assert sum(sparse.graph.path(t).count(-1) for t in sparse.graph.tasks) > 0  # some block is skipped
    free = adashare_search(data, space, _config(sparsity=0.0, task_weights=off, **fast))
    torch.testing.assert_close(torch.tensor(free.info["select_prob"]), torch.full((3, 3), 0.5))
    # the task losses alone push some blocks up; with them on, a large λ_sparsity still wins
    alone = adashare_search(data, space, _config(sparsity=0.0, **fast))
    assert (torch.tensor(alone.info["select_prob"]) > 0.8).any()
    both = adashare_search(data, space, _config(sparsity=5.0, **fast))
    assert (torch.tensor(both.info["select_prob"]) < 0.35).all()


def test_sharing_term_pulls_task_decisions_together(space):
    def gap_after(sharing: float, steps: int = 150) -> tuple[float, float]:
        net = _supernet(space)
        with torch.no_grad():  # task 0 selects every block (p ~ 0.95), task 1 skips them (p ~ 0.05)
            net.logits.copy_(torch.tensor([[[1.5, -1.5], [-1.5, 1.5], [0.0, 0.0]]]).expand(3, 3, 2))
        cfg = AdaShareConfig(sparsity=0.0, sharing=sharing, policy_weight_decay=0.0)
        opt = torch.optim.Adam([net.logits], lr=cfg.policy_lr)
        before = net.select_prob()
        for _ in range(steps):
            opt.zero_grad()
            policy_regularizer(net.logits, 3, cfg).backward()
            opt.step()
        after = net.select_prob()
        return float((before[:, 0] - before[:, 1]).abs().max()), float((after[:, 0] - after[:, 1]).abs().max())

    before, pulled = gap_after(sharing=0.05)
    assert before > 0.9 and pulled < 0.05  # no data, no sampling: deterministic (0.905 -> 1.5e-6)
    assert gap_after(sharing=0.0)[1] == before  # a zero gradient: Adam's steps are exactly 0


def _mean_gap(prob: torch.Tensor) -> float:
    """Mean |p_select[l, t] - p_select[l, t']| over blocks and task pairs."""
    pairs = [(i, j) for i in range(prob.shape[1]) for j in range(i + 1, prob.shape[1])]
    return float(sum((prob[:, i] - prob[:, j]).abs().mean() for i, j in pairs) / len(pairs))


def test_sharing_term_pulls_task_decisions_together_in_the_search(data, space, seed):
    """Full search loop, task losses on: from disagreeing policies, λ_sharing makes the tasks agree.

    Measured for data and training seeds 0-4 at 1 and 2 threads: the mean gap goes from 0.603 to <= 0.052
    with λ_sharing (asserted < 0.08) and stays >= 0.43 without (asserted > 0.25)."""

    def gaps(sharing: float) -> tuple[float, float]:
        search = AdaShareSearch(
            data, space, _config(sparsity=0.0, sharing=sharing, policy_lr=0.03, policy_steps=30, seed=seed)
        )
        with torch.no_grad():  # task 0 selects every block (p ~ 0.95), task 1 skips them, task 2 undecided
            search.net.logits.copy_(torch.tensor([[1.5, -1.5], [-1.5, 1.5], [0.0, 0.0]]).expand(3, 3, 2))
        before = _mean_gap(search.net.select_prob())
        while search.epoch < search.total_epochs:
            search.run_epoch()
        return before, _mean_gap(search.net.select_prob())

    before, pulled = gaps(sharing=0.05)
    _, free = gaps(sharing=0.0)
    assert before > 0.6 and pulled < 0.08 and free > 0.25, (before, pulled, free)


def test_sharing_weights_decrease_with_depth():
    torch.testing.assert_close(depth_weights(4), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]] * 4, requires_grad=True)  # same gap at every block
    sharing_loss(logits, depth_weights(4)).backward()
    torch.testing.assert_close(logits.grad[:, 0, 0], depth_weights(4))  # early blocks pulled hardest


def test_curriculum_gives_gradient_only_to_the_last_blocks(data, space):
    cfg = AdaShareConfig(sparsity=0.5, sharing=0.5)
    x, y = data.train.batch(torch.arange(16))
    for active in (1, 2, 3):
        net = _supernet(space)
        gates = net.sample_gates(2.0, active, False, torch.Generator().manual_seed(0), grad=True)
        assert [g is not None for g in gates] == [layer in net.policy_layers[3 - active :] for layer in range(5)]
        loss = sum(labelled_losses(net(x, gates), y, TASKS)[0].values()) + policy_regularizer(net.logits, active, cfg)
        loss.backward()
        grad = net.logits.grad.abs().sum(dim=(1, 2))
        assert (grad[: 3 - active] == 0).all() and (grad[3 - active :] > 0).all(), (active, grad)
    # and in the search loop: round r learns the last r blocks, the earlier logits stay at their init
    result = adashare_search(data, space, _config(epochs=3, curriculum=True, curriculum_speed=1))
    for record in result.info["history"]:
        prob = torch.tensor(record["select_prob"])
        fixed = 3 - record["active_blocks"]
        assert (prob[:fixed] == 0.5).all() and (prob[fixed:] != 0.5).any()
    assert [r["active_blocks"] for r in result.info["history"]] == [1, 2, 3]


def test_final_policy_selects_blocks_the_search_never_learned(data, space, seed):
    """Curriculum still at the last block: the two earlier blocks (p = 0.5, never learned) must stay selected.

    Measured for seeds 0-4 at 1 and 2 threads: 8 draws give 4-5 distinct policies, 3-5 of which skip a task
    in the learned block (p_select ~0.47; asserted: at least one)."""
    cfg = _config(epochs=2, curriculum=True, curriculum_speed=5, num_samples=8, seed=seed)
    result = adashare_search(data, space, cfg)
    prob = torch.tensor(result.info["select_prob"])
    assert (prob[:2] == 0.5).all() and (prob[2] != 0.5).all()
    policies = [p["select"] for p in result.info["policies"]]
    assert len(policies) > 1 and all(all(row) for p in policies for row in p[:2]), policies
    assert any(not all(p[2]) for p in policies)  # the learned block is sampled
    # the argmax policy comes with the samples: unlearned blocks selected, the learned one by p >= 0.5
    argmax = SharingGraph.from_dict(result.info["argmax_graph"])
    select = [[copy != SKIP for copy in argmax.assignment[space.layers.index(b)]] for b in result.info["blocks"]]
    assert select == (prob >= 0.5).tolist()
    # argmax of equal logits selects (the reference's argmax)
    off = {t.name: 0.0 for t in TASKS}
    flat = adashare_search(data, space, _config(sparsity=0.0, sharing=0.0, task_weights=off, final="argmax"))
    assert flat.info["policies"][0]["select"] == [[True] * 3] * 3


def test_policy_scoring_uses_batch_statistics_and_keeps_running_ones(data, space):
    search = AdaShareSearch(data, space, _config(epochs=1))
    search.run_epoch()
    before = [b.clone() for b in search.net.buffers()]
    select = [[True, False, True]] * 3
    score = search.val_loss(select)
    for b, old in zip(search.net.buffers(), before):
        torch.testing.assert_close(b, old, rtol=0, atol=0)
    search.net.train()  # the same loss by hand: batch statistics, every sample of the split in one batch
    x, y = data.val.batch(torch.arange(len(data.val)))
    with torch.no_grad():
        expected = sum(labelled_losses(search.net(x, search.net.fixed_gates(select)), y, TASKS)[0].values())
    # the same float32 forward; only the sum of the three positive task losses may round differently
    assert score == pytest.approx(float(expected), rel=len(TASKS) * torch.finfo(torch.float32).eps)


def _policy_network(net: AdaShareSupernet, space: SearchSpace, select) -> MultiTaskNetwork:
    rows = {layer: row for layer, row in zip(net.policy_layers, select)}
    policy = [rows.get(i, [True] * len(TASKS)) for i in range(len(space.layers))]
    graph = SharingGraph.from_policy(net.tasks, space.layers, policy, space.skippable)
    ref = MultiTaskNetwork.from_tasks(graph, space.backbone, TASKS).to(net.logits.dtype)
    for layer in range(len(space.layers)):
        if graph.copies(layer):
            ref.blocks[layer][0].load_state_dict(net.blocks[layer].state_dict())
    ref.heads.load_state_dict(net.heads.state_dict())
    return ref


@pytest.mark.parametrize("select", [[[1, 1, 0], [0, 1, 0], [1, 1, 1]], [[0, 0, 0], [1, 0, 1], [0, 1, 1]]])
def test_supernet_with_hard_gates_is_the_multitask_network(data, space, select):
    """In float64 (an exactness check: the supernet sums in another order than the plain network)."""
    x, _ = data.train.batch(torch.arange(16))
    x = x.double()
    for mode in ("eval", "train"):
        net = _supernet(space).double()
        ref = _policy_network(net, space, select)
        net.train(mode == "train")
        ref.train(mode == "train")
        out, expected = net(x, net.fixed_gates(select)), ref(x)
        for t in net.tasks:
            torch.testing.assert_close(out[t], expected[t])
        if mode == "train":  # same weight gradients (the trie shares prefixes, BatchNorm per stream)
            sum(o.square().sum() for o in out.values()).backward()
            sum(o.square().sum() for o in expected.values()).backward()
            layer = net.policy_layers[-1]
            if ref.graph.copies(layer):
                for p, q in zip(net.blocks[layer].parameters(), ref.blocks[layer][0].parameters()):
                    torch.testing.assert_close(p.grad, q.grad)
        # one stream per task (the policy-phase path: hard values whose gradient is kept) gives the same
        gates = [g if g is None else g.clone().requires_grad_(True) for g in net.fixed_gates(select)]
        streams = net(x, gates)
        for t in net.tasks:
            torch.testing.assert_close(streams[t], expected[t])


def test_each_block_runs_once_per_forward_on_all_task_streams(data, space):
    net = _supernet(space)
    sizes: dict[int, list[int]] = {}
    for layer, block in enumerate(net.blocks):
        block.register_forward_pre_hook(lambda _, args, layer=layer: sizes.setdefault(layer, []).append(len(args[0])))
    x, _ = data.train.batch(torch.arange(16))
    net(x, net.sample_gates(1.0, 2, False, torch.Generator().manual_seed(0), grad=True))
    # the stem and s0.b0 (no decision yet) run once on the batch; s0.b1 (first decision) runs once for all
    # tasks; after it each task has its own stream and later blocks run once on the 3 stacked streams
    assert sizes == {0: [16], 1: [16], 2: [16], 3: [48], 4: [48]}
    sizes.clear()
    net(x, [None] * 5)  # warm-up: hard sharing computes everything once
    assert sizes == {i: [16] for i in range(5)}
    # hard samples without gradient are exact 0/1: the forward runs the policy's graph, each block once per
    # unique select/skip prefix (counted here by hand) and not at all where every task skips it
    hard = net.sample_gates(1.0, 3, True, torch.Generator().manual_seed(0), grad=False)
    assert all(((g == 0) | (g == 1)).all() for g in hard if g is not None)
    sizes.clear()
    net(x, hard)
    select = [[True] * 3 if g is None else [bool(v) for v in g.tolist()] for g in hard]
    prefixes = [{tuple(row[t] for row in select[:layer]) for t in range(3) if select[layer][t]} for layer in range(5)]
    assert sizes == {layer: [16] * len(p) for layer, p in enumerate(prefixes) if p}
    assert sum(map(len, sizes.values())) < 5 * 3  # some computation shared


@pytest.mark.parametrize("momentum", [0.1, None])
def test_per_stream_batchnorm_is_each_stream_alone(momentum):
    """Interleaved streams in one call == one call per stream: outputs, gradients and running statistics.

    In float64: the two orders of summation then agree to assert_close's float64 tolerance (the check is of
    the algorithm, not of float32 rounding, which differs with the thread count)."""
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.uniform_(-1, 1)
        plain.running_mean.uniform_(-1, 1), plain.running_var.uniform_(0.5, 2)
    stream = stream_norms(torch.nn.Sequential(copy.deepcopy(plain)))[0]
    stream.streams = 4
    xs = [torch.randn(5, 3, 2, 2, dtype=torch.float64) * (k + 1) + k for k in range(4)]  # other statistics per stream
    expected = [plain(x) for x in xs]
    out = stream(torch.stack(xs, dim=1).reshape(20, 3, 2, 2))
    torch.testing.assert_close(out.reshape(5, 4, 3, 2, 2), torch.stack(expected, dim=1))
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(stream, buffer), getattr(plain, buffer))
    out.square().sum().backward()
    sum(e.square().sum() for e in expected).backward()
    torch.testing.assert_close(stream.weight.grad, plain.weight.grad)
    torch.testing.assert_close(stream.bias.grad, plain.bias.grad)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_per_stream_batchnorm_act_is_each_stream_alone(momentum):
    """timm's BatchNormAct2d (EfficientNet/MobileNet): norm, then its drop and act, per stream as if alone.

    In float64, as above: in float32 the weight gradients of the two summation orders differed by 2.3e-5 on
    one machine, over torch's float32 tolerance."""
    torch.manual_seed(0)
    plain = BatchNormAct2d(4, momentum=momentum, act_layer=torch.nn.ReLU).double()
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.uniform_(-1, 1)
        plain.running_mean.uniform_(-1, 1), plain.running_var.uniform_(0.5, 2)
    block = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1).double(), plain)
    stream = copy.deepcopy(block)
    stream_norms(stream)[0].streams = 3
    xs = [torch.randn(5, 2, 3, 3, dtype=torch.float64) * (k + 1) + k for k in range(3)]
    expected = [block(x) for x in xs]  # the unmodified module, one call per stream (train mode)
    out = stream(torch.stack(xs, dim=1).reshape(15, 2, 3, 3))
    assert (out == 0).any()  # the ReLU ran
    torch.testing.assert_close(out.reshape(5, 3, 4, 3, 3), torch.stack(expected, dim=1))
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(stream[1], buffer), getattr(plain, buffer))
    out.square().sum().backward()
    sum(e.square().sum() for e in expected).backward()
    for p, q in zip(stream.parameters(), block.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_stream_norms_are_twins_with_the_same_tensors_and_keys():
    block = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    before = block.state_dict(keep_vars=True)
    (twin,) = stream_norms(block)
    assert type(block[1]) is StreamBatchNorm2d and block[1] is twin and twin.streams == 1
    after = block.state_dict(keep_vars=True)
    assert list(after) == list(before) and all(after[k] is before[k] for k in before)  # the very same tensors
    assert stream_norms(block) == [twin]  # converting twice changes nothing


def test_per_stream_norms_reject_batchnorm_with_unknown_forward():
    class ScaledNorm(torch.nn.BatchNorm2d):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match="ScaledNorm has its own forward"):
        stream_norms(torch.nn.Sequential(ScaledNorm(3)))


def test_killed_search_resumes_to_the_same_policy(data, space, tmp_path, monkeypatch):
    cfg = _config(epochs=3, warmup_epochs=1, curriculum=True, curriculum_speed=1)
    reference = adashare_search(data, space, cfg, tmp_path / "reference")
    real_save, calls = adashare.save_atomic, {"n": 0}

    def killed_after_two_epochs(state, path):
        real_save(state, path)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(adashare, "save_atomic", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        adashare_search(data, space, cfg, tmp_path / "run")
    assert torch.load(tmp_path / "run" / adashare.CHECKPOINT, weights_only=False)["epoch"] == 2
    monkeypatch.setattr(adashare, "save_atomic", real_save)
    resumed = adashare_search(data, space, cfg, tmp_path / "run")
    assert [h["epoch"] for h in resumed.info["history"]] == [1, 2, 3, 4]
    final = [
        torch.load(d / adashare.CHECKPOINT, weights_only=False)["net"]
        for d in (tmp_path / "reference", tmp_path / "run")
    ]
    for key in final[0]:
        torch.testing.assert_close(final[0][key], final[1][key], rtol=0, atol=0)
    assert resumed.graph == reference.graph and resumed.info["policies"] == reference.info["policies"]
    history = json.loads((tmp_path / "run" / adashare.HISTORY).read_text())
    assert len(history["history"]) == 4 and history["blocks"] == ["s0.b0", "s0.b1", "s1.b1"]
    with pytest.raises(ValueError, match=r"config\.sparsity"):
        adashare_search(data, space, _config(epochs=3, warmup_epochs=1, sparsity=0.1), tmp_path / "run")


def test_search_returns_a_valid_graph_on_shapes():
    data = create_dataset("shapes", n_train=32, n_val=16, n_test=16, size=16, tasks="quadrant,size,mask")
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    cfg = _config(warmup_epochs=1, weight_steps=1, policy_steps=1, hard_sampling=True, curriculum=True)
    result = adashare_search(data, space, cfg)
    graph = result.graph
    space.check_graph(graph)
    assert graph.tasks == data.task_names and graph.layers == space.layers
    assert result.method == "adashare" and result.seconds > 0 and len(result.candidates) <= 7
    cost = result.info["cost_in_hard_sharing_epochs"]  # one warm-up epoch, two rounds, final scoring
    assert cost == pytest.approx(result.seconds / result.info["warmup_seconds"]) and cost > 1
    assert all(
        c == 0 for layer, row in zip(graph.layers, graph.assignment) if layer not in space.skippable for c in row
    )
    out = MultiTaskNetwork.from_tasks(graph, space.backbone, data.tasks)(data.val.batch(torch.arange(4))[0])
    assert out["mask"].shape == (4, 2, 16, 16)


def test_cli_search_adashare_on_multidigits(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "search",
            "adashare",
            "--data",
            "multidigits",
            "--data-arg",
            "n_train=32",
            "--data-arg",
            "n_val=16",
            "--data-arg",
            "n_test=16",
            "--data-arg",
            "size=14",
            "--space",
            "resnet_small_deep",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "16",
            "--weight-steps",
            "1",
            "--policy-steps",
            "1",
            "--final",
            "argmax",
            "--task-weight",
            "left=2,right=0.5",  # a study's list
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    for name in ("graph.json", "search.json", "policy.png", "policy_epochs.png", adashare.HISTORY):
        assert (out / name).is_file(), name
    graph = SharingGraph.load(out / "graph.json")
    assert graph.tasks == ("left", "right") and graph.meta["method"] == "adashare"
    config = json.loads((out / "search.json").read_text())["info"]["config"]
    assert config["task_weights"] == {"left": 2.0, "right": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tau": 0}, "tau"),
        ({"final": "best"}, "final"),
        ({"weight_steps": 0}, "weight_steps"),
        ({"tau_decay": 1.5}, "tau_decay"),
        ({"task_weights": {"a": -1}}, "task_weights"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"adashare config: {field} must be"):
        AdaShareConfig(**kwargs)


@pytest.mark.parametrize("split", ["train", "val"])
def test_search_rejects_wrong_target_shapes_naming_the_task(space, split):
    """A (N,) regression target (needs (N, 1)) would broadcast in the MSE; both phases check, like train.py."""
    splits = {name: _split(32, seed) for seed, name in enumerate(("train", "val", "test"))}
    bad = splits[split]
    splits[split] = TensorMultiTaskDataset(bad.images, {**bad.targets, "level": bad.targets["level"].view(-1)})
    data = MultiTaskData("toy", TASKS, (1, 8, 8), splits["train"], splits["val"], splits["test"])
    with pytest.raises(ValueError, match=r"task 'level' \(regression\): expected target shape \(16, 1\)"):
        adashare_search(data, space, _config(epochs=1))


def test_search_rejects_unknown_task_weights_and_spaces_without_skips(data, space):
    with pytest.raises(ValueError, match=r"task_weights names unknown task\(s\) \['nope'\]"):
        adashare_search(data, space, _config(task_weights={"nope": 1.0}))
    no_skip = SearchSpace("flat", space.backbone, space.layers, ())
    with pytest.raises(ValueError, match="no skippable blocks"):
        adashare_search(data, no_skip, _config())


def test_a_balancer_takes_over_the_weight_updates_and_only_them(data, space, monkeypatch):
    """balancer = NAME: every weight step (warm-up and weight phase) goes through the balancer, with the task
    losses weighted by task_weights, on the supernet's shared parameter groups; policy steps never do."""
    from nas_mtl.balancing import Balancer
    from nas_mtl.balancing.base import BALANCERS

    calls: list[tuple[frozenset, dict[str, float]]] = []

    class Recording(Balancer):
        name = "recording-test"

        def prepare(self, network):
            self.groups = frozenset(network.parameter_groups())
            return super().prepare(network)

        def backward(self, losses, network):
            calls.append((self.groups, {k: float(v.detach()) for k, v in losses.items()}))
            sum(losses.values()).backward()
            return dict.fromkeys(losses, 1.0)

    monkeypatch.setitem(BALANCERS._factories, "recording-test", Recording)  # removed again after the test
    weights = {"sign": 2.0, "level": 0.5}
    cfg = _config(epochs=2, warmup_epochs=1, weight_steps=2, policy_steps=3, task_weights=weights)
    plain = adashare_search(data, space, cfg)
    balanced = adashare_search(data, space, dataclasses.replace(cfg, balancer="recording-test"))
    # warm-up: one pass of 64 // 16 = 4 steps; two rounds of 2 weight steps; no policy step
    assert len(calls) == 4 + 2 * 2
    assert all(frozenset(t for g in groups for t in g) == {"sign", "level", "parity"} for groups, _ in calls)
    weighted = calls[0][1]
    calls.clear()
    adashare_search(data, space, dataclasses.replace(cfg, balancer="recording-test", task_weights={}))
    unweighted = calls[0][1]  # the same first step (same init and batch) without weights
    for task in ("sign", "level", "parity"):
        assert weighted[task] == pytest.approx(weights.get(task, 1.0) * unweighted[task], rel=1e-6)
    # a balancer that sums is the plain weighted sum: the same search (up to summation order)
    for a, b in zip(plain.info["history"], balanced.info["history"]):
        for t in a["train_loss"]:
            assert a["train_loss"][t] == pytest.approx(b["train_loss"][t], rel=1e-4)
    for name in ("mgda", "pcgrad"):  # the real ones run on the supernet's parameter groups
        found = adashare_search(data, space, dataclasses.replace(cfg, balancer=name))
        space.check_graph(found.graph)
        assert found.info["history"] != plain.info["history"]
    with pytest.raises(ValueError, match="adashare config: balancer: "):
        dataclasses.replace(cfg, balancer="magic")


def test_a_policy_left_at_near_ties_is_flagged(data, space, seed):
    """Policy lr 1e-6: the logits cannot leave p = 0.5 by more than a few 1e-5 in 8 steps (Adam moves a logit by
    at most lr per step), so every learned cell is a near-tie and the search says so; a sparsity term 100x the
    paper's with policy lr 0.5 drives every logit to skip (p < 0.4 after the first Adam steps), none is a tie."""
    with pytest.warns(UserWarning, match="every learned select probability ended within 0.1 of 0.5"):
        stuck = adashare_search(data, space, _config(policy_lr=1e-6, final="argmax", seed=seed))
    assert stuck.info["near_ties"] == stuck.info["learned_cells"] == 3 * len(TASKS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pushed = adashare_search(data, space, _config(policy_lr=0.5, sparsity=5.0, final="argmax", seed=seed))
    assert pushed.info["near_ties"] == 0 and pushed.info["learned_cells"] == 3 * len(TASKS)
