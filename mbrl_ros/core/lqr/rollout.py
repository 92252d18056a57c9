"""Compiled closed-loop rollout of an affine model under time-varying linear feedback (the
iLQR planner's rollouts of affine models; any other model is rolled out by its
``predict``). Compiled as :mod:`.jit` describes.
"""
from __future__ import annotations

from mbrl_ros.core.lqr.jit import jit

__all__ = ["affine_rollout_kernel"]


@jit
def affine_rollout_kernel(A, B, c, x0, U, xbar, K, feedback, lower, upper, xs):
    """Closed-loop rollouts of x' = A x + B u + c with u = clip(U[a, t] + K_t (x - xbar_t))
    (the feedback term only if ``feedback``), one per row a of U.

    Args:
        A (nx, nx), B (nx, nu), c (nx,), x0 (nx,); U (n, T, nu) open-loop controls,
        overwritten with the applied (clipped) controls; xbar (T, nx), K (T, nu, nx);
        lower, upper (nu,) limits (may be infinite); xs (n, T+1, nx) output states.
    """
    n, T, nu = U.shape
    nx = x0.shape[0]
    for r in range(n):
        for i in range(nx):
            xs[r, 0, i] = x0[i]
        for t in range(T):
            for i in range(nu):
                v = U[r, t, i]
                if feedback:
                    for j in range(nx):
                        v += K[t, i, j] * (xs[r, t, j] - xbar[t, j])
                if v < lower[i]:
                    v = lower[i]
                if v > upper[i]:
                    v = upper[i]
                U[r, t, i] = v
            for i in range(nx):
                s = c[i]
                for j in range(nx):
                    s += A[i, j] * xs[r, t, j]
                for j in range(nu):
                    s += B[i, j] * U[r, t, j]
                xs[r, t + 1, i] = s

