"""Box-constrained convex QP by projected Newton, for the control-limited DDP backward pass.

Solves ``min_x 0.5 x' H x + g' x  s.t.  lower <= x <= upper`` with the projected-Newton
method of Bertsekas (1982) as used by Tassa, Mansard & Todorov, "Control-Limited
Differential Dynamic Programming", ICRA 2014 (their boxQP.m; mujoco_mpc mjpc/planners/ilqg/
boxqp.h follows it): each iteration splits the variables into *clamped* (at a bound with the
gradient pushing outward) and *free*, takes a Newton step in the free subspace and an Armijo
line search along the projected path. The Cholesky factor of H restricted to the final free
set is returned, because the DDP feedback gains are ``K_free = -H_ff^{-1} Q_ux,free`` and
zero for clamped controls.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

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


def _chol(H: np.ndarray) -> np.ndarray | None:
    c, info = lapack.dpotrf(H, lower=0, clean=1)
    return None if info != 0 else c


def _active_set_guess(H: np.ndarray, g: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                      x: np.ndarray, max_updates: int = 4) -> BoxQPResult | None:
    """Primal-dual active-set iterations started from the bounds the warm start x touches;
    returns a KKT point or None (then the projected-Newton method takes over).

    Each update solves the QP with the current active set held at its bounds, then clamps
    free variables that left the box and frees clamped ones whose gradient points inward
    (Hintermueller, Ito & Kunisch, SIAM J. Optim. 2002). In MPC the active set changes
    little between neighbouring steps and iterations, so this usually ends after one or
    two factorisations, without the line search and the confirming iteration of projected
    Newton, which remains the fallback because active-set updates may cycle.
    """
    at_lo = x <= lower
    at_hi = (x >= upper) & ~at_lo
    n_fact = 0
    dot, potrs = np.dot, lapack.dpotrs
    for update in range(1, max_updates + 1):
        free = ~(at_lo | at_hi)
        xn = np.where(at_lo, lower, np.where(at_hi, upper, 0.0))
        R = np.zeros((0, 0))
        if free.any():
            Hf = H[free]
            R = _chol(Hf[:, free])
            n_fact += 1
            if R is None:
                return None
            xn[free] = -potrs(R, g[free] + dot(Hf, xn), lower=0)[0]
        grad = g + dot(H, xn)
        # Clamped variables sit exactly on their bound, so "x < lower" only fires for free
        # variables that left the box.
        new_lo = (xn < lower) | (at_lo & (grad >= 0))
        new_hi = ((xn > upper) | (at_hi & (grad <= 0))) & ~new_lo
        if not ((new_lo ^ at_lo).any() or (new_hi ^ at_hi).any()):
            return BoxQPResult(xn, 5 if free.any() else 6, free, R, update, n_fact)
        at_lo, at_hi = new_lo, new_hi
    return None


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
    H = np.asarray(H, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    n = g.shape[0]
    if x0 is not None and np.shape(x0) == (n,):
        x = np.clip(np.asarray(x0, dtype=np.float64), lower, upper)
    else:
        both = np.isfinite(lower) & np.isfinite(upper)
        x = np.zeros(n)
        x[both] = 0.5 * (lower[both] + upper[both])
        x = np.clip(x, lower, upper)
    x[~np.isfinite(x)] = 0.0

    if not (np.isfinite(lower).any() or np.isfinite(upper).any()):
        c = _chol(H)
        if c is None:
            return BoxQPResult(x, -1, np.ones(n, bool), np.zeros((0, 0)), 0, 1)
        x = -lapack.dpotrs(c, g, lower=0)[0]
        return BoxQPResult(x, 3, np.ones(n, bool), c, 1, 1)

    if x0 is not None:
        shortcut = _active_set_guess(H, g, lower, upper, x)
        if shortcut is not None:
            return shortcut

    # Hot loop of the control-limited backward pass: plain ufuncs with out= and dot
    # products instead of np.clip / np.linalg.norm / np.ix_, whose Python wrappers cost
    # more than the arithmetic at these sizes.
    maximum, minimum, dot = np.maximum, np.minimum, np.dot
    potrs = lapack.dpotrs
    xc = np.empty(n)
    value = dot(x, g) + 0.5 * dot(x, dot(H, x))
    old_value = 0.0
    clamped = np.zeros(n, dtype=bool)
    free = np.ones(n, dtype=bool)
    R = np.zeros((0, 0))
    status = 0
    n_fact = 0
    it = 0
    for it in range(1, max_iterations + 1):
        if it > 1 and (old_value - value) < min_rel_improve * abs(old_value):
            status = 4
            break
        old_value = value
        grad = g + dot(H, x)
        old_clamped = clamped
        clamped = ((x == lower) & (grad > 0)) | ((x == upper) & (grad < 0))
        free = ~clamped
        if clamped.all():
            status = 6
            break
        if it == 1 or (old_clamped != clamped).any():
            R = _chol(H[free][:, free])
            n_fact += 1
            if R is None:
                status = -1
                R = np.zeros((0, 0))
                break
        gf = grad[free]
        if dot(gf, gf) < min_grad * min_grad:
            status = 5
            break
        # Newton step on the free variables with the clamped ones held at their bounds.
        grad_clamped = g + dot(H, x * clamped)
        search = np.zeros(n)
        search[free] = -potrs(R, grad_clamped[free], lower=0)[0] - x[free]
        sdotg = dot(search, grad)
        if sdotg >= 0:
            status = 0
            break
        step = 1.0
        failed = False
        while True:
            np.multiply(search, step, out=xc)
            xc += x
            maximum(xc, lower, out=xc)
            minimum(xc, upper, out=xc)
            vc = dot(xc, g) + 0.5 * dot(xc, dot(H, xc))
            if (vc - old_value) / (step * sdotg) >= armijo:
                break
            step *= step_dec
            if step < min_step:
                failed = True
                break
        x, xc, value = xc, x, vc
        if failed:
            status = 2
            break
    else:
        status = 1

    if status >= 1:
        # The factor must describe the free set *at the returned x* (the last step may have
        # hit a new bound), since the caller's feedback gains are built from it.
        grad = g + dot(H, x)
        final_clamped = ((x == lower) & (grad > 0)) | ((x == upper) & (grad < 0))
        if (final_clamped != clamped).any():
            clamped = final_clamped
            free = ~clamped
            if free.any():
                R = _chol(H[free][:, free])
                n_fact += 1
                if R is None:
                    return BoxQPResult(x, -1, free, np.zeros((0, 0)), it, n_fact)
        if clamped.all():
            R = np.zeros((0, 0))
    return BoxQPResult(x, status, free, R, it, n_fact)
