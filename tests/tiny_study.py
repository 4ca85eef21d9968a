"""A tiny study (two digits of 16 px, a 2-stage ResNet of width 4-8, one epoch) for tests that run whole studies."""

from pathlib import Path

SPACE = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4, 8]
depths = [1, 1]
"""

STUDY = """
format = "nas_mtl.study/1"
name = "tiny"
seeds = [0, 1]
balancers = ["equal"]
[data]
name = "multidigits"
n_train = 64
n_val = 32
n_test = 32
size = 16
[space]
name = "space.toml"
[train]
epochs = 1
batch_size = 32
[arms]
baselines = ["single", "hard"]
"""


def write_study(folder: Path, study: str = STUDY) -> Path:
    """``folder/space.toml`` and ``folder/study.toml`` (the study's space is that file); returns the study file."""
    (folder / "space.toml").write_text(SPACE)
    (folder / "study.toml").write_text(study)
    return folder / "study.toml"
