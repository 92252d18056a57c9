"""Box-constrained convex QP by projected Newton, for the control-limited DDP backward pass.

Solves ``min_x 0.5 x' H x + g' x  s.t.  lower <= x <= upper`` with the projected-Newton
method of Bertsekas (1982) as used by Tassa, Mansard & Todorov, "Control-Limited
Differential Dynamic Programming", ICRA 2014 (their boxQP.m; mujoco_mpc mjpc/planners/ilqg/
boxqp.h follows it): each iteration splits the variables into *clamped* (at a bound with the
gradient pushing outward) and *free*, takes a Newton step in the free subspace and an Armijo
line search along the projected path. The Cholesky factor of H restricted to the final free
set is returned, because the DDP feedback gains are ``K_free = -H_ff^{-1} Q_ux,free`` and
zero for clamped controls.

The arithmetic is the compiled :func:`.kernels.boxqp_kernel`; this module is its interface.
With a warm start, primal-dual active-set updates from the bounds the warm start touches
(Hintermueller, Ito & Kunisch, SIAM J. Optim. 2002) are tried first: in MPC the active set
changes little between neighbouring steps and iterations, so this usually ends after one or
two factorisations; projected Newton remains the fallback because active-set updates may
cycle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.lqr.jit import as_f64
from mbrl_ros.core.lqr.kernels import boxqp_kernel

__all__ = ["BoxQPResult", "solve_boxqp", "STATUS_MESSAGES"]

STATUS_MESSAGES = {
    -1: "Hessian is not positive definite on the free subspace",
    0: "no descent direction found",
    1: "maximum iterations exceeded",
    2: "maximum line-search iterations exceeded",
    3: "no bounds, returning Newton point",
    4: "improvement smaller than tolerance",
    5: "gradient norm smaller than tolerance",
    6: "all dimensions are clamped",
}


@dataclass(frozen=True)
class BoxQPResult:
    """Solution of a box QP.

    Attributes:
        x: (n,) solution.
        status: code in :data:`STATUS_MESSAGES`; >= 1 is success (1 and 2 return the best
            point found), <= 0 is failure.
        free: (n,) bool, variables not clamped at the solution.
        chol: (nf, nf) upper-triangular R with R'R = H[free][:, free] (nf = free.sum()).
        iterations: Newton iterations (or active-set updates) taken.
        factorizations: Cholesky factorizations done.
    """
    x: np.ndarray
    status: int
    free: np.ndarray
    chol: np.ndarray
    iterations: int
    factorizations: int

    @property
    def ok(self) -> bool:
        return self.status >= 1

    @property
    def message(self) -> str:
        return STATUS_MESSAGES[self.status]


def solve_boxqp(H: np.ndarray, g: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                x0: np.ndarray | None = None, max_iterations: int = 100,
                min_grad: float = 1e-8, min_rel_improve: float = 1e-8,
                step_dec: float = 0.6, min_step: float = 1e-22,
                armijo: float = 0.1) -> BoxQPResult:
    """Minimise 0.5 x'Hx + g'x subject to lower <= x <= upper.

    Args:
        H: (n, n) symmetric Hessian (positive definite at least on the free subspace).
        g: (n,) linear term.
        lower, upper: (n,) bounds (may be +-inf; lower <= upper).
        x0: (n,) warm start (clamped into the box); default the box midpoint (0 where a
            bound is infinite). With a warm start, the active set it implies is tried
            first and returned if it satisfies the KKT conditions.
        max_iterations: Newton iteration limit.
        min_grad: stop when the free-subspace gradient norm is below this.
        min_rel_improve: stop when the objective improves by less than this fraction.
        step_dec: line-search step reduction factor in (0, 1).
        min_step: smallest line-search step before giving up.
        armijo: sufficient-decrease constant of the line search.

    Returns:
        A :class:`BoxQPResult`.
    """
    g = as_f64(g).reshape(-1)
    n = g.shape[0]
    H = as_f64(H)
    if H.shape != (n, n):
        raise ValueError(f"solve_boxqp: H has shape {H.shape}, expected ({n}, {n})")
    lower = as_f64(lower, (n,))
    upper = as_f64(upper, (n,))
    use_x0 = x0 is not None and np.shape(x0) == (n,)
    x0 = as_f64(x0) if use_x0 else np.zeros(n)
    x = np.empty(n)
    free = np.empty(n, dtype=np.bool_)
    R = np.zeros((n, n))
    status, nf, it, n_fact = boxqp_kernel(
        H, g, lower, upper, x0, bool(use_x0), int(max_iterations), float(min_grad),
        float(min_rel_improve), float(step_dec), float(min_step), float(armijo), x, free, R)
    return BoxQPResult(x, int(status), free, R[:nf, :nf].copy(), int(it), int(n_fact))
