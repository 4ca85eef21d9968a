"""One AdaShare search's state and training (:class:`AdaShareSearch`): the warm-up and the search rounds (weights
on train, policy on val), checkpoints, and the final policies drawn and ranked. The schedule and its sources are
in :mod:`nas_mtl.search.adashare`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..balancing import create_balancer
from ..data import MultiTaskData, data_fingerprint, iterate_batches
from ..graph import SharingGraph
from ..network import Gates
from ..progress import progress
from ..runs import INTEGER, LIST, NUMBER, TABLE, TENSOR, Schema, check_record, check_settings
from ..space import SearchSpace
from ..tasks import labelled_losses
from ..train import TrainConfig, balanced_backward, kept_buffers, resolve_device, seed_everything
from ..train_step import autocast
from .adashare_config import AdaShareConfig, check_adashare
from .adashare_supernet import AdaShareSupernet, policy_regularizer

CHECKPOINT = "adashare_checkpoint.pt"
CHECKPOINT_SCHEMA: Schema = {
    "identity": TABLE,
    "epoch": INTEGER,
    "elapsed": NUMBER,
    "history": LIST,
    "net": TABLE,
    "weight_opt": TABLE,
    "policy_opt": TABLE,
    "gumbel": TENSOR,
    "rng": TENSOR,
}
"""What an AdaShare checkpoint (:data:`CHECKPOINT`) holds besides an optional ``balancer`` state table."""


def _steps(dataset: Dataset, batch_size: int, steps: int | None, seed: int) -> Iterator:
    """``steps`` shuffled batches (None: one pass), passes reshuffled by a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while steps is None or done < steps:
        for batch in iterate_batches(dataset, batch_size, shuffle=True, generator=generator, drop_last=True):
            yield batch
            done += 1
            if done == steps:
                return
        if steps is None:
            return


class AdaShareSearch:
    """The state of one search: supernet, optimisers, RNGs, history; one method per epoch kind."""

    def __init__(self, data: MultiTaskData, space: SearchSpace, config: AdaShareConfig) -> None:
        check_adashare(data, space, config)
        self.data, self.space, self.config = data, space, config
        self.device = resolve_device(config.train.device)
        seed_everything(config.train.seed)
        policy_layers = [i for i, name in enumerate(space.layers) if name in space.skippable]
        self.net = AdaShareSupernet(space.backbone, data.tasks, policy_layers).to(self.device)
        self.weights = [config.task_weights.get(t, 1.0) for t in data.task_names]
        self.blocks = tuple(space.layers[i] for i in policy_layers)
        self.gumbel = torch.Generator().manual_seed(config.train.seed)
        self.policy_opt = torch.optim.Adam([self.net.logits], lr=config.policy_lr)
        # None: the reference's weighted sum; else a balancer on the weight updates (detached by close())
        self.balancer = (
            None if config.balancer == "equal" else create_balancer(config.balancer).prepare(self.net.network)
        )
        self.weight_opt = self._weight_optimizer(search=False)  # replaced by SGD at search round 0
        self.epoch, self.elapsed, self.history = 0, 0.0, []
        self.fingerprint = data_fingerprint(data)  # recorded with every checkpoint, compared on resume

    def _weight_optimizer(self, search: bool) -> torch.optim.Optimizer:
        params, c = self.net.weight_parameters(), self.config
        if search:
            return torch.optim.SGD(params, lr=c.train.lr, momentum=0.9, weight_decay=c.train.weight_decay)
        return torch.optim.Adam(params, lr=c.train.lr, betas=(0.5, 0.999), weight_decay=c.train.weight_decay)

    @property
    def total_epochs(self) -> int:
        return self.config.warmup_epochs + self.config.train.epochs

    def _validate_targets(self, x: Tensor, y: Mapping[str, Tensor]) -> None:
        """Each task's ``validate_target`` on one batch (ValueError naming the task), as ``train.py`` does."""
        for t in self.data.tasks:
            t.validate_target(y[t.name], x.shape[0])

    def _loss(
        self, x: Tensor, y: Mapping[str, Tensor], gates: Gates, where: str
    ) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        """The weighted total, the per-task values (checked finite) and the per-task loss tensors."""
        targets = {k: v.to(self.device) for k, v in y.items()}
        with autocast(self.config.train.precision, self.device):  # the policy step's forward too
            losses, _ = labelled_losses(self.net(x.to(self.device), gates), targets, self.data.tasks)
        losses = {k: v.float() for k, v in losses.items()}
        if not losses:  # no task has a label in this batch
            return torch.zeros((), device=self.device), {}, {}
        values = dict(zip(losses, torch.stack([v.detach() for v in losses.values()]).tolist()))  # one host copy
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"adashare: non-finite loss for task(s) {bad} at {where}")
        total = sum(w * losses[t] for w, t in zip(self.weights, self.data.task_names) if t in losses)
        return total, values, losses

    def _phase(self, split: Dataset, steps: int | None, seed: int, desc: str, step_fn) -> dict[str, float]:
        """Run ``step_fn(x, y, where) -> per-task losses`` over batches (targets of the first one validated);
        mean per-task loss."""
        sums: dict[str, float] = dict.fromkeys(self.data.task_names, 0.0)
        n = dict.fromkeys(self.data.task_names, 0)  # steps in which each task had labels
        batches = _steps(split, self.config.train.batch_size, steps, seed)
        total = steps if steps is not None else len(split) // self.config.train.batch_size
        for i, (x, y) in enumerate(progress(batches, desc, self.config.train.progress, total=total)):
            if i == 0:
                self._validate_targets(x, y)
            for k, v in step_fn(x, y, f"epoch {self.epoch + 1} {desc} step {i + 1}").items():
                sums[k] += v
                n[k] += 1
        return {k: v / max(n[k], 1) for k, v in sums.items()}

    def _weighted(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {t: w * losses[t] for w, t in zip(self.weights, self.data.task_names) if t in losses}

    def _weight_step(self, gates_fn):
        def step(x, y, where):
            gates = gates_fn()
            total, values, losses = self._loss(x, y, gates, where)
            if not losses:
                return values
            self.weight_opt.zero_grad(set_to_none=True)
            if self.balancer is None:
                total.backward()
            else:
                try:
                    balanced_backward(self.balancer, self._weighted(losses), self.net.network)
                except FloatingPointError as err:
                    raise FloatingPointError(f"adashare: {err} at {where}") from None
            self.weight_opt.step()
            if self.balancer is not None:

                def recompute() -> dict[str, Tensor]:  # same batch, same gates, updated weights
                    targets = {k: v.to(self.device) for k, v in y.items()}
                    with torch.no_grad(), kept_buffers(self.net):
                        out = self.net(x.to(self.device), gates)
                    return self._weighted(labelled_losses(out, targets, self.data.tasks)[0])

                self.balancer.after_step(recompute)
            return values

        return step

    def run_epoch(self) -> dict[str, Any]:
        """One warm-up epoch or one search round (weights on train, then policy on val)."""
        c, e = self.config, self.epoch
        t0 = time.perf_counter()
        self.net.train()
        seed = c.train.seed * 1_000_003 + 2 * e
        label = f"adashare {e + 1}/{self.total_epochs}"
        if e < c.warmup_epochs:
            hard_sharing = [None] * len(self.net.blocks)
            train_loss = self._phase(
                self.data.train, None, seed, f"{label} warm-up", self._weight_step(lambda: hard_sharing)
            )
            record = {"phase": "warmup", "train_loss": train_loss}
            if self.balancer is not None:
                self.balancer.end_epoch(train_loss)
        else:
            r = e - c.warmup_epochs
            if r == 0:
                self.weight_opt = self._weight_optimizer(search=True)
            tau, active = c.tau_at(r), c.active_at(r, len(self.blocks))

            def gates(grad: bool) -> Gates:
                return self.net.sample_gates(tau, active, c.hard_sampling, self.gumbel, grad)

            train_loss = self._phase(
                self.data.train, c.weight_steps, seed, f"{label} weights", self._weight_step(lambda: gates(False))
            )
            if self.balancer is not None:
                self.balancer.end_epoch(train_loss)

            def policy_step(x, y, where):
                total, losses, _ = self._loss(x, y, gates(True), where)
                total = total + policy_regularizer(self.net.logits, active, c)
                self.policy_opt.zero_grad(set_to_none=True)
                total.backward()
                self.policy_opt.step()
                return losses

            weights = self.net.weight_parameters()
            for p in weights:
                p.requires_grad_(False)
            try:
                val_loss = self._phase(self.data.val, c.policy_steps, seed + 1, f"{label} policy", policy_step)
            finally:
                for p in weights:
                    p.requires_grad_(True)
            record = {
                "phase": "search",
                "round": r + 1,
                "tau": tau,
                "active_blocks": active,
                "train_loss": train_loss,
                "val_loss": val_loss,
            }
        self.elapsed += time.perf_counter() - t0
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            **record,
            "select_prob": self.net.select_prob().tolist(),
            "seconds": time.perf_counter() - t0,
            "elapsed": self.elapsed,
        }
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ checkpoint
    def _identity(self) -> dict[str, Any]:
        free = ("epochs", "final", "num_samples", *TrainConfig.RUNTIME_FIELDS)  # may change between resumes
        c = {k: v for k, v in self.config.to_dict().items() if k not in free}
        return {
            "tasks": list(self.data.task_names),
            "layers": list(self.space.layers),
            "blocks": list(self.blocks),
            "config": c,
            "data": self.fingerprint,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "identity": self._identity(),
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "history": self.history,
            "net": self.net.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
            "gumbel": self.gumbel.get_state(),
            "balancer": self.balancer.state_dict() if self.balancer is not None else {},
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], source: Path) -> None:
        net = state.get("net")
        if isinstance(net, dict) and not any(str(k).startswith("network.") for k in net):
            raise ValueError(
                f"{source}: an AdaShare checkpoint of an earlier nas_mtl version (before the shared executor); "
                "delete it to restart the search"
            )
        action = "delete it to restart the search"
        check_record(state, source, "AdaShare checkpoint", CHECKPOINT_SCHEMA, action, {"balancer": TABLE})
        check_settings(state["identity"], self._identity(), source, "checkpoint")
        self.net.load_state_dict(state["net"])
        self.epoch, self.elapsed, self.history = state["epoch"], state["elapsed"], list(state["history"])
        self.weight_opt = self._weight_optimizer(search=self.epoch > self.config.warmup_epochs)
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        if self.balancer is not None and state.get("balancer"):
            self.balancer.load_state_dict(state["balancer"])
        self.gumbel.set_state(state["gumbel"].cpu())
        torch.set_rng_state(state["rng"].cpu())

    # ------------------------------------------------------------------ final policy
    @torch.no_grad()
    def val_loss(self, select: Sequence[Sequence[bool]]) -> float:
        """Weighted validation loss of a hard policy under the supernet's weights.

        BatchNorm normalises with batch statistics (each stream its own), as in the search: the running
        statistics were gathered under soft gates, which no hard policy reproduces, and would rank policies by
        that mismatch. They are left as they were.
        """
        self.net.train()
        saved = [b.clone() for b in self.net.buffers()]
        gates = self.net.fixed_gates(select)
        total, n = 0.0, 0
        n_val = len(self.data.val)  # batches of (nearly) equal size, so that their statistics are alike
        size = math.ceil(n_val / math.ceil(n_val / max(self.config.train.batch_size, 256)))
        for i, (x, y) in enumerate(iterate_batches(self.data.val, size, shuffle=False)):
            if i == 0:
                self._validate_targets(x, y)
            loss, _, _ = self._loss(x, y, gates, "final scoring")
            total += float(loss) * x.shape[0]
            n += x.shape[0]
        for b, old in zip(self.net.buffers(), saved):
            b.copy_(old)
        return total / n

    @property
    def unlearned(self) -> int:
        """Blocks (from the input side) the curriculum never reached: always selected during the search, their
        logits still at the initial p = 0.5."""
        return len(self.blocks) - self.config.active_at(self.config.train.epochs - 1, len(self.blocks))

    def final_prob(self) -> Tensor:
        """Select probabilities the final policy is drawn from: the learned ones, 1 for unlearned blocks."""
        prob = self.net.select_prob()
        prob[: self.unlearned] = 1.0
        return prob

    def argmax_policy(self) -> list[list[bool]]:
        """Select where p(select) >= 0.5 (a tie selects, the reference's argmax; unlearned blocks stay selected)."""
        return (self.final_prob() >= 0.5).tolist()

    def final_policies(self) -> list[dict[str, Any]]:
        """Candidate policies, best first: the argmax (:meth:`argmax_policy`), or ``num_samples`` draws from
        :meth:`final_prob` ranked by validation loss."""
        prob = self.final_prob()
        if self.config.final == "argmax":
            policies = [self.argmax_policy()]
        else:
            generator = torch.Generator().manual_seed(self.config.train.seed)
            draws = [
                (torch.rand(prob.shape, generator=generator, device="cpu") < prob).tolist()
                for _ in range(self.config.num_samples)
            ]
            policies = [p for i, p in enumerate(draws) if p not in draws[:i]]
        scored = [{"select": p, "val_loss": self.val_loss(p)} for p in policies]
        return sorted(scored, key=lambda s: s["val_loss"])

    def graph(self, select: Sequence[Sequence[bool]], **meta: Any) -> SharingGraph:
        by_layer = dict(zip(self.net.policy_layers, select))
        rows = [by_layer.get(i, [True] * len(self.data.task_names)) for i in range(len(self.space.layers))]
        return SharingGraph.from_policy(self.data.task_names, self.space.layers, rows, self.space.skippable).with_meta(
            method="adashare", **meta
        )


__all__ = ["CHECKPOINT", "CHECKPOINT_SCHEMA", "AdaShareSearch"]
