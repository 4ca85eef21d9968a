import copy
from dataclasses import dataclass

import pytest
import timm
import torch

from nas_mtl.backbones import Backbone, create_backbone, list_backbones
from nas_mtl.backbones.timm_models import TimmTrunk, timm_trunk


@dataclass(frozen=True)
class Case:
    backbone: str
    config: dict
    blocks: int
    skippable: int
    head: tuple[str, ...]  # classifier-head modules of the default timm model (outside forward_features)


F64_RTOL = 1e-7
"""torch.testing.assert_close's float64 tolerance (relative and absolute)."""
TINY_VIT = dict(model="vit_tiny_patch16_224", input_size=(32, 32), patch_size=8, depth=4, embed_dim=64, num_heads=2)
CASES = {
    "resnet18": Case("timm_resnet", dict(model="resnet18", input_size=(64, 64)), 9, 5, ("fc",)),
    "efficientnet_b0": Case(
        "timm_efficientnet", dict(model="efficientnet_b0", input_size=(64, 64)), 18, 9, ("classifier",)
    ),
    "mobilenetv3_small": Case(
        "timm_efficientnet",
        dict(model="mobilenetv3_small_100", input_size=(64, 64)),
        13,
        6,
        ("conv_head", "classifier"),
    ),
    "vit_tiny": Case("timm_vit", TINY_VIT, 6, 4, ("fc_norm", "head")),
}


@dataclass(frozen=True)
class Setup:
    case: Case
    backbone: Backbone
    trunk: TimmTrunk  # eval mode, float64
    x: torch.Tensor  # float64


@pytest.fixture(scope="module", params=list(CASES))
def setup(request) -> Setup:
    """In float64: the block-by-block run and timm's forward_features may use different kernels (and so
    summation orders), and the checks are of what is computed, not of float32 rounding."""
    case = CASES[request.param]
    bb = create_backbone(case.backbone, **case.config)
    trunk = timm_trunk(bb.name, **bb.config)
    trunk.model.eval().double()
    return Setup(case, bb, trunk, torch.randn(2, *bb.input_shape, dtype=torch.float64))


@torch.no_grad()
def test_blocks_compose_to_timm_forward_features(setup):
    bb, trunk, x = setup.backbone, setup.trunk, setup.x
    assert trunk.blocks == bb.blocks
    tokens = x
    for m in trunk.modules:
        tokens = m(tokens)
    ref = trunk.model.forward_features(x)
    torch.testing.assert_close(tokens, ref)
    fmap = bb.neck(tokens)
    if bb.name == "timm_vit":  # class token dropped, patch tokens back on the 4x4 grid (row-major)
        assert trunk.model.num_prefix_tokens == 1 and fmap.shape == (2, 64, 4, 4)
        assert torch.equal(fmap[:, :, 1, 2], ref[:, 1 + 1 * 4 + 2])
    else:
        assert fmap is tokens


@torch.no_grad()
def test_skippable_iff_shape_preserving_identity_shortcut(setup):
    """A block has an identity shortcut iff, with all its parameters zeroed, it maps its input to itself."""
    bb, x = setup.backbone, setup.x
    assert (len(bb), len(bb.skippable)) == (setup.case.blocks, setup.case.skippable)
    for info, block in zip(bb.blocks, setup.trunk.modules, strict=True):
        y = block(x)
        zeroed = copy.deepcopy(block)
        for p in zeroed.parameters():
            p.zero_()
        identity = y.shape == x.shape and torch.allclose(zeroed(x), x, rtol=F64_RTOL, atol=F64_RTOL)
        assert info.skippable == identity, info.name
        x = y


def test_blocks_hold_exactly_the_forward_features_parameters(setup):
    model = setup.trunk.model
    params = list(model.parameters())
    grads = torch.autograd.grad(model.forward_features(setup.x).sum(), params, allow_unused=True)
    used = {id(p) for p, g in zip(params, grads, strict=True) if g is not None}
    assert {id(p) for m in setup.trunk.modules for p in m.parameters()} == used


def test_build_is_timm_init_split_into_blocks(setup):
    bb = setup.backbone
    torch.manual_seed(0)
    blocks = bb.build()
    torch.manual_seed(0)
    trunk = timm_trunk(bb.name, **bb.config)
    assert [type(m) for m in blocks] == [type(m) for m in trunk.modules]
    for mine, theirs in zip(blocks, trunk.modules, strict=True):
        mine, theirs = mine.state_dict(), theirs.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_build_gives_fresh_parameters(setup):
    bb = setup.backbone
    a, b = bb.build(), bb.build()
    for i in (0, len(bb) // 2):
        pa, pb = (max(m.parameters(), key=torch.numel) for m in (a[i], b[i]))  # a weight, not a norm scale
        assert pa.shape == pb.shape and not torch.equal(pa, pb)
        assert not set(map(id, a[i].parameters())) & set(map(id, b[i].parameters()))


def test_skippable_names():
    resnet = create_backbone("timm_resnet", model="resnet18")
    assert resnet.layer_names[:4] == ("stem", "layer1.0", "layer1.1", "layer2.0")
    assert resnet.skippable == ("layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1")
    effnet = create_backbone("timm_efficientnet", model="efficientnet_b0")
    assert effnet.layer_names[:3] == ("stem", "blocks.0.0", "blocks.1.0")
    assert effnet.layer_names[-1] == "head_conv"
    assert "blocks.1.1" in effnet.skippable and "blocks.1.0" not in effnet.skippable
    mnv3 = create_backbone("timm_efficientnet", model="mobilenetv3_small_100")
    assert mnv3.layer_names[-1] == "blocks.5.0"  # features end at the blocks: conv_head follows pooling
    vit = create_backbone("timm_vit", **TINY_VIT)
    assert vit.layer_names == ("embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "norm")
    assert vit.skippable == vit.layer_names[1:-1]


@torch.no_grad()
def test_vit_with_register_tokens_avg_pool_and_one_channel():
    config = dict(TINY_VIT, in_chans=1, input_size=(32, 16), reg_tokens=2, global_pool="avg")
    bb = create_backbone("timm_vit", **config)
    assert bb.layer_names == ("embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3")  # norm became fc_norm
    trunk = timm_trunk(bb.name, **bb.config)
    trunk.model.eval().double()
    x = torch.randn(2, 1, 32, 16, dtype=torch.float64)
    tokens = x
    for m in trunk.modules:
        tokens = m(tokens)
    ref = trunk.model.forward_features(x)
    torch.testing.assert_close(tokens, ref)
    assert ref.shape == (2, 3 + 4 * 2, 64)
    assert torch.equal(bb.neck(tokens)[:, :, 3, 1], ref[:, 3 + 3 * 2 + 1]) and bb.feature_shape == (64, 4, 2)


@pytest.mark.parametrize(("case", "feature_shape"), [("resnet18", (512, 2, 2)), ("vit_tiny", (64, 4, 4))])
def test_layer_costs_and_feature_shape(case, feature_shape):
    case = CASES[case]
    bb = create_backbone(case.backbone, **case.config)
    costs = bb.layer_costs()
    kwargs = {k: v for k, v in case.config.items() if k not in ("model", "input_size")}
    if case.backbone == "timm_vit":
        kwargs["img_size"] = case.config["input_size"]
    full = timm.create_model(case.config["model"], pretrained=False, **kwargs)  # with its classifier
    head_params = sum(p.numel() for h in case.head for p in getattr(full, h).parameters())
    assert head_params > 0 and sum(costs.params) == sum(p.numel() for p in full.parameters()) - head_params
    assert len(costs.macs) == len(bb) and all(m > 0 for m in costs.macs[:-1])
    assert bb.feature_shape == feature_shape


def test_registered():
    assert {"timm_resnet", "timm_efficientnet", "timm_vit"} <= set(list_backbones())


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("timm_resnet", dict(model="vit_small"), "timm_resnet: 'vit_small' is not a ResNet-family timm"),
        ("timm_resnet", dict(model="vit_tiny_patch16_224"), "ResNet-family.*builds a VisionTransformer"),
        ("timm_efficientnet", dict(model="resnet18"), "timm_efficientnet: 'resnet18' is not an EfficientNet"),
        ("timm_vit", dict(model="deit_tiny_distilled_patch16_224"), "timm_vit: .*VisionTransformerDistilled"),
        ("timm_resnet", dict(pretrained=True), "timm_resnet: pretrained=True is not accepted"),
        ("timm_vit", dict(img_size=32), "timm_vit: img_size=32 .* input_size"),
        ("timm_vit", dict(patch_drop_rate=0.5), "timm_vit: patch_drop_rate"),
        ("timm_resnet", dict(input_size=(64,)), "timm_resnet: input_size must be two positive ints"),
    ],
)
def test_bad_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_backbone(name, **kwargs)


def test_unknown_timm_kwarg_names_the_backbone():
    with pytest.raises(TypeError, match="timm_resnet: timm.create_model"):
        create_backbone("timm_resnet", embed_dim=3)


def test_pretrained_weights_from_a_local_file(tmp_path):
    """Every block copy starts from the file's parameters; a file for another model names its first bad key."""
    import safetensors.torch
    import torch

    from nas_mtl.backbones.timm_models import timm_trunk
    from nas_mtl.space import load_search_space

    config = dict(model="resnet18", in_chans=3, input_size=[32, 32])
    torch.manual_seed(123)
    source = timm_trunk("timm_resnet", **config).model  # stands in for a downloaded checkpoint
    state = {k: v.clone() for k, v in source.state_dict().items()}
    safetensors.torch.save_file({**state, "fc.weight": torch.zeros(10, 512)}, str(tmp_path / "r18.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "r18.pth")
    for name in ("r18.safetensors", "r18.pth"):
        bb = create_backbone("timm_resnet", **config, weights=str(tmp_path / name))
        for _ in range(2):  # two copies, both pretrained
            built = torch.nn.Sequential(*bb.build())
            for (key, p), q in zip(built.state_dict().items(), [state[k] for k in source.state_dict()]):
                assert torch.equal(p, q), key
    (tmp_path / "space.toml").write_text(
        'format = "nas_mtl.search_space/1"\n[backbone]\nname = "timm_resnet"\nmodel = "resnet18"\n'
        'weights = "r18.safetensors"\n'  # relative to the space file
    )
    space = load_search_space(tmp_path / "space.toml", input_shape=(3, 32, 32))
    assert torch.equal(space.backbone.build()[0][0].weight, state["conv1.weight"])
    torch.save({k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth: no 'layer2\.0\.conv1\.weight' for this model"):
        create_backbone("timm_resnet", **config, weights=str(tmp_path / "partial.pth")).build()
    with pytest.raises(ValueError, match=r"'conv1\.weight' is \(64, 3, 7, 7\) in the file, \(64, 1, 7, 7\) in the"):
        create_backbone("timm_resnet", **{**config, "in_chans": 1}, weights=str(tmp_path / "r18.pth")).build()
    with pytest.raises(ValueError, match="weights: file not found"):
        create_backbone("timm_resnet", **config, weights=str(tmp_path / "nope.pth"))


def test_without_a_loadable_timm_the_package_imports_and_timm_backbones_say_why():
    """A torchvision built for another torch (PyPI's 0.28.0 beside the CPU-only torch 2.13.0) makes importing timm
    fail; nas_mtl still imports, the built-in backbone works and a timm backbone is a one-line error."""
    import subprocess
    import sys

    import nas_mtl.backbones as backbones

    registered = {
        n for n in backbones.list_backbones() if backbones.BACKBONES.factory(n).__module__.endswith("timm_models")
    }
    assert registered == set(backbones.TIMM_BACKBONES)  # the fallback covers every timm backbone
    code = (
        "import sys; sys.modules['timm'] = None\n"  # `import timm` raises ImportError
        "from nas_mtl.backbones import create_backbone\n"
        "assert len(create_backbone('resnet_small')) > 0\n"
        "try:\n    create_backbone('timm_resnet', model='resnet18')\n"
        "except ValueError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.startswith("timm backbones are unavailable: importing timm failed (") and "resnet_small" in out


def test_timm_is_imported_only_when_a_timm_backbone_is_used():
    """Importing timm (and the torchvision it imports) takes seconds, scikit-learn and scipy.stats half a second
    each, which every command and worker process paid before: ``nas_mtl`` and its command line import them where
    first used (timm when a timm backbone is built), and the stream-aware twin of timm's BatchNormAct2d exists once
    timm does."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "import nas_mtl, nas_mtl.cli, nas_mtl.network as network\n"
        "nas_mtl.cli.build_parser()  # every search method's module\n"
        "from nas_mtl.backbones import create_backbone, list_backbones\n"
        "heavy = [m for m in ('timm', 'torchvision', 'sklearn', 'scipy.optimize', 'scipy.stats') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert {'timm_resnet', 'timm_vit', 'timm_efficientnet'} <= set(list_backbones())\n"
        "assert 'StreamBatchNormAct2d' not in vars(network)\n"
        "bb = create_backbone('timm_efficientnet', model='mobilenetv3_small_050', input_size=[32, 32])\n"
        "assert 'timm' in sys.modules\n"
        "from timm.layers.norm_act import BatchNormAct2d\n"
        "twins = network.stream_norms(torch.nn.Sequential(*bb.build()))\n"
        "print(issubclass(network.StreamBatchNormAct2d, BatchNormAct2d),"
        " any(isinstance(t, BatchNormAct2d) for t in twins))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
