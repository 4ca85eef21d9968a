"""An exported network in use: `nas-mtl predict` on raw inputs reproduces the study's test accuracy, the manifest says
how to normalise inputs and read outputs, and an ONNX export runs with torch + onnxruntime alone."""

import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tiny_study import STUDY, write_study

from nas_mtl.data import create_dataset

DATA = dict(n_train=64, n_val=32, n_test=32, size=16)  # the tiny study's data


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nas_mtl.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny study (one seed), its hard-sharing run exported in every format, and the raw test inputs."""
    from nas_mtl.study import load_study, run_study

    root = tmp_path_factory.mktemp("predict")
    run_study(load_study(write_study(root, STUDY.replace("seeds = [0, 1]", "seeds = [0]"))), root / "run")
    from nas_mtl.cli import main

    assert (
        main(
            [
                "export",
                str(root / "run"),
                "--arm",
                "hard",
                "--out",
                str(root / "export"),
                "--formats",
                "safetensors,onnx",
            ]
        )
        == 0
    )
    data = create_dataset("multidigits", **DATA)
    x = np.stack([data.test[i][0].numpy() for i in range(len(data.test))])
    norm = data.info["normalization"]
    raw = x * np.float32(norm["std"][0]) + np.float32(norm["mean"][0])  # what the dataset read before normalising
    np.save(root / "raw.npy", raw.astype(np.float32))
    labels = {t: np.array([int(data.test[i][1][t]) for i in range(len(data.test))]) for t in data.task_names}
    return root, labels


def test_predict_reproduces_the_reported_test_accuracy_from_a_fresh_process(exported):
    root, labels = exported
    done = _cli("predict", "export", "raw.npy", "--out", "pred", cwd=root)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    rows = list(csv.DictReader((root / "pred" / "predictions.csv").open()))
    assert len(rows) == 32
    for task, y in labels.items():
        predicted = np.array([int(r[f"{task}.class"]) for r in rows])
        reported = manifest["metrics"]["test"][task]["accuracy"]
        assert abs((predicted == y).mean() - reported) <= 1e-6
        assert [r[f"{task}.name"] for r in rows] == [str(i) for i in predicted]  # the dataset's class names
    assert manifest["input"]["normalization"] == {
        "mean": create_dataset("multidigits", **DATA).info["normalization"]["mean"],
        "std": create_dataset("multidigits", **DATA).info["normalization"]["std"],
    }
    assert set(manifest["graph"]["meta"]) <= {"name"}  # no search's proxy score in what ships


def test_an_onnx_export_runs_with_torch_and_onnxruntime_alone(exported):
    """A user's process that never imports nas_mtl: the manifest's normalisation, onnxruntime, argmax."""
    from nas_mtl.cli import main

    root, _ = exported
    assert main(["predict", str(root / "export"), str(root / "raw.npy"), "--out", str(root / "pred_torch")]) == 0
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np, onnxruntime, torch  # torch: as a user's serving code would have it
        manifest = json.load(open("export/manifest.json"))
        norm = manifest["input"]["normalization"]
        x = (np.load("raw.npy") - np.float32(norm["mean"][0])) / np.float32(norm["std"][0])
        model = "export/" + manifest["files"]["onnx"]
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
        for task, out in zip((t["name"] for t in manifest["tasks"]), outputs):
            np.save(f"onnx_{task}.npy", out)
        assert not any(m.startswith("nas_mtl") for m in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for task in ("left", "right"):
        ours, theirs = np.load(root / "pred_torch" / f"{task}.npy"), np.load(root / f"onnx_{task}.npy")
        # float32 logits of a 2-block network: a few ulps of O(10) values apart between the two runtimes
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
        assert (theirs.argmax(1) == ours.argmax(1)).all()


def test_images_in_a_folder_and_a_wrong_layout(exported, tmp_path, capsys):
    from PIL import Image

    from nas_mtl.cli import main

    root, _ = exported
    raw = np.load(root / "raw.npy")
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.clip(np.round(raw[:3, 0] * 255), 0, 255).astype(np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p, mode="L").save(images / f"{i:02d}.png")
    assert main(["predict", str(root / "export"), str(images), "--out", str(tmp_path / "pred")]) == 0
    assert main(["predict", str(root / "export"), str(root / "raw.npy"), "--out", str(tmp_path / "p2")]) == 0
    # 8-bit images of the same inputs: the same classes where the logits are not within rounding of a tie
    a, b = np.load(tmp_path / "pred" / "left.npy"), np.load(tmp_path / "p2" / "left.npy")[:3]
    np.testing.assert_allclose(a, b, atol=0.1)
    wrong = np.transpose(raw, (0, 2, 3, 1))[:, :15]  # channels last, and one row short
    np.save(tmp_path / "wrong.npy", wrong)
    capsys.readouterr()
    assert main(["predict", str(root / "export"), str(tmp_path / "wrong.npy"), "--out", str(tmp_path / "p3")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "wrong.npy: inputs of shape (15, 16, 1) read as CHW" in err and "--layout HWC" in err


def test_a_manifest_is_data_and_an_unrecorded_normalisation_is_refused(exported, tmp_path, capsys):
    """An ONNX-only export whose manifest names a task '../escaped' writes nothing outside --out; a network
    exported from Python (no training data seen) has no recorded normalisation, and predict will not guess."""
    import shutil

    from nas_mtl.cli import main
    from nas_mtl.export import export_network, load_exported

    root, _ = exported
    onnx_only = tmp_path / "onnx_only"
    onnx_only.mkdir()
    shutil.copy(root / "export" / "model.onnx", onnx_only)
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    manifest["files"] = {"onnx": "model.onnx"}
    manifest["sha256"] = {"model.onnx": manifest["sha256"]["model.onnx"]}
    manifest["tasks"][0]["name"] = "../escaped"
    (onnx_only / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "deep" / "out"
    assert main(["predict", str(onnx_only), str(root / "raw.npy"), "--out", str(out)]) == 2
    assert "tasks[0].name" in capsys.readouterr().err
    assert not (tmp_path / "deep" / "escaped.npy").exists() and not out.exists()
    network = load_exported(root / "export")
    export_network(network, create_dataset("multidigits", **DATA).tasks, tmp_path / "python", formats=["safetensors"])
    assert main(["predict", str(tmp_path / "python"), str(root / "raw.npy"), "--out", str(tmp_path / "p")]) == 2
    assert "input.normalization is not recorded" in capsys.readouterr().err


def test_an_output_for_a_task_not_in_the_manifest_is_refused_naming_the_manifests_tasks(tmp_path):
    """After a classification task with class names, an unknown task's error still lists the tasks (not classes)."""
    from nas_mtl.predict import write_predictions

    manifest = {
        "tasks": [{"name": "digit", "kind": "classification"}, {"name": "size", "kind": "regression"}],
        "outputs": {"digit": {"class_names": ["zero", "one"]}},
    }
    outputs = {"digit": np.array([[0.1, 0.9], [0.8, 0.2]]), "colour": np.zeros((2, 1))}
    with pytest.raises(ValueError, match=r"task 'colour' is not one of the manifest's \['digit', 'size'\]"):
        write_predictions(outputs, manifest, tmp_path)
