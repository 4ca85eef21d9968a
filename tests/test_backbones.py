import torch
from torch import nn

from nas_mtl.backbones import create_backbone


def test_resnet_small_blocks_compose_and_skippable_blocks_are_identity_shortcuts():
    bb = create_backbone("resnet_small", in_chans=2, input_size=(16, 16), widths=(4, 8, 8), depths=(2, 1, 2))
    assert bb.layer_names == ("stem", "s0.b0", "s0.b1", "s1.b0", "s2.b0", "s2.b1")
    assert bb.skippable == ("s0.b0", "s0.b1", "s2.b1")  # s1.b0, s2.b0 downsample
    blocks = bb.build()
    x = torch.randn(2, 2, 16, 16)
    for info, block in zip(bb.blocks, blocks):
        y = block(x)
        if info.skippable:
            assert y.shape == x.shape and block.has_identity_shortcut
        x = y
    assert bb.feature_shape == tuple(x.shape[1:]) == (8, 4, 4)


def test_layer_costs_match_modules():
    bb = create_backbone("resnet_small", in_chans=1, input_size=(8, 8), widths=(4,), depths=(1,))
    costs = bb.layer_costs()
    stem, block = bb.build()
    assert costs.params == (
        sum(p.numel() for p in stem.parameters()),
        sum(p.numel() for p in block.parameters()),
    )
    # closed form: stem conv 3x3 1->4 on 8x8; block: two 3x3 4->4 convs on 8x8 (BN/ReLU/add are not MACs)
    assert costs.macs == (9 * 1 * 4 * 64, 2 * 9 * 4 * 4 * 64)


def test_build_copies_are_fresh():
    bb = create_backbone("resnet_small", in_chans=1, input_size=(8, 8), widths=(4,), depths=(2,))
    copies = bb.build_copies([1, 3, 2])
    assert [len(r) for r in copies] == [1, 3, 2]
    w = [m.conv1.weight for m in copies[1]]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    assert all(isinstance(m, nn.Module) for r in copies for m in r)


def test_lazy_feature_shape_does_not_consume_the_global_rng():
    """The first access to feature_shape / layer_costs builds a reference trunk; seeded code that touches
    it (e.g. head construction) must draw the same numbers whether or not it was computed before."""
    torch.manual_seed(0)
    before = torch.rand(3)
    bb = create_backbone("resnet_small", in_chans=1, input_size=(8, 8), widths=(4,), depths=(1,))
    torch.manual_seed(0)
    assert bb.feature_shape == (4, 8, 8) and bb.layer_costs().params
    torch.testing.assert_close(torch.rand(3), before, rtol=0, atol=0)
