import pytest

from nas_mtl.backbones import create_backbone
from nas_mtl.space import list_search_spaces, load_search_space

GOOD = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4, 8]
depths = [2, 2]
[layers]
branchable = ["s0.b1", "s1.b0"]
skippable = "auto"
"""


def _write(tmp_path, text, name="space.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_by_path_fills_input_shape_from_data(tmp_path):
    space = load_search_space(_write(tmp_path, GOOD), input_shape=(1, 12, 12))
    assert space.backbone.input_shape == (1, 12, 12)
    assert space.layers == ("stem", "s0.b0", "s0.b1", "s1.b0", "s1.b1")
    assert space.skippable == ("s0.b0", "s0.b1", "s1.b1")
    assert space.branchable == ("s0.b1", "s1.b0")
    g = space.hard_sharing(["a", "b"])
    assert g.skippable == frozenset(space.skippable)


def test_shipped_spaces_load():
    names = list_search_spaces()
    assert {"resnet_small", "resnet_small_deep", "timm_resnet18"} <= set(names)
    for name in ("resnet_small", "resnet_small_deep"):
        space = load_search_space(name, input_shape=(1, 28, 28))
        assert space.backbone.layer_names == space.layers


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (GOOD.replace("nas_mtl.search_space/1", "v0"), "format"),
        (
            GOOD.replace('name = "resnet_small"', 'name = "resnet_huge"'),
            "backbone: unknown backbone 'resnet_huge'",
        ),
        (GOOD.replace("widths = [4, 8]", "widths = [4, 8]\nwidht = 3"), "backbone:.*widht"),
        (GOOD.replace('"s1.b0"]', '"s9.b9"]'), r"layers.branchable: unknown block 's9.b9'"),
        (
            GOOD.replace('skippable = "auto"', 'skippable = ["s1.b0"]'),
            "layers.skippable: block 's1.b0' is not allowed",
        ),
        (GOOD.replace('skippable = "auto"', "skippable = 3"), "layers.skippable: expected"),
        (GOOD.replace("[layers]", "[layers]\nbranch = 1"), "layers.branch: unknown key"),
        (GOOD + "\nextra = 1\n", "extra: unknown key"),
        ("format = [", "not valid TOML"),
    ],
)
def test_bad_space_files_name_file_and_key(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match) as err:
        load_search_space(path, input_shape=(1, 12, 12))
    assert str(path) in str(err.value)


def test_input_shape_mismatch_and_unknown_names(tmp_path):
    path = _write(tmp_path, GOOD.replace("depths = [2, 2]", "depths = [2, 2]\nin_chans = 3"))
    with pytest.raises(ValueError, match=r"backbone.in_chans: 3 does not match the dataset's 1"):
        load_search_space(path, input_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        load_search_space("nope")
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_search_space(tmp_path / "missing.toml")


def test_unknown_backbone_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'resnet_huge'; known: .*resnet_small"):
        create_backbone("resnet_huge")
    with pytest.raises(TypeError, match="resnet_small.*widht"):
        create_backbone("resnet_small", widht=3)
