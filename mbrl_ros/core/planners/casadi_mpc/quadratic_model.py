"""Quadratic model of a trajectory cost: the objective of the CasADi LTV-MPC subproblem.

:class:`~mbrl_ros.core.costs.quadratic.QuadraticCost` terms enter exactly (Q, R, Qf and
targets); any other :class:`~mbrl_ros.core.costs.quadratic.Cost` term enters through its
second-order expansion at the nominal from ``stage_derivatives`` / ``terminal_derivatives``
(Gauss-Newton Hessians for least-squares terms such as
:class:`~mbrl_ros.core.costs.end_effector.EndEffectorCost`), written in absolute
coordinates, with indefinite Hessian blocks projected onto the PSD cone so the QP stays
convex (the standard convexification of sequential convex programming / the real-time
iteration; Diehl, Bock & Schloeder, SIAM J. Control Optim. 2005).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.costs.quadratic import Cost, QuadraticCost, SumCost

__all__ = ["QuadraticModel", "quadratic_model"]


@dataclass
class QuadraticModel:
    """Quadratic model of a trajectory cost in absolute coordinates.

    ``sum_t 0.5 z_t' H[t] z_t + g[t]' z_t + 0.5 x_T' Hf x_T + gf' x_T`` (+ const) with
    z_t = [x_t; u_t].

    Attributes:
        H: (T, nx+nu, nx+nu) symmetric PSD stage Hessians.
        g: (T, nx+nu) stage linear terms.
        Hf: (nx, nx) symmetric PSD terminal Hessian.
        gf: (nx,) terminal linear term.
        projected: number of Hessian blocks that were indefinite and projected.
    """
    H: np.ndarray
    g: np.ndarray
    Hf: np.ndarray
    gf: np.ndarray
    projected: int = 0


def _terms(cost: Cost) -> tuple[Cost, ...]:
    return cost.terms if isinstance(cost, SumCost) else (cost,)


def _project_psd(H: np.ndarray) -> tuple[np.ndarray, int]:
    """Symmetric (..., n, n) blocks with negative eigenvalues clipped to zero."""
    flat = H.reshape((-1,) + H.shape[-2:])
    w, V = np.linalg.eigh(flat)
    scale = np.maximum(np.abs(w).max(axis=-1, keepdims=True), 1e-300)
    bad = (w < -1e-12 * scale).any(axis=-1)
    if not bad.any():
        return H, 0
    Vb, wb = V[bad], np.maximum(w[bad], 0.0)
    flat = flat.copy()
    flat[bad] = (Vb * wb[:, None, :]) @ np.swapaxes(Vb, 1, 2)
    return flat.reshape(H.shape), int(bad.sum())


def quadratic_model(cost: Cost, xs: np.ndarray, us: np.ndarray) -> QuadraticModel:
    """Quadratic model of ``cost`` around the nominal (xs (T+1, nx), us (T, nu)).

    :class:`QuadraticCost` terms (alone or inside a :class:`SumCost`) are used exactly;
    other terms are expanded to second order from their analytic derivatives at the
    nominal, and the summed Hessian blocks that are indefinite are projected onto the PSD
    cone (eigenvalues clipped at zero) so the subproblem stays convex.
    """
    T, nx = us.shape[0], xs.shape[1]
    nu = us.shape[1]
    nz = nx + nu
    H = np.zeros((T, nz, nz))
    g = np.zeros((T, nz))
    Hf = np.zeros((nx, nx))
    gf = np.zeros(nx)
    other = False
    for c in _terms(cost):
        if isinstance(c, QuadraticCost):
            H[:, :nx, :nx] += c.Q
            H[:, nx:, nx:] += c.R
            g[:, :nx] -= c.Q @ c.x_target
            g[:, nx:] -= c.R @ c.u_ref
            Hf += c.Qf
            gf -= c.Qf @ c.x_target
            continue
        other = True
        lx, lu, lxx, luu, lux = c.stage_derivatives(xs[:T], us)
        Hc = np.empty((T, nz, nz))
        Hc[:, :nx, :nx] = lxx
        Hc[:, nx:, nx:] = luu
        Hc[:, nx:, :nx] = lux
        Hc[:, :nx, nx:] = np.swapaxes(lux, 1, 2)
        zbar = np.concatenate([xs[:T], us], axis=1)
        H += Hc
        g[:, :nx] += lx
        g[:, nx:] += lu
        # Absolute coordinates: grad at z of the expansion around zbar is l_z + H (z - zbar).
        g -= np.einsum("tij,tj->ti", Hc, zbar)
        lfx, lfxx = c.terminal_derivatives(xs[T])
        Hf += lfxx
        gf += np.asarray(lfx) - np.asarray(lfxx) @ xs[T]
    H = 0.5 * (H + np.swapaxes(H, 1, 2))
    Hf = 0.5 * (Hf + Hf.T)
    projected = 0
    if other:
        H, n1 = _project_psd(H)
        Hf_p, n2 = _project_psd(Hf[None])
        Hf = Hf_p[0]
        projected = n1 + n2
    return QuadraticModel(H, g, Hf, gf, projected)
