"""Compiled closed-loop rollouts under time-varying linear feedback, the iLQR planner's
rollouts of models that expose their mean as plain arrays: affine models
(``affine_dynamics()``, :func:`affine_rollout_kernel`) and the ensemble's MLP members
(``mlp_dynamics()``, :func:`mlp_rollout_kernel`); any other model is rolled out by its
``predict``. Compiled as :mod:`.jit` describes.
"""
from __future__ import annotations

import math

import numpy as np

from mbrl_ros.core.lqr.jit import jit

__all__ = ["GP_KERNELS", "MLP_ACTIVATIONS", "affine_rollout_kernel", "kernel_rollout_kernel",
           "mlp_rollout_kernel"]

# activation name (the ensemble's setting) -> the code mlp_rollout_kernel takes
MLP_ACTIVATIONS = {"silu": 0, "relu": 1, "tanh": 2}


@jit(inline=True)
def _apply_feedback(U, K, xs, xbar, feedback, lower, upper, r, t):
    """In place: ``U[r, t] = clip(U[r, t] + K_t (xs[r, t] - xbar_t))`` (the feedback term
    only if ``feedback``), the control both rollouts apply at step t of row r."""
    nu = U.shape[2]
    nx = xs.shape[2]
    for i in range(nu):
        v = U[r, t, i]
        if feedback:
            for j in range(nx):
                v += K[t, i, j] * (xs[r, t, j] - xbar[t, j])
        if v < lower[t, i]:
            v = lower[t, i]
        if v > upper[t, i]:
            v = upper[t, i]
        U[r, t, i] = v


@jit
def affine_rollout_kernel(A, B, c, x0, U, xbar, K, feedback, lower, upper, xs):
    """Closed-loop rollouts of x' = A x + B u + c with u = clip(U[a, t] + K_t (x - xbar_t))
    (the feedback term only if ``feedback``), one per row a of U.

    Args:
        A (nx, nx), B (nx, nu), c (nx,), x0 (nx,); U (n, T, nu) open-loop controls,
        overwritten with the applied (clipped) controls; xbar (T, nx), K (T, nu, nx);
        lower, upper (T, nu) limits per step (may be infinite); xs (n, T+1, nx) output states.
    """
    n, T, nu = U.shape
    nx = x0.shape[0]
    for r in range(n):
        for i in range(nx):
            xs[r, 0, i] = x0[i]
        for t in range(T):
            _apply_feedback(U, K, xs, xbar, feedback, lower, upper, r, t)
            for i in range(nx):
                s = c[i]
                for j in range(nx):
                    s += A[i, j] * xs[r, t, j]
                for j in range(nu):
                    s += B[i, j] * U[r, t, j]
                xs[r, t + 1, i] = s



@jit
def _activate(h, act):
    """In place: silu (0), relu (1) or tanh (2)."""
    n = h.shape[0]
    if act == 0:
        for j in range(n):
            v = h[j]
            h[j] = v / (1.0 + math.exp(-v)) if v > -700.0 else 0.0
    elif act == 1:
        for j in range(n):
            if h[j] < 0.0:
                h[j] = 0.0
    else:
        for j in range(n):
            h[j] = math.tanh(h[j])


@jit
def mlp_rollout_kernel(x_mean, u_mean, W0, b0, Wh, bh, WL, c, lin, act, x0, U, xbar, K,
                       feedback, lower, upper, xs):
    """Closed-loop rollouts of the ensemble mean
    ``x' = x + c + zc lin + sum_e h_e(zc) WL[e]``, ``zc = [x - x_mean, u - u_mean]``,
    ``h_e`` = the member's hidden layers (first ``W0[e], b0[e]``, then ``Wh[e, l],
    bh[e, l]``, activation code ``act``: :data:`MLP_ACTIVATIONS`), with
    ``u = clip(U[a, t] + K_t (x - xbar_t))`` (the feedback term only if ``feedback``), one
    per row a of U. The arrays are the model's ``mlp_dynamics()``
    (:class:`~mbrl_ros.core.models.ensemble.network.MLPDynamics`).

    Args:
        x_mean (nx,), u_mean (nu,), W0 (E, nx + nu, H), b0 (E, H), Wh (E, L, H, H),
        bh (E, L, H), WL (E, H, nx), c (nx,), lin (nx + nu, nx); act int;
        x0 (nx,); U (n, T, nu) open-loop controls, overwritten with the applied (clipped)
        controls; xbar (T, nx), K (T, nu, nx); lower, upper (T, nu) limits per step
        (may be infinite); xs (n, T+1, nx) output states.
    """
    n, T, nu = U.shape
    nx = x0.shape[0]
    E, n_in, H = W0.shape
    L = Wh.shape[1]
    z = np.empty(n_in)
    h = np.empty(H)
    g = np.empty(H)
    d = np.empty(nx)
    for r in range(n):
        for i in range(nx):
            xs[r, 0, i] = x0[i]
        for t in range(T):
            _apply_feedback(U, K, xs, xbar, feedback, lower, upper, r, t)
            for i in range(nx):
                z[i] = xs[r, t, i] - x_mean[i]
            for i in range(nu):
                z[nx + i] = U[r, t, i] - u_mean[i]
            for j in range(nx):
                d[j] = c[j]
            for i in range(n_in):
                zi = z[i]
                for j in range(nx):
                    d[j] += zi * lin[i, j]
            for e in range(E):
                for j in range(H):
                    h[j] = b0[e, j]
                for i in range(n_in):
                    zi = z[i]
                    for j in range(H):
                        h[j] += zi * W0[e, i, j]
                _activate(h, act)
                for k in range(L):
                    for j in range(H):
                        g[j] = bh[e, k, j]
                    for i in range(H):
                        hi = h[i]
                        for j in range(H):
                            g[j] += hi * Wh[e, k, i, j]
                    _activate(g, act)
                    for j in range(H):
                        h[j] = g[j]
                for i in range(H):
                    hi = h[i]
                    for j in range(nx):
                        d[j] += hi * WL[e, i, j]
            for j in range(nx):
                xs[r, t + 1, j] = xs[r, t, j] + d[j]


# kernel name (the GP's setting) -> the code kernel_rollout_kernel takes
GP_KERNELS = {"rbf": 0, "matern52": 1, "matern32": 2}


@jit
def kernel_rollout_kernel(in_mean, in_istd, prior_W, prior_c, centers, w, alpha, mix, kind,
                          out_std, out_mean, x0, U, xbar, K, feedback, lower, upper, xs):
    """Closed-loop rollouts of a GP's posterior mean
    ``x' = x + out_mean + out_std * (z prior_W + prior_c + sum_q m_q(z) mix[q])``,
    ``z = ([x, u] - in_mean) * in_istd``,
    ``m_q(z) = sum_n alpha[q, n] k(sum_i w[q, i] (z_i - centers[g, n, i])^2)`` with g = 0
    for centres shared by all latents (the exact GP) and g = q for their own (the sparse
    GP's inducing points), the unit-variance kernel ``k`` of code ``kind``
    (:data:`GP_KERNELS`; as :func:`mbrl_ros.core.models.gp.kernels.kfun`), with
    ``u = clip(U[a, t] + K_t (x - xbar_t))`` (the feedback term only if ``feedback``), one
    per row a of U. The arrays are the model's ``kernel_dynamics()``.

    Args:
        in_mean, in_istd (nx + nu,); prior_W (nx + nu, nx), prior_c (nx,);
        centers (1 or Q, n, nx + nu), w (Q, nx + nu), alpha (Q, n) (outputscale folded in),
        mix (Q, nx); kind int; out_std, out_mean (nx,); x0 (nx,); U (r, T, nu) open-loop
        controls, overwritten with the applied (clipped) controls; xbar (T, nx),
        K (T, nu, nx); lower, upper (T, nu); xs (r, T+1, nx) output states.
    """
    n_rows, T, nu = U.shape
    nx = x0.shape[0]
    n_in = nx + nu
    Q, n = alpha.shape
    shared = centers.shape[0] == 1
    z = np.empty(n_in)
    d = np.empty(nx)
    for r in range(n_rows):
        for i in range(nx):
            xs[r, 0, i] = x0[i]
        for t in range(T):
            _apply_feedback(U, K, xs, xbar, feedback, lower, upper, r, t)
            for i in range(nx):
                z[i] = (xs[r, t, i] - in_mean[i]) * in_istd[i]
            for i in range(nu):
                z[nx + i] = (U[r, t, i] - in_mean[nx + i]) * in_istd[nx + i]
            for j in range(nx):
                d[j] = prior_c[j]
            for i in range(n_in):
                zi = z[i]
                for j in range(nx):
                    d[j] += zi * prior_W[i, j]
            for q in range(Q):
                g = 0 if shared else q
                m = 0.0
                for c in range(n):
                    D = 0.0
                    for i in range(n_in):
                        e = z[i] - centers[g, c, i]
                        D += w[q, i] * e * e
                    if kind == 0:
                        k = math.exp(-0.5 * min(D, 1400.0))
                    else:
                        rr = math.sqrt((5.0 if kind == 1 else 3.0) * D)
                        rr = min(rr, 700.0)
                        if kind == 1:
                            k = (1.0 + rr + rr * rr / 3.0) * math.exp(-rr)
                        else:
                            k = (1.0 + rr) * math.exp(-rr)
                    m += alpha[q, c] * k
                for j in range(nx):
                    d[j] += m * mix[q, j]
            for j in range(nx):
                xs[r, t + 1, j] = xs[r, t, j] + out_mean[j] + out_std[j] * d[j]
