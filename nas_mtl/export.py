"""Export a discovered network: safetensors weights + graph JSON + manifest, torch.export, ONNX.

The manifest names everything needed to rebuild the network without pickle: the backbone's
registry name and arguments, the task specs, the input shape and the sharing graph.

An export (and a run folder's ``model.json``) is data: its backbone must be a registered name or an installed
entry point, never a ``module:function`` / ``file.py:function`` reference unless the caller trusts it
(``trusted=``, ``nas-mtl export --trust``); the files it lists lie inside its folder and carry SHA-256 hashes,
checked before anything is read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import BACKBONES, create_backbone
from .graph import SharingGraph
from .layout import CHECKPOINT, MODEL_MANIFEST
from .network import MultiTaskNetwork
from .runs import TABLE, load_checkpoint, read_json, replace_atomic, run_path, write_json_atomic
from .soft import Coupling
from .tasks import TaskSpec

MANIFEST_FORMAT = "nas_mtl.network/1"
"""The format of the manifest (``model.json``) a training run writes next to its checkpoint."""
FORMATS = ("safetensors", "torch-export", "onnx")
UNKNOWN = "not recorded"
"""A manifest's ``input.normalization`` when nobody said what the training data's was (a network built in Python,
a run trained before it was recorded): a prediction refuses it rather than guess."""


def network_manifest(
    network: MultiTaskNetwork,
    tasks: Sequence[TaskSpec],
    data_info: Mapping[str, Any] | None = None,
    test: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What it takes to rebuild ``network`` (weights aside) and use it, as plain JSON.

    ``input``: the (C, H, W) shape and the per-channel ``normalization`` (mean, std) the dataset applied to its
    raw inputs (images in [0, 1]; ``data_info["normalization"]``, None where the data was not standardised,
    :data:`UNKNOWN` without ``data_info``), which a prediction applies to new inputs. ``metrics``: the retrained
    network's ``test`` metrics. The graph keeps only its name of its meta: a search's proxy scores are no measure
    of this network.
    """
    by_name = {t.name: t for t in tasks}
    missing = [t for t in network.tasks if t not in by_name]
    if missing:
        raise ValueError(f"manifest: no task spec for {missing}")
    graph = network.graph.to_dict()
    graph["meta"] = {k: v for k, v in graph.get("meta", {}).items() if k == "name"}
    return {
        "format": MANIFEST_FORMAT,
        "backbone": {"name": network.backbone.name, "config": network.backbone.config},
        "input_shape": list(network.input_shape),
        "input": {
            "shape": list(network.input_shape),
            "layout": "CHW",
            "normalization": UNKNOWN if data_info is None else input_normalization(data_info, network.input_shape[0]),
        },
        "tasks": [by_name[t].to_dict() for t in network.tasks],
        "graph": graph,
        **({"coupling": network.coupling.to_dict()} if network.coupling is not None else {}),
        "outputs": output_info(data_info, network.tasks),
        **({"metrics": {"test": {t: dict(test[t]) for t in network.tasks if t in test}}} if test else {}),
    }


def output_info(info: Mapping[str, Any] | None, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per task what reads its output: ``class_names`` (``info["class_names"]``) and ``target_scaling``
    (``value * std + mean`` is the raw target, ``info["target_scaling"]``), where the dataset gives them."""
    info = info or {}
    out: dict[str, dict[str, Any]] = {t: {} for t in tasks}
    names, scaling = info.get("class_names") or {}, info.get("target_scaling") or {}
    for t in tasks:
        if isinstance(names, Mapping) and isinstance(names.get(t), list | tuple):
            out[t]["class_names"] = [str(n) for n in names[t]]
        found = scaling.get(t) if isinstance(scaling, Mapping) else None
        if isinstance(found, Mapping) and all(isinstance(found.get(k), int | float) for k in ("mean", "std")):
            out[t]["target_scaling"] = {"mean": float(found["mean"]), "std": float(found["std"])}
    return out


def input_normalization(info: Mapping[str, Any] | None, channels: int) -> dict[str, list[float]] | None:
    """The per-channel ``{"mean", "std"}`` of a dataset's ``info["normalization"]`` (None without one); a malformed
    one is a ValueError naming the key."""
    found = (info or {}).get("normalization")
    if found is None:
        return None
    ok = isinstance(found, Mapping) and all(
        isinstance(found.get(k), list | tuple) and len(found[k]) == channels for k in ("mean", "std")
    )
    if not ok or not all(isinstance(v, int | float) for k in ("mean", "std") for v in found[k]):
        raise ValueError(f"info.normalization: expected mean and std lists of {channels} numbers, got {found!r}")
    if any(v <= 0 for v in found["std"]):
        raise ValueError("info.normalization: std must be positive")
    return {"mean": [float(v) for v in found["mean"]], "std": [float(v) for v in found["std"]]}


def network_from_manifest(
    manifest: Mapping[str, Any], source: str = "manifest", trusted: Collection[str] = ()
) -> MultiTaskNetwork:
    """A freshly initialised network laid out as ``manifest`` says (load weights into it next).

    The backbone must be registered or an installed entry point; a code reference only when in ``trusted``."""
    if not isinstance(manifest, Mapping) or manifest.get("format") != MANIFEST_FORMAT:
        got = manifest.get("format") if isinstance(manifest, Mapping) else type(manifest).__name__
        raise ValueError(f"{source}: format: expected {MANIFEST_FORMAT!r}, got {got!r}")
    for key, kind in (("backbone", Mapping), ("tasks", list), ("graph", Mapping)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{source}: {key}: missing or not a {'table' if kind is Mapping else 'list'}")
    bb = manifest["backbone"]
    if not isinstance(bb.get("config", {}), Mapping):
        raise ValueError(f"{source}: backbone.config: expected a table")
    name = BACKBONES.check_stored(bb.get("name"), f"{source}: backbone.name", trusted)
    # the exported weights replace any pretrained ones: the file they came from is not needed here
    config = {k: v for k, v in bb.get("config", {}).items() if k != "weights"}
    try:
        backbone = create_backbone(name, **config)
    except TypeError as err:
        raise ValueError(f"{source}: backbone: {err}") from None
    try:
        tasks = [TaskSpec.from_dict(t) for t in manifest["tasks"]]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: tasks: {err}") from None
    graph = SharingGraph.from_dict(manifest["graph"], source=f"{source}: graph")
    coupling = Coupling.from_dict(manifest["coupling"], f"{source}: coupling") if "coupling" in manifest else None
    return MultiTaskNetwork.from_tasks(graph, backbone, tasks, coupling=coupling)


class _TupleOutputs(nn.Module):
    """Outputs as a tuple in task order: what torch.export / ONNX want."""

    def __init__(self, network: MultiTaskNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(x)
        return tuple(out[t] for t in self.network.tasks)


def save_weights(
    network: MultiTaskNetwork, tasks: Sequence[TaskSpec], out_dir: str | Path, usage: Mapping[str, Any] | None = None
) -> Path:
    """``weights.safetensors`` + ``graph.json`` + ``manifest.json`` (no pickle anywhere); ``usage``: the run
    manifest's ``input`` and ``metrics`` (:func:`network_manifest`), carried into the export's."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    path = out_dir / "weights.safetensors"
    replace_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"format": MANIFEST_FORMAT}))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; the export's other files follow the umask
    return write_manifest(network, tasks, out_dir, {"weights": "weights.safetensors"}, usage)


EXPORT_FILES = {"safetensors": ("weights", "weights.safetensors"), "torch-export": ("program", "program.pt2")}
EXPORT_FILES["onnx"] = ("onnx", "model.onnx")
"""Each format's role and file in an export's manifest."""


def write_manifest(
    network: MultiTaskNetwork,
    tasks: Sequence[TaskSpec],
    out_dir: Path,
    files: Mapping[str, str],
    usage: Mapping[str, Any] | None = None,
) -> Path:
    """``graph.json`` and ``manifest.json`` of an export holding ``files`` (role -> name), each with its SHA-256."""
    manifest = network_manifest(network, tasks)
    manifest |= {k: v for k, v in (usage or {}).items() if k in ("input", "outputs", "metrics")}
    SharingGraph.from_dict(manifest["graph"]).save(out_dir / "graph.json")  # without a search's proxy scores
    manifest["files"] = {**files, "graph": "graph.json"}
    manifest["sha256"] = {name: sha256_file(out_dir / name) for name in manifest["files"].values()}
    write_json_atomic(manifest, out_dir / "manifest.json")
    return out_dir / "manifest.json"


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_file(out_dir: Path, manifest: Mapping[str, Any], role: str, source: str) -> Path:
    """The file the manifest lists as ``role``: a name inside ``out_dir`` whose SHA-256 is the manifest's;
    ValueError naming ``source`` and the key otherwise (a path outside, a missing hash, a changed file)."""
    files, hashes = manifest.get("files"), manifest.get("sha256")
    if not isinstance(files, Mapping) or not isinstance(files.get(role), str):
        raise ValueError(f"{source}: files.{role}: missing or not a file name; export the run again")
    name = files[role]
    try:
        path = run_path(out_dir, name)
    except ValueError:
        raise ValueError(f"{source}: files.{role}: {name!r} is not inside {out_dir}; refused") from None
    if not isinstance(hashes, Mapping) or not isinstance(hashes.get(name), str):
        raise ValueError(f"{source}: sha256.{name}: missing (an export older than hashes?); export the run again")
    if not path.is_file():
        raise FileNotFoundError(f"{source}: files.{role}: {path} not found")
    if sha256_file(path) != hashes[name]:
        raise ValueError(f"{source}: sha256.{name}: {path} does not match its hash (changed or damaged); refused")
    return path


def load_exported(out_dir: str | Path, trusted: Collection[str] = ()) -> MultiTaskNetwork:
    """Rebuild a network written by :func:`save_weights` (eval mode); ``trusted``: code references the caller
    accepts as the backbone (see the module doc)."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest.json in {out_dir}")
    manifest = read_json(path, "export manifest", (), "export the run again")
    network = network_from_manifest(manifest, str(path), trusted)  # builds registered (or trusted) code only
    weights = checked_file(out_dir, manifest, "weights", str(path))
    try:
        network.load_state_dict(load_file(str(weights)))
    except Exception as err:  # safetensors' own errors, missing or unexpected keys, shape mismatches
        why = " ".join(str(err).split())  # torch's message spans lines; its key names are the useful part
        raise ValueError(f"{weights}: does not fit the network of {path}: {why[:500]}") from None
    return network.eval()


def export_run(
    run_dir: str | Path, out_dir: str | Path, formats: Sequence[str] = FORMATS, trusted: Collection[str] = ()
) -> dict[str, Any]:
    """Export the network trained in ``run_dir`` (its ``model.json`` manifest + ``checkpoint.pt`` weights);
    ``trusted``: code references accepted as its backbone (see the module doc)."""
    run_dir = Path(run_dir)
    manifest_path, ckpt = run_dir / MODEL_MANIFEST, run_dir / CHECKPOINT
    for path in (manifest_path, ckpt):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: not a finished training run ({path.name} missing)")
    manifest = read_json(manifest_path, "model manifest", (), f"retrain the run in {run_dir}")
    network = network_from_manifest(manifest, str(manifest_path), trusted)
    network.load_state_dict(load_checkpoint(ckpt, schema={"model": TABLE})["model"])
    tasks = [TaskSpec.from_dict(t) for t in manifest["tasks"]]
    return export_network(network, tasks, out_dir, formats, trusted=trusted, usage=manifest)


def export_network(
    network: MultiTaskNetwork,
    tasks: Sequence[TaskSpec],
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    check_inputs: int = 4,
    seed: int = 0,
    trusted: Collection[str] = (),
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the requested formats into ``out_dir`` and check each against eager PyTorch; ``manifest.json`` (with
    ``usage``'s input normalisation and test metrics, see :func:`save_weights`) lists every file written.

    Returns a report: file per format and the max abs difference of every exported artefact's
    outputs vs the eager network on ``check_inputs`` random inputs (also written to ``export.json``).
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"formats: unknown {unknown}; allowed: {list(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    wrapper = _TupleOutputs(network).eval()
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(check_inputs, *network.input_shape, generator=gen, device="cpu")
    with torch.no_grad():
        expected = wrapper(inputs)
    report: dict[str, Any] = {"torch": torch.__version__, "tasks": list(network.tasks), "files": {}, "max_abs_diff": {}}
    if "safetensors" in formats:
        save_weights(network, tasks, out_dir, usage)
        reloaded = _TupleOutputs(load_exported(out_dir, trusted)).eval()
        with torch.no_grad():
            report["max_abs_diff"]["safetensors"] = _max_diff(reloaded(inputs), expected)
        report["files"]["safetensors"] = "weights.safetensors"
    example = inputs[:2]
    batch = torch.export.Dim("batch", min=1)
    if "torch-export" in formats:
        program = torch.export.export(wrapper, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, out_dir / "program.pt2")
        loaded = torch.export.load(out_dir / "program.pt2").module()
        with torch.no_grad():
            report["max_abs_diff"]["torch-export"] = _max_diff(loaded(inputs), expected)
        report["files"]["torch-export"] = "program.pt2"
    if "onnx" in formats:
        report["max_abs_diff"]["onnx"] = _export_onnx(wrapper, example, inputs, expected, out_dir / "model.onnx")
        report["files"]["onnx"] = "model.onnx"
    report["sha256"] = {name: sha256_file(out_dir / name) for name in report["files"].values()}
    files = {EXPORT_FILES[f][0]: EXPORT_FILES[f][1] for f in FORMATS if f in report["files"]}
    write_manifest(network, tasks, out_dir, files, usage)  # every format: the manifest says how to use it
    write_json_atomic(report, out_dir / "export.json")
    return report


def _export_onnx(
    wrapper: _TupleOutputs, example: torch.Tensor, inputs: torch.Tensor, expected: tuple, path: Path
) -> float:
    """ONNX with one named output per task and a dynamic batch axis, checked with onnxruntime."""
    import onnxruntime as ort

    tasks = list(wrapper.network.tasks)
    torch.onnx.export(
        wrapper,
        (example,),
        str(path),
        input_names=["input"],
        output_names=tasks,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != tasks:
        raise RuntimeError(f"ONNX outputs {names} do not match tasks {tasks}")
    got = session.run(tasks, {"input": inputs.numpy()})
    return _max_diff(tuple(torch.from_numpy(g) for g in got), expected)


def _max_diff(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    return max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True))


__all__ = [
    "FORMATS",
    "MANIFEST_FORMAT",
    "MODEL_MANIFEST",
    "export_network",
    "export_run",
    "load_exported",
    "network_from_manifest",
    "checked_file",
    "UNKNOWN",
    "input_normalization",
    "output_info",
    "network_manifest",
    "write_manifest",
    "save_weights",
    "sha256_file",
]
