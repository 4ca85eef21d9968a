"""MGDA and MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

Shared parameters move along the min-norm element of the convex hull of the task gradients
(their Eq. 3, solved by :func:`~nas_mtl.balancing.min_norm.min_norm_weights`), a direction that does
not increase any task's loss; task-specific parameters follow their own task's gradient (Algorithm 2).

Modes:
  * ``params``: exact per-task gradients of the shared parameters. On any sharing graph each
    parameter group shared by >= 2 tasks solves its own min-norm problem over the tasks that use it.
  * ``ub`` (MGDA-UB, Section 3.3): α from the gradients w.r.t. the shared representation Z (their
    Eq. 6, the upper bound), then ONE backward pass through the shared trunk with ``Σ_t λ_t ∂L_t/∂Z``.
    Z is the output of the deepest block that all tasks run together (the trunk for hard sharing),
    captured by a forward hook; parameters after Z (heads, and for trees the branches) are handled as
    in ``params`` mode with the per-task gradients that computing ∂L_t/∂Z yields anyway. Without such
    a block (independent networks) ``ub`` equals ``params``.

Normalisation (reference code's ``gradient_normalizers``; used only to compute α): each task gradient
is divided by ``n_t`` = ``l2``: its norm, ``loss``: the loss value, ``loss+``: loss x norm, ``none``: 1.
α solves the min-norm problem for the normalised gradients ``ĝ_t = g_t / n_t`` and the update is
their min-norm element ``Σ_t α_t ĝ_t``, i.e. loss gradients weighted ``λ_t = α_t / n_t`` (as LibMTL
does), which is a common descent direction for every task whatever the normalisation. (The authors'
training script instead reweights the raw losses by α, which is the same only for ``none``.)
:meth:`MGDA.backward` returns α.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import register_balancer
from .min_norm import min_norm_weights
from .representation import MODES, RepresentationBalancer, shared_trunk, ub_cost

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def normalizers(normalization: str, gram: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Per-task divisors ``n_t`` (zero ones become 1: a zero gradient stays zero).

    Raises:
        ValueError: ``loss`` / ``loss+`` with a negative loss (the normalisation would flip its gradient).
    """
    if normalization in ("loss", "loss+") and (loss < 0).any():
        raise ValueError(
            f"mgda: normalization {normalization!r} needs non-negative losses, got {loss.tolist()}; use 'l2' or 'none'"
        )
    norm = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    n = {"none": np.ones_like(loss), "l2": norm, "loss": loss, "loss+": loss * norm}[normalization]
    return np.where(n > 0, n, 1.0)


def mgda_weights(gram: np.ndarray, loss: np.ndarray, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """``(λ, α)``: α minimises ``||Σ α_t ĝ_t||²`` over the simplex (``ĝ_t = g_t / n_t``), λ = α / n."""
    n = normalizers(normalization, gram, loss)
    alpha = min_norm_weights(gram / np.outer(n, n))
    return alpha / n, alpha


@register_balancer("mgda")
class MGDA(RepresentationBalancer):
    """MGDA (Sener & Koltun 2018): the min-norm common descent direction of the task gradients.

    Args:
        mode: ``"params"`` (exact gradients of the shared parameters) or ``"ub"`` (MGDA-UB: gradients
            w.r.t. the shared representation, one backward through the trunk; see :mod:`.representation`).
        normalization: ``"none"`` (the paper's algorithm), ``"l2"``, ``"loss"`` or ``"loss+"``.
    """

    def __init__(self, mode: str = "params", normalization: str = "none") -> None:
        self._set_mode(mode, "mgda")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"mgda: normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
        self.normalization = normalization

    def __repr__(self) -> str:
        return f"MGDA(mode={self.mode!r}, normalization={self.normalization!r})"

    def options(self) -> dict[str, Any]:
        return {"normalization": self.normalization}  # the mode is in the name ("mgda" / "mgda-ub")

    def group_weights(self, gram: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return mgda_weights(gram, loss, self.normalization)


@register_balancer("mgda-ub")
@ub_cost
def mgda_ub(normalization: str = "none") -> MGDA:
    """MGDA-UB (Sener & Koltun 2018, Sec. 3.3): MGDA with gradients w.r.t. the shared representation."""
    return MGDA(mode="ub", normalization=normalization)


__all__ = [
    "MGDA",
    "MODES",
    "NORMALIZATIONS",
    "mgda_ub",
    "mgda_weights",
    "normalizers",
    "shared_trunk",
]
