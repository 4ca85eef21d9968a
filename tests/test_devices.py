"""Device correctness without a GPU.

- Every tensor the training step makes must be made on the device of the network (or deliberately on the host).
  On a CPU-only machine a tensor made without ``device=`` lands on the CPU like the network, so the mistake never
  shows; here the *default* device is set to ``meta`` while the network and data stay on the CPU, as on a GPU
  machine the default (CPU) differs from the network's device (CUDA). A tensor made on the default device then
  meets the network's tensors and torch raises, naming the op: a device-mismatch detector.
- A checkpoint written on a GPU resumes on the CPU: its tensors are tagged as CUDA tensors (torch.save's location
  tag, as a CUDA run writes them), loading it as is fails here, and the trainer's ``map_location`` resumes it
  bitwise to the uninterrupted run.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_balancers_weighting import _data, _float_net
from test_train import _train_killed_in_epoch_two

from nas_mtl.balancing import create_balancer, list_balancers
from nas_mtl.layout import CHECKPOINT
from nas_mtl.train import TrainConfig, train

CFG = TrainConfig(epochs=2, batch_size=16, lr=1e-2, progress=False, device="cpu")


@contextlib.contextmanager
def _default_device(device: str):
    before = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(before)


@pytest.mark.parametrize("name", list_balancers())
def test_every_balancer_trains_with_the_default_device_elsewhere(name):
    """Training (forward, every balancer's backward with its Gram matrices, solvers and state, the optimizer, the
    metrics) makes no tensor on the default device: it runs with the default device on ``meta``."""
    data, net = _data(), _float_net()
    balancer = create_balancer(name)
    with _default_device("meta"):
        result = train(net, data, CFG, balancer)
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert set(result.test) == {"a", "b", "c"}


def test_the_detector_sees_a_tensor_made_on_the_default_device():
    """What the test above would catch: a balancer that makes its weights without ``device=``."""
    data, net = _data(), _float_net()
    balancer = create_balancer("static", a=1.0, b=1.0, c=1.0)

    def careless(losses, network):
        weights = torch.ones(len(losses))  # no device=: the default device's
        total = sum(w * loss for w, loss in zip(weights, losses.values()))
        total.backward()
        return dict.fromkeys(losses, 1.0)

    balancer.backward = careless
    with _default_device("meta"), pytest.raises((RuntimeError, NotImplementedError), match="meta|device"):
        train(net, data, CFG, balancer)


def _as_written_on_cuda(path, monkeypatch) -> None:
    """Rewrite the checkpoint at ``path`` with every tensor tagged ``cuda:0``, as torch.save writes a GPU run's."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)


@pytest.mark.parametrize("name", ["equal", "famo", "nash-mtl"])
def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu_bitwise(name, tmp_path, monkeypatch):
    """The network, optimizer, balancer state (FAMO's logits and their Adam, Nash-MTL's previous weights) and the
    generators of a run killed in epoch 2 on a GPU resume on the CPU to the uninterrupted run."""
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False, device="cpu")
    reference = _float_net()
    train(reference, _data(), cfg, create_balancer(name))
    _train_killed_in_epoch_two(monkeypatch, _float_net(), _data(), cfg, create_balancer(name), run_dir=tmp_path)
    checkpoint = tmp_path / CHECKPOINT
    _as_written_on_cuda(checkpoint, monkeypatch)
    if not torch.cuda.is_available():  # the file really is a GPU checkpoint: without map_location it needs CUDA
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(checkpoint, weights_only=True)
    resumed = _float_net(seed=99)
    train(resumed, _data(), cfg, create_balancer(name), run_dir=tmp_path)
    for (k, v), (k2, v2) in zip(resumed.state_dict().items(), reference.state_dict().items()):
        assert k == k2 and v.device.type == "cpu"
        torch.testing.assert_close(v, v2, rtol=0, atol=0)


def test_adashare_searches_with_the_default_device_elsewhere(tmp_path):
    """AdaShare's supernet, policy logits, Gumbel samples, regularisers and checkpoint, with the default device on
    ``meta``: the same policy as with the default device left alone."""
    from nas_mtl.config import build_config
    from nas_mtl.data import create_dataset
    from nas_mtl.search.adashare import AdaShareConfig, adashare_search
    from nas_mtl.space import load_search_space

    data = create_dataset("shapes", n_train=32, n_val=16, n_test=16, size=16, tasks="quadrant,size,mask")
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    options = dict(epochs=2, warmup_epochs=1, batch_size=16, weight_steps=2, policy_steps=2, curriculum=True)
    cfg = build_config(AdaShareConfig, {**options, "hard_sampling": True, "device": "cpu", "progress": False})
    reference = adashare_search(data, space, cfg, tmp_path / "reference")
    with _default_device("meta"):
        result = adashare_search(data, space, cfg, tmp_path / "meta")
    assert result.graph == reference.graph and result.info["policies"] == reference.info["policies"]


def test_an_export_and_predict_with_the_default_device_elsewhere(tmp_path):
    """A trained run exported (safetensors and manifest) and predicted on with the default device on ``meta``."""
    import numpy as np

    from nas_mtl.cli import main
    from nas_mtl.data import create_dataset

    argv = ["train", "--data", "multidigits", "--data-arg", "n_train=64", "--data-arg", "n_val=32"]
    argv += ["--data-arg", "n_test=32", "--data-arg", "size=16", "--space", "resnet_small", "--epochs", "1"]
    argv += ["--batch-size", "32"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    data = create_dataset("multidigits", n_train=64, n_val=32, n_test=32, size=16)
    np.save(tmp_path / "x.npy", np.stack([data.test[i][0].numpy() for i in range(8)]))
    out = [str(tmp_path / "export"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "pred"), "--layout", "CHW"]
    with _default_device("meta"):
        assert main(["export", str(tmp_path / "run"), "--out", out[0], "--formats", "safetensors"]) == 0
        assert main(["predict", *out]) == 0
    assert (tmp_path / "pred" / "predictions.csv").is_file()
