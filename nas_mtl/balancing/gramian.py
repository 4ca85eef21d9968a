"""Gradient-combining methods that need only the Gram matrix ``G = J Jᵀ`` of the task gradients.

Each is a pure function ``G -> w`` (the update is ``Jᵀ w = Σ_t w_t g_t``) run per shared parameter group by
:class:`~.grouped.GroupedGradientBalancer` (task-specific parameters get their own task's gradient); with hard
sharing that is the published method on the trunk. All solves are in float64 on the T x T matrix.

* CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021, Alg. 1 and the
  authors' code): ``w* = argmin_{w ∈ Δ} wᵀ G 1/T + c ||g0|| sqrt(wᵀ G w)`` with ``||g0||² = 1ᵀ G 1 / T²``; the
  update ``g0 + c ||g0|| / ||g_w*|| · g_w*``, divided by ``1 + c²`` (``rescale=1``, the authors' default),
  ``1 + c`` (2) or not at all (0, as torchjd).
* IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021): the update has equal projections on
  every task's unit gradient: ``w ∝ G⁺ d``, ``d_t = ||g_t||``, ``Σ w = 1``.
* Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023, the
  authors' Procrustes solver): with ``G = V Λ Vᵀ`` over its numerically non-zero eigenvalues,
  ``B = sqrt(λ_scale) V Λ^{-1/2} Vᵀ`` makes the task gradients orthogonal with equal norms; the update is the
  sum of the aligned gradients, ``w = B 1`` (torchjd averages them: its weights are these / T). ``scale``:
  ``min`` (λ_min, the authors' default), ``median`` or ``rmse`` (mean eigenvalue).
* UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024): the mean of the task
  gradients each projected onto the dual cone of all of them; by their Proposition 1 the projection of
  ``Jᵀ u`` is ``Jᵀ v`` with ``v = argmin_{v ≥ u} vᵀ G v``, solved here exactly as non-negative least squares.
* Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022): the bargaining solution
  ``G α = 1 / α`` (α > 0), solved exactly by Newton's method on the convex ``½ αᵀ G α − Σ log α`` (the
  authors approximate it with up to 20 convex-concave steps of cvxpy, which on badly scaled gradients stop far
  from it); the update ``Σ α_t g_t`` is scaled down to norm ``max_norm`` when longer (0: never).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import check_number, register_balancer
from .representation import RepresentationBalancer, ub_cost


def _check(gram: np.ndarray) -> np.ndarray:
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"gram: expected a square matrix, got shape {g.shape}")
    return (g + g.T) / 2


def _sqrt_factor(gram: np.ndarray) -> np.ndarray:
    """A (T, T) matrix A with ``Aᵀ A = G`` (negative rounding-level eigenvalues clipped to 0)."""
    lam, vec = np.linalg.eigh(gram)
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T


def cagrad_weights(gram: np.ndarray, c: float = 0.4, rescale: int = 1) -> np.ndarray:
    """CAGrad's update weights (see the module doc); all zero when every gradient is zero."""
    g = _check(gram)
    trace = float(np.trace(g))
    if trace > 0:
        g = g / trace  # the weights do not change with the scale of G, and SLSQP converges far better near 1
    n = len(g)
    b = np.full(n, 1.0 / n)
    g0_norm = math.sqrt(max(float(b @ g @ b), 0.0))
    if g0_norm == 0.0:
        return np.zeros(n)
    a = _sqrt_factor(g)  # ||A w|| = sqrt(wᵀ G w)
    radius = c * g0_norm
    gb = g @ b

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        aw = a @ w
        norm = float(np.linalg.norm(aw))
        grad = gb + (radius * (a.T @ aw) / norm if norm > 0 else 0.0)
        return float(w @ gb) + radius * norm, grad

    import scipy.optimize  # here: scipy.optimize takes a fifth of a second to import

    best = None
    for start in (b, *np.eye(n)):  # convex: every start reaches the optimum; the best guards against stalls
        res = scipy.optimize.minimize(
            objective,
            start,
            jac=True,
            bounds=[(0.0, 1.0)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(n)}],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    w = np.clip(best.x, 0.0, None)
    w /= w.sum()
    gw_norm = float(np.linalg.norm(a @ w))
    weights = b + (radius / gw_norm) * w if gw_norm > 0 else b.copy()
    return weights / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]


def imtl_g_weights(gram: np.ndarray) -> np.ndarray:
    """IMTL-G: ``G⁺ d / Σ(G⁺ d)``; all zero when that sum vanishes (every gradient zero)."""
    g = _check(gram)
    v = np.linalg.pinv(g, hermitian=True) @ np.sqrt(np.clip(np.diag(g), 0.0, None))
    total = v.sum()
    return np.zeros_like(v) if abs(total) < 1e-12 else v / total


def aligned_mtl_weights(gram: np.ndarray, scale: str = "min") -> np.ndarray:
    """Aligned-MTL: ``B 1`` with ``B = sqrt(λ_scale) V Λ^{-1/2} Vᵀ`` over the non-zero eigenvalues."""
    g = _check(gram)
    n = len(g)
    lam, vec = np.linalg.eigh(g)
    tol = lam.max() * n * np.finfo(np.float64).eps
    keep = lam > tol
    if not keep.any():
        return np.ones(n)
    lam, vec = lam[keep], vec[:, keep]
    median = np.sort(lam)[(len(lam) - 1) // 2]  # the lower middle value, as torch.median in the authors' code
    level = {"min": lam.min(), "median": median, "rmse": lam.mean()}[scale]
    b = math.sqrt(level) * (vec / np.sqrt(lam)) @ vec.T
    return b @ np.ones(n)


def dual_cone_weights(gram: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``argmin_{v ≥ u} vᵀ G v`` (Quinton & Rey 2024, Prop. 1): ``v = u + z``, ``z = argmin_{z ≥ 0} ||A(u + z)||``
    with ``Aᵀ A = G``, by scipy's exact active-set NNLS (Lawson & Hanson)."""
    import scipy.optimize

    a = _sqrt_factor(_check(gram))
    z, _ = scipy.optimize.nnls(a, -(a @ u), maxiter=50 * len(u))
    return u + z


def upgrad_weights(gram: np.ndarray) -> np.ndarray:
    """UPGrad: the mean over tasks i of the dual-cone projection of ``g_i`` (weights ``Σ_i v_i``, ``v_i ≥ e_i / T``)."""
    n = len(gram)
    return sum(dual_cone_weights(gram, np.eye(n)[i] / n) for i in range(n))


def nash_alpha(gram: np.ndarray, tol: float = 1e-12, max_iter: int = 200) -> np.ndarray:
    """The α > 0 with ``G α = 1 / α``: Newton's method with backtracking on ``½ αᵀ G α − Σ log α``.

    Tasks with a zero gradient get α = 0 (their weight would grow without bound and multiply nothing).

    Raises:
        FloatingPointError: no solution (non-negative combination of the gradients that is zero: the point is
            Pareto-stationary, and the bargaining problem is unbounded).
    """
    g = _check(gram)
    n = len(g)
    live = np.diag(g) > 0
    alpha = np.zeros(n)
    if not live.any():
        return alpha
    h = g[np.ix_(live, live)]
    a = 1.0 / np.sqrt(np.diag(h))  # solves the diagonal part exactly

    def f(x: np.ndarray) -> float:
        return 0.5 * float(x @ h @ x) - float(np.log(x).sum())

    for _ in range(max_iter):
        grad = h @ a - 1.0 / a
        if np.linalg.norm(grad * a) <= tol * max(1.0, float(np.linalg.norm(a * (h @ a)))):
            alpha[live] = a
            return alpha
        hess = h + np.diag(1.0 / a**2)
        step = np.linalg.solve(hess, -grad)
        t = 1.0
        while (a + t * step <= 0).any():
            t *= 0.5
        f0, slope = f(a), float(grad @ step)
        if -slope > 1e-12 * max(1.0, abs(f0)):  # far from the optimum: Armijo backtracking (near it, f is flat
            while f(a + t * step) > f0 + 1e-4 * t * slope and t > 1e-20:  # to rounding and Newton's full step wins)
                t *= 0.5
        a = a + t * step
        if not np.isfinite(a).all() or a.max() > 1e150:
            break
    raise FloatingPointError(
        "nash-mtl: G α = 1/α has no solution (a non-negative combination of the task gradients is ~0: "
        "Pareto-stationary)"
    )


def nash_mtl_weights(gram: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """Nash-MTL's weights: ``G α = 1/α`` (solved for G / ||G||_F, as the authors' code does for numerics, and
    scaled back: ``α = α_n / sqrt(||G||_F)``), the update capped at norm ``max_norm``."""
    g = _check(gram)
    scale = float(np.linalg.norm(g))
    if scale == 0.0:
        return np.zeros(len(g))
    alpha = nash_alpha(g / scale) / math.sqrt(scale)
    norm = math.sqrt(max(float(alpha @ g @ alpha), 0.0))
    if max_norm > 0 and norm > max_norm:
        alpha = alpha * (max_norm / norm)
    return alpha


class GramWeighting(RepresentationBalancer):
    """A method whose weights are a function of the Gram matrix alone: ``weights(G, **options())`` per shared
    group; it reports the weights it applies."""

    weights: Callable[..., np.ndarray]

    def group_weights(self, gram: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = type(self).weights(gram, **self.options())
        return w, w


@register_balancer("cagrad")
class CAGrad(GramWeighting):
    """CAGrad (Liu et al., NeurIPS 2021): the best worst-task improvement within a ball around the mean gradient.

    Args:
        c: the ball's radius in units of the mean gradient's norm (0: the mean gradient; the paper's 0.4 on NYUv2).
        rescale: divide the update by 1 + c² (1, the authors' default), 1 + c (2) or not (0).
    """

    name = "cagrad"

    def __init__(self, c: float = 0.4, rescale: int = 1) -> None:
        self.c = check_number("cagrad", "c", c)
        if rescale not in (0, 1, 2) or isinstance(rescale, bool):
            raise ValueError(f"cagrad: rescale must be 0, 1 or 2, got {rescale!r}")
        self.rescale = rescale

    def options(self) -> dict[str, Any]:
        return {"c": self.c, "rescale": self.rescale}

    weights = staticmethod(cagrad_weights)


@register_balancer("imtl-g")
class IMTLG(GramWeighting):
    """IMTL-G (Liu et al., ICLR 2021): the update projects equally on every task's gradient direction.

    Args:
        mode: ``"params"`` or ``"ub"`` (``imtl-g-ub``: on the shared feature, as the paper computes it; see
            :mod:`.representation`).
    """

    name = "imtl-g"

    def __init__(self, mode: str = "params") -> None:
        self._set_mode(mode, "imtl-g")

    weights = staticmethod(imtl_g_weights)


@register_balancer("imtl-g-ub")
@ub_cost
def imtl_g_ub() -> IMTLG:
    """IMTL-G-UB (Liu et al., ICLR 2021): IMTL-G with gradients w.r.t. the shared representation."""
    return IMTLG(mode="ub")


@register_balancer("aligned-mtl")
class AlignedMTL(GramWeighting):
    """Aligned-MTL (Senushkin et al., CVPR 2023): task gradients made orthogonal and equally long, then summed.

    Args:
        scale: the aligned gradients' squared norm: the smallest eigenvalue of G (min), the median, or the mean
            (rmse).
        mode: ``"params"`` or ``"ub"`` (``aligned-mtl-ub``, the paper's Aligned-MTL-UB).
    """

    name = "aligned-mtl"

    def __init__(self, scale: str = "min", mode: str = "params") -> None:
        if scale not in ("min", "median", "rmse"):
            raise ValueError(f"aligned-mtl: scale must be one of ['min', 'median', 'rmse'], got {scale!r}")
        self._set_mode(mode, "aligned-mtl")
        self.scale = scale

    def options(self) -> dict[str, Any]:
        return {"scale": self.scale}  # the mode is in the name

    weights = staticmethod(aligned_mtl_weights)


@register_balancer("aligned-mtl-ub")
@ub_cost
def aligned_mtl_ub(scale: str = "min") -> AlignedMTL:
    """Aligned-MTL-UB (Senushkin et al., CVPR 2023): Aligned-MTL with gradients w.r.t. the shared representation."""
    return AlignedMTL(scale=scale, mode="ub")


@register_balancer("upgrad")
class UPGrad(GramWeighting):
    """UPGrad (Quinton & Rey 2024): the mean of the task gradients each projected onto their dual cone.

    The update conflicts with no task (no loss increases to first order)."""

    name = "upgrad"

    weights = staticmethod(upgrad_weights)


@register_balancer("nash-mtl")
class NashMTL(GramWeighting):
    """Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution ``G α = 1/α`` of the task gradients.

    Args:
        max_norm: cap on the norm of each shared group's update (the authors clip the whole gradient at 1.0;
            0: no cap).
    """

    name = "nash-mtl"
    scale_invariant = False  # the bargaining weights shrink as the gradients grow, and the update is clipped

    def __init__(self, max_norm: float = 1.0) -> None:
        self.max_norm = check_number("nash-mtl", "max_norm", max_norm)

    def options(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm}

    weights = staticmethod(nash_mtl_weights)


__all__ = [
    "AlignedMTL",
    "CAGrad",
    "GramWeighting",
    "IMTLG",
    "NashMTL",
    "UPGrad",
    "aligned_mtl_ub",
    "aligned_mtl_weights",
    "cagrad_weights",
    "dual_cone_weights",
    "imtl_g_ub",
    "imtl_g_weights",
    "nash_alpha",
    "nash_mtl_weights",
    "upgrad_weights",
]
