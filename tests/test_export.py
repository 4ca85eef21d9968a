import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from nas_mtl.backbones import create_backbone
from nas_mtl.export import export_network, export_run, load_exported
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.tasks import ClassificationTask, RegressionTask, SegmentationTask

TASKS = [ClassificationTask("a", 3), SegmentationTask("b", 2), RegressionTask("c", 2)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    bb = create_backbone("resnet_small", in_chans=3, input_size=(16, 16), widths=(8, 16), depths=(2, 2))
    # AdaShare-style policy: one copy per block, skips on s0.b0 / s1.b1
    select = [[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]]
    net = MultiTaskNetwork.from_tasks(
        SharingGraph.from_policy(["a", "b", "c"], bb.layer_names, select, skippable=bb.skippable), bb, TASKS
    ).eval()
    assert len(net.path_stats) > 0  # copies run after a skip keep their own BatchNorm statistics...
    for buf in net.path_stats.buffers():
        if buf.is_floating_point():
            buf.uniform_(0.5, 1.5)  # ...which must travel with the export
    out = tmp_path_factory.mktemp("export")
    return net, out, export_network(net, TASKS, out)


def _float32_tolerance(net: MultiTaskNetwork, x: torch.Tensor) -> float:
    """n eps max|output| in float32: n = the multiply-adds behind one output along the depth (the sum of the
    conv and linear fan-ins), a bound on how far two float32 implementations of ``net`` may round apart."""
    n = sum(m.weight[0].numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    with torch.no_grad():
        scale = max(float(v.abs().max()) for v in net(x).values())
    return n * torch.finfo(torch.float32).eps * scale


def test_every_format_matches_pytorch(exported):
    net, _, report = exported
    assert set(report["files"]) == {"safetensors", "torch-export", "onnx"}
    assert report["max_abs_diff"]["safetensors"] == 0.0
    tol = _float32_tolerance(net, torch.randn(8, 3, 16, 16))  # ~1e-4 here; measured: 0 and 2.4e-7
    assert report["max_abs_diff"]["torch-export"] <= tol and report["max_abs_diff"]["onnx"] <= tol


def test_every_exported_file_carries_its_sha256(exported):
    """export.json hashes each format's file, manifest.json the files it lists; checked against hashlib."""
    import hashlib

    _, out, report = exported
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in report["files"].values()}
    assert json.loads((out / "export.json").read_text())["sha256"] == on_disk and len(on_disk) == 3
    listed = manifest["files"].values()
    assert manifest["sha256"] == {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in listed}


def test_reloaded_without_pickle_reproduces_outputs(exported):
    net, out, _ = exported
    manifest = json.loads((out / "manifest.json").read_text())  # plain JSON
    assert manifest["format"] == "nas_mtl.network/1" and [t["name"] for t in manifest["tasks"]] == ["a", "b", "c"]
    weights = load_file(str(out / "weights.safetensors"))
    # only used copies exist: one copy per block for a policy graph
    assert {k.split(".")[2] for k in weights if k.startswith("blocks.")} == {"0"}
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in net.state_dict().values())
    again = load_exported(out)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        a, b = net(x), again(x)
    for t in ("a", "b", "c"):
        torch.testing.assert_close(a[t], b[t], rtol=0, atol=0)


def test_onnx_has_one_named_output_per_task_and_dynamic_batch(exported):
    import onnxruntime as ort

    net, out, _ = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["a", "b", "c"]
    x = torch.randn(7, 3, 16, 16)
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = net(x)
    assert got[1].shape == (7, 2, 16, 16)
    tol = _float32_tolerance(net, x)
    for t, g in zip(("a", "b", "c"), got):
        assert float((torch.from_numpy(g) - ref[t]).abs().max()) <= tol


def test_export_errors(tmp_path, exported):
    net, _, _ = exported
    with pytest.raises(ValueError, match=r"formats: unknown \['tflite'\]"):
        export_network(net, TASKS, tmp_path, formats=["tflite"])
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_exported(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a finished training run"):
        export_run(tmp_path, tmp_path / "out")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(ValueError, match="format: expected 'nas_mtl.network/1'"):
        load_exported(tmp_path)


def test_exported_files_share_one_file_mode(exported):
    """safetensors writes its file 0600; the export's files all follow the umask (0644 under umask 022)."""
    _, out, _ = exported
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes
