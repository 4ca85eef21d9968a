"""The families dataset (nas_mtl/data/families.py): its targets against closed forms, its label dealing, its
planted tree, and -- retrained from scratch -- that the planted tree beats hard sharing and independent networks."""

import numpy as np
import pytest
import torch

from nas_mtl.baselines import primary_directions, train_graph
from nas_mtl.data import create_dataset
from nas_mtl.data.families import AXES, PLANTED_GROUPS, deal_labels, generate, planted_tree
from nas_mtl.metrics import delta_m
from nas_mtl.search.exhaustive import count_trees
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig


@pytest.fixture(scope="module")
def data():
    return create_dataset("families", seed=0)


def test_each_familys_targets_are_three_projections_of_one_angle():
    """cos(x) + cos(x - 120°) + cos(x - 240°) = 0 for every x, and the projections at 0° and 120° give the angle
    back: each family's three targets hold exactly one two-dimensional feature."""
    _, targets = generate(500, 16, np.random.default_rng(0))
    for family in ("stripes", "hue"):
        t = np.concatenate([targets[f"{family}_{k}"] for k in AXES], axis=1)
        assert np.abs(t.sum(axis=1)).max() <= 8 * np.finfo(np.float64).eps
        assert np.abs(t).max() <= 1.0 and t.min() < -0.99 and t.max() > 0.99  # the whole circle is drawn


def test_the_two_families_are_independent(data):
    """Cross-family correlations of the test targets are at the level of chance: |r| < 4 / sqrt(n)."""
    y = {name: data.test.targets[name].squeeze(1).numpy() for name in data.task_names}
    n = len(next(iter(y.values())))
    for a in PLANTED_GROUPS[0]:
        for b in PLANTED_GROUPS[1]:
            assert abs(np.corrcoef(y[a], y[b])[0, 1]) < 4 / np.sqrt(n)


def test_each_training_image_is_labelled_for_one_task_per_family(data):
    labelled = {t: ~torch.isnan(data.train.targets[t]).squeeze(1) for t in data.task_names}
    for group in PLANTED_GROUPS:
        per_image = sum(labelled[t].long() for t in group)
        assert per_image.eq(1).all()
    assert data.info["labels_per_task"] == {t: 200 for t in data.task_names}
    for split in (data.val, data.test):  # evaluation data carries every label
        assert all(not torch.isnan(split.targets[t]).any() for t in data.task_names)
    masks = deal_labels(7, [("a", "b", "c")], np.random.default_rng(0))
    assert [int(m.sum()) for m in masks.values()] == [3, 2, 2]


def test_all_labels_keeps_every_label_and_the_images_do_not_change(data):
    full = create_dataset("families", seed=0, few_labels=False)
    torch.testing.assert_close(full.train.images, data.train.images, rtol=0, atol=0)
    assert all(not torch.isnan(full.train.targets[t]).any() for t in full.task_names)


def test_the_planted_tree_gives_each_family_its_network_in_a_space_of_over_ten_thousand_trees(data):
    space = load_search_space("families", input_shape=data.input_shape)
    tree = planted_tree(data.task_names, space)
    assert [set(g) for g in tree.partition(0)] == [set(g) for g in PLANTED_GROUPS]
    assert tree.partition(len(space.layers) - 1) == tree.partition(0)
    assert count_trees(len(data.task_names), len(space.branchable)) == 12915


@pytest.mark.slow
def test_retrained_the_planted_tree_beats_hard_sharing_and_independent_networks(seed):
    """Retrained from scratch (600 images, 30 epochs), on each seed: Δm of the planted tree against that seed's
    independent networks is above +3, and above hard sharing's by more than 15.

    benchmarks/families.py (seeds 0-4, 1 thread) measured planted - independent at +17.6 Δm [+7.3, +27.9]
    (per seed +6.2 to +26.6) and planted - hard at +49.8 [+42.0, +57.5] (per seed +39.2 to +54.9); these margins
    hold for seeds 0-4 at 1 and 2 torch threads."""
    data = create_dataset("families", seed=seed)
    space = load_search_space("families", input_shape=data.input_shape)
    config = TrainConfig(epochs=30, batch_size=64, lr=3e-3, device="cpu", seed=seed, progress=False)
    tests = {
        name: train_graph(graph, data, space, config)[1].test
        for name, graph in (
            ("independent", space.independent(data.task_names)),
            ("planted", planted_tree(data.task_names, space)),
            ("hard", space.hard_sharing(data.task_names)),
        )
    }
    directions = primary_directions(data)
    planted = delta_m(tests["planted"], tests["independent"], directions)
    hard = delta_m(tests["hard"], tests["independent"], directions)
    assert planted > 3.0 and planted - hard > 15.0, (planted, hard)
