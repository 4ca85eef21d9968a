"""AdaShare (Sun et al., "AdaShare: Learning What To Share For Efficient Deep Multi-Task Learning", NeurIPS 2020).

Every skippable block l and task t get policy logits over {select, skip}; a task runs the one shared copy
of block l when it selects it and the identity shortcut when it skips it. Logits and weights are learned
jointly through Gumbel-softmax samples of the decisions, then a policy is drawn from the learned
distribution and retrained from scratch as a :class:`~nas_mtl.graph.SharingGraph` (``from_policy``).

Schedule (paper Sec. 3; reference code github.com/sunxm2357/AdaShare @27e6fb5, ``train.py``):

1. warm-up: ``warmup_epochs`` of hard sharing (every task selects every block);
2. ``epochs`` search rounds, each one pass of weight updates on ``data.train`` with the policy fixed, then
   one pass of policy updates on ``data.val`` with the weights fixed (the reference alternates one pass
   over each of two halves of its training set; we use the validation split, as the issue asks);
3. curriculum: in round r only the last ``min(S, r // curriculum_speed + 1)`` of the S skippable blocks have
   a decision; the earlier ones are fixed to "select" and their logits get no gradient at all (the paper's
   statement; the reference also lets its sharing term and Adam's weight decay move the fixed ones);
4. the Gumbel temperature starts at ``tau`` and is multiplied by ``tau_decay`` after every round.

Policy loss (paper Sec. 3): ``Σ_t w_t L_t + λ_sparsity L_sparsity + λ_sharing L_sharing`` over the active
blocks A:

* ``L_sparsity = Σ_t mean_{l∈A} −log p_skip[l, t]`` (reference ``get_sparsity_loss2``: cross-entropy of the
  logits towards "skip"; the paper writes ``Σ log α`` with α the select probability, same direction);
* ``L_sharing = Σ_{t<t'} Σ_{l∈A} (S − l)/S · |z[l, t] − z[l, t']|`` with ``z`` the select log-odds and
  l = 0..S−1 from the input side: the paper's (L − l)/L weights, decreasing with depth so that early blocks
  are shared (counting l from 0 keeps a pull of 1/S on the last block; counted from 1 it would get none).
  The reference's ``get_hamming_loss`` uses (l + 1)/L (increasing with depth) on the raw select
  logit; on two-column logits only the log-odds difference is zero exactly when two tasks' select
  probabilities agree, so we use that.

Defaults, all from the reference's NYUv2 2-task config (``yamls/adashare/nyu_v2_2task.yml``) and
``envs/blockdrop_env.py``: ``tau`` 5 (init_temp), ``tau_decay`` 0.965 (decay_temp), policy Adam lr 0.01 and
weight decay 5e-4, weights lr 1e-3 (lr = backbone_lr) with weight decay 1e-4 — Adam(betas=(0.5, 0.999))
during the warm-up, SGD(momentum 0.9) afterwards —, λ_sparsity 0.05 (reg_w), λ_sharing 0.05 (reg_w_hamming;
other configs: NYUv2 3-task 0.001 / 0.05, CityScapes 0.01 / 0.1, Taskonomy 0.001 / 0.005), curriculum_speed 3
(Taskonomy 1), logits initialised equal (p_select = 0.5, init_method "equal"), soft Gumbel samples
(hard_sampling False), 8 policies sampled at the end (README, "Retrain Phase"). The reference retrains the 8
samples and reports the best; we rank them by the supernet's validation loss instead and return the others
as candidates. Not reproduced: the reference's step decay of the warm-up learning rate (x0.5 every 4000
iterations) and its choice of the "best" policy checkpoint by test-set metrics. Budgets (epochs, warm-up, batch
size 64 vs 16) are scaled down for CPU; for budgets of a few hundred policy steps, raise ``policy_lr`` and
lower ``tau_decay`` (the reference takes ~8000 policy steps and ~300 temperature decays).

Execution: the supernet is a :class:`~nas_mtl.network.MultiTaskNetwork` with one copy of every block, run
under gates (``network(x, gates=...)``), the executor every retrained graph uses too. Why it is faster than the
reference, which runs the whole backbone once per task per step: blocks without a decision yet (the curriculum's
early blocks, the non-skippable ones before the first decision) run once for all tasks; from the first decided
block on, with soft gates or hard gates whose gradient is needed, every task continues on its own stream (the
gradient of task t's gate needs ``block(h_t) − h_t``, so sharing a stream would merge gate gradients), all
streams interleaved along the batch in one tensor so that a block runs once per step on all of them. Hard gates
without gradient (weight phase with ``hard_sampling``, final scoring) are a policy, run as its
:class:`~nas_mtl.graph.SharingGraph`: equal select/skip prefixes once, skipped blocks not at all.
BatchNorm: the reference runs each task through the shared backbone in a separate call, so its BN layers
share affine parameters and running statistics but normalise each task's activations with that task's
batch statistics. The stream-aware twins of :func:`~nas_mtl.network.stream_norms` do the same in one call per
layer, which keeps batching exact (timm's ``BatchNormAct2d`` included: its dropout and activation follow the
norm; a BatchNorm subclass with another forward of its own is rejected with a TypeError).
``benchmarks/adashare.py`` measures both executions side by side.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from ..data import MultiTaskData
from ..runs import load_checkpoint, save_atomic, write_json_atomic
from ..space import SearchSpace
from . import SearchMethod, SearchResult, register_search_method
from .adashare_config import FINALS, TRAIN, TRAIN_OPTIONS, AdaShareConfig, check_adashare
from .adashare_supernet import SELECT, AdaShareSupernet, depth_weights, policy_regularizer, sharing_loss, sparsity_loss
from .adashare_training import CHECKPOINT, AdaShareSearch

NEAR_TIE = 0.1
"""A learned select probability within this of 0.5 is a near-tie: the argmax there is a coin the sparsity term tips.
Measured in ``benchmarks/search_quality.py``: with the paper's policy settings at a budget of 80 policy steps the
probabilities end in 0.40-0.51 and at 4 of 5 seeds the argmax skips every block for every task (13 Δm points
below hard sharing when retrained); see :func:`adashare_search`."""
HISTORY = "policy_history.json"


def adashare_search(
    data: MultiTaskData,
    space: SearchSpace,
    config: AdaShareConfig = AdaShareConfig(),  # noqa: B008  (a frozen dataclass: an immutable default)
    run_dir: str | Path | None = None,
) -> SearchResult:
    """Learn an AdaShare select/skip policy and return it as a SharingGraph to retrain from scratch.

    With ``run_dir``, the search is checkpointed after every epoch (``adashare_checkpoint.pt``) and a
    checkpoint found there is resumed (same data, space and settings; ``epochs`` may grow); the per-epoch
    select probabilities go to ``policy_history.json`` and the heatmaps to ``policy.png`` /
    ``policy_epochs.png``. Save the result with ``result.save(run_dir)``. ``info`` holds the histories, the
    ranked candidate policies, the argmax policy's graph (``argmax_graph``, also when ``final`` is sample) and
    the cost, also in epochs of hard-sharing training (``cost_in_hard_sharing_epochs``, measured on the warm-up).
    ``near_ties`` counts the learned select probabilities within :data:`NEAR_TIE` of 0.5 (of ``learned_cells``);
    when all of them are, the policy was not learned and a UserWarning says so.
    """
    from .adashare_plots import plot_policy, plot_policy_history

    search = AdaShareSearch(data, space, config)
    ckpt = None
    try:
        if run_dir is not None:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            ckpt = run_dir / CHECKPOINT
            if ckpt.exists():
                search.load_state_dict(load_checkpoint(ckpt), ckpt)
        while search.epoch < search.total_epochs:
            search.run_epoch()
            if run_dir is not None:
                save_atomic(search.state_dict(), ckpt)
                write_json_atomic(
                    {"tasks": list(data.task_names), "blocks": list(search.blocks), "history": search.history},
                    run_dir / HISTORY,
                )
    finally:
        if search.balancer is not None:
            search.balancer.detach()
    t0 = time.perf_counter()
    ranked = search.final_policies()
    prob = search.net.select_prob()
    seconds = search.elapsed + time.perf_counter() - t0
    graphs = [search.graph(p["select"], name=f"adashare#{i}", val_loss=p["val_loss"]) for i, p in enumerate(ranked)]
    warmup_s = sum(h["seconds"] for h in search.history if h["phase"] == "warmup")
    learned = prob[search.unlearned :]
    near_ties = int(((learned - 0.5).abs() < NEAR_TIE).sum())
    if learned.numel() and near_ties == learned.numel():
        warnings.warn(
            f"adashare: every learned select probability ended within {NEAR_TIE} of 0.5 "
            f"({float(learned.min()):.2f}-{float(learned.max()):.2f}): the policy was not learned at this budget and "
            "its argmax follows the sparsity term; raise policy_lr, lower tau_decay or search longer "
            "(docs/searches.md, AdaShare at small budgets)",
            stacklevel=2,
        )
    info = {
        "config": config.to_dict(),
        "tasks": list(data.task_names),
        "blocks": list(search.blocks),
        "select_prob": prob.tolist(),
        "policies": ranked,
        "near_ties": near_ties,  # learned (block, task) probabilities within NEAR_TIE of 0.5
        "learned_cells": learned.numel(),
        # the argmax policy also when final = sample (the paper's two answers: its argmax and the best sample)
        "argmax_graph": search.graph(search.argmax_policy(), name="adashare argmax").to_dict(),
        "warmup_seconds": warmup_s,
        "search_seconds": search.elapsed - warmup_s,
        # the whole search in epochs of hard-sharing training (the warm-up's, same data and batch size)
        "cost_in_hard_sharing_epochs": seconds / (warmup_s / config.warmup_epochs) if config.warmup_epochs else None,
        "history": search.history,
    }
    if run_dir is not None:
        chosen = ranked[0]["select"]
        plot_policy(prob.tolist(), search.blocks, data.task_names, run_dir / "policy.png", chosen)
        plot_policy_history(search.history, search.blocks, data.task_names, run_dir / "policy_epochs.png")
    return SearchResult("adashare", graphs[0].with_meta(select_prob=prob.tolist()), seconds, tuple(graphs[1:]), info)


@register_search_method("adashare")
def _method() -> SearchMethod:
    return SearchMethod(
        AdaShareConfig,
        adashare_search,
        check=check_adashare,
        help="AdaShare: differentiable select/skip policy per block and task (Sun et al. 2020)",
    )


__all__ = [
    "SELECT",
    "AdaShareConfig",
    "AdaShareSupernet",
    "CHECKPOINT",
    "FINALS",
    "HISTORY",
    "TRAIN",
    "TRAIN_OPTIONS",
    "adashare_search",
    "check_adashare",
    "depth_weights",
    "policy_regularizer",
    "sharing_loss",
    "sparsity_loss",
]
