"""Min-norm point of the convex hull of task gradients, solved on their T x T Gram matrix.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018: the MGDA
direction is ``Σ_t α_t g_t`` with ``α = argmin_{α ∈ Δ} ||Σ_t α_t g_t||²`` (their Eq. 3). Everything the
solver needs is the Gram matrix ``G[s, t] = g_s · g_t``: ``||Σ α_t g_t||² = αᵀ G α``.
"""

from __future__ import annotations

import numpy as np

MAX_ITER = 250
"""Frank-Wolfe iteration limit (the reference implementation's ``MinNormSolver.MAX_ITER``)."""

STOP_CRIT = 1e-5
"""Stop when the L1 change of α in one iteration falls below this (``MinNormSolver.STOP_CRIT``)."""


def min_norm_2(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """Exact min-norm point on the segment between two vectors (Sener & Koltun 2018, Algorithm 1).

    Args:
        v11, v12, v22: the inner products ``v1·v1``, ``v1·v2``, ``v2·v2``.

    Returns:
        ``(γ, cost)``: ``γ = argmin_{γ ∈ [0, 1]} ||γ v1 + (1 - γ) v2||²`` — that is
        ``clip((v2 - v1)·v2 / ||v1 - v2||², 0, 1)`` — and the squared norm there. (The reference code
        returns 0.999 / 0.001 instead of 1 / 0 at the clipped ends; we return the exact minimiser.)
    """
    if v12 >= v11:
        return 1.0, v11
    if v12 >= v22:
        return 0.0, v22
    gamma = min(max((v22 - v12) / (v11 + v22 - 2.0 * v12), 0.0), 1.0)
    return gamma, v22 + gamma * (v12 - v22)


def min_norm_weights(
    gram: np.ndarray, max_iter: int = MAX_ITER, stop_crit: float = STOP_CRIT, exact: bool = True
) -> np.ndarray:
    """α on the simplex minimising ``αᵀ G α`` (Sener & Koltun 2018, Eq. 3 on the Gram matrix).

    The reference solver (``MinNormSolver.find_min_norm_element_FW``) starts at the best pair found
    by :func:`min_norm_2` over all pairs (optimal when T = 2), then runs Frank-Wolfe (Algorithm 2):
    move towards the vertex ``e_t̂``, ``t̂ = argmin_r (G α)_r``, with the exact line search of
    Algorithm 1, until α changes by less than ``stop_crit`` (L1) or after ``max_iter`` iterations.
    Frank-Wolfe converges sublinearly (after 250 iterations α can still be ~1e-2 off), so with
    ``exact`` the problem is first solved exactly by a small active-set loop from that pair, and again
    from Frank-Wolfe's support if that fails; an exact α is returned only with its KKT certificate
    ``min_r (G α)_r >= αᵀ G α`` (a zero Frank-Wolfe gap, up to rounding), else Frank-Wolfe's α.

    Args:
        gram: (T, T) symmetric positive semi-definite Gram matrix of the task gradients.
        exact: certified exact solution (False: the reference solver's output, Frank-Wolfe only).

    Returns:
        α, shape (T,), float64, α >= 0, Σ α = 1.
    """
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"gram: expected a non-empty square matrix, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise FloatingPointError("gram: non-finite entries (a task gradient is NaN/inf)")
    n = g.shape[0]
    alpha = np.zeros(n)
    if n == 1:
        alpha[0] = 1.0
        return alpha
    best = (np.inf, 0, 1, 1.0)
    for i in range(n):
        for j in range(i + 1, n):
            gamma, cost = min_norm_2(g[i, i], g[i, j], g[j, j])
            if cost < best[0]:
                best = (cost, i, j, gamma)
    _, i, j, gamma = best
    alpha[i], alpha[j] = gamma, 1.0 - gamma
    if n == 2:
        return alpha
    if exact:
        solved = _certified_active_set(g, [i, j])
        if solved is not None:
            return solved
    alpha = _frank_wolfe(g, alpha, max_iter, stop_crit)
    if exact:
        solved = _certified_active_set(g, np.flatnonzero(alpha > 0).tolist())
        if solved is not None:
            return solved
    return alpha


def _frank_wolfe(g: np.ndarray, alpha: np.ndarray, max_iter: int, stop_crit: float) -> np.ndarray:
    """Algorithm 2's loop from ``alpha``, keeping ``G α`` and ``αᵀ G α`` up to date incrementally."""
    alpha = alpha.copy()
    g_alpha = g @ alpha
    value = float(alpha @ g_alpha)
    for _ in range(max_iter):
        t = int(np.argmin(g_alpha))
        gamma, _ = min_norm_2(value, float(g_alpha[t]), float(g[t, t]))
        # α ← γ α + (1 - γ) e_t changes α by 2 (1 - γ)(1 - α_t) in L1
        if 2.0 * (1.0 - gamma) * (1.0 - alpha[t]) < stop_crit:
            break
        value = gamma * gamma * value + 2.0 * gamma * (1.0 - gamma) * float(g_alpha[t]) + (1.0 - gamma) ** 2 * g[t, t]
        alpha *= gamma
        alpha[t] += 1.0 - gamma
        g_alpha = gamma * g_alpha + (1.0 - gamma) * g[t]
    return alpha


def _certified_active_set(g: np.ndarray, support: list[int]) -> np.ndarray | None:
    """Exact minimiser of ``αᵀ G α`` on the simplex from a guessed support, or None without a certificate.

    Solves the KKT system ``G_S α_S = ν 1, 1ᵀ α_S = 1`` on the support S, drops the most negative
    weight while any is negative, adds the most violating vertex while ``min_r (G α)_r < αᵀ G α``.
    """
    n = g.shape[0]
    tol = 1e-9 * max(float(np.max(np.diag(g))), np.finfo(np.float64).tiny)
    s = sorted(support)
    for _ in range(2 * n + 2):
        if not s:
            return None
        k = len(s)
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = g[s][:, s]
        kkt[:k, k] = kkt[k, :k] = 1.0
        rhs = np.zeros(k + 1)
        rhs[k] = 1.0
        a_s = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
        if a_s.min() < 0:
            s.pop(int(np.argmin(a_s)))
            continue
        if abs(a_s.sum() - 1.0) > 1e-6:  # singular KKT system: no unique solution on this support
            return None
        alpha = np.zeros(n)
        alpha[s] = a_s / a_s.sum()
        g_alpha = g @ alpha
        r = int(np.argmin(g_alpha))
        if g_alpha[r] >= float(alpha @ g_alpha) - tol:
            return alpha
        if r in s:
            return None
        s = sorted([*s, r])
    return None


__all__ = [
    "MAX_ITER",
    "STOP_CRIT",
    "min_norm_2",
    "min_norm_weights",
]
