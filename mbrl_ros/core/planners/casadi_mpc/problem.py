"""The LTV-MPC problem template shared by every CasADi solver path.

One replan solves the convex QP (horizon T, state nx, action nu, z_t = [x_t; u_t])::

    min_w  0.5 w' H w + g' w
    s.t.   A w = b                 (x_{t+1} - fx_t x_t - fu_t u_t = f0_t, t = 0..T-1)
           lbx <= w <= ubx         (x_0 = x0; u_min <= u_t <= u_max; state box on x_1..x_T)

with the decision variables declared stage by stage, ``w = [x_0, u_0, x_1, u_1, ...,
x_{T-1}, u_{T-1}, x_T]`` (nw = T (nx + nu) + nx): the order in which structure-exploiting
solvers (HPIPM, FATROP) recognise an optimal-control problem. H is block diagonal (one
dense (nz, nz) block per stage, an (nx, nx) terminal block); A has T nx rows.

:class:`ProblemLayout` holds everything about this problem that does not depend on the
solver: the sparsity of H and A, how the per-stage numbers (cost Hessians, the model's
Jacobians) become their nonzeros, packing trajectories into w and back, the shifted warm
start, the bounds, and the check of a returned solution. The solver back ends
(:mod:`.backends`) only hand these numbers to CasADi.
"""
from __future__ import annotations

import numpy as np

from mbrl_ros.core.planners.base import shift_trajectory

__all__ = ["ProblemLayout"]


class ProblemLayout:
    """Index bookkeeping of the stage-wise variable vector and of the sparse H and A.

    The nonzeros of H and A are gathered from "source" vectors that concatenate the
    per-stage blocks in C order, so filling a solver's column-compressed data is one
    fancy-index per replan (:meth:`h_values`, :meth:`a_values`):

    * H source: ``[H (T, nz, nz).ravel(), Hf (nx, nx).ravel()]``;
    * A source: ``[-fx (T, nx, nx).ravel(), -fu (T, nx, nu).ravel(), 1.0]`` (A's rows t
      are ``x_{t+1} - fx_t x_t - fu_t u_t``, equal to f0_t); the last entry, the
      coefficient of x_{t+1}, is the constant :attr:`A_ONE`.
    """

    def __init__(self, T: int, nx: int, nu: int):
        import scipy.sparse as sps

        self.T, self.nx, self.nu = T, nx, nu
        nz = nx + nu
        self.nz = nz
        self.nw = T * nz + nx
        self.ng = T * nx
        # H: dense stage blocks on the diagonal.
        rows, cols, src = [], [], []
        r, c = np.meshgrid(np.arange(nz), np.arange(nz), indexing="ij")
        for t in range(T):
            rows.append(r.ravel() + t * nz)
            cols.append(c.ravel() + t * nz)
            src.append(t * nz * nz + (r * nz + c).ravel())
        r, c = np.meshgrid(np.arange(nx), np.arange(nx), indexing="ij")
        rows.append(r.ravel() + T * nz)
        cols.append(c.ravel() + T * nz)
        src.append(T * nz * nz + (r * nx + c).ravel())
        self.H_pattern, self.H_perm = self._csc(np.concatenate(rows), np.concatenate(cols),
                                                np.concatenate(src), self.nw, self.nw, sps)
        # A: gap-closing rows.
        rows, cols, src = [], [], []
        nA, nB = T * nx * nx, T * nx * nu
        self.A_ONE = nA + nB    # index of the constant 1.0 in the A source
        rx, cx = np.meshgrid(np.arange(nx), np.arange(nx), indexing="ij")
        ru, cu = np.meshgrid(np.arange(nx), np.arange(nu), indexing="ij")
        for t in range(T):
            rows += [rx.ravel() + t * nx, ru.ravel() + t * nx, np.arange(nx) + t * nx]
            cols += [cx.ravel() + t * nz, cu.ravel() + t * nz + nx,
                     np.arange(nx) + (t + 1) * nz]
            src += [t * nx * nx + (rx * nx + cx).ravel(), nA + t * nx * nu + (ru * nu + cu).ravel(),
                    np.full(nx, self.A_ONE)]
        self.A_pattern, self.A_perm = self._csc(np.concatenate(rows), np.concatenate(cols),
                                                np.concatenate(src), self.ng, self.nw, sps)
        self.nH, self.nA = self.H_perm.size, self.A_perm.size

    @staticmethod
    def _csc(rows, cols, src, n_rows, n_cols, sps):
        # Values are src + 1 so that no entry is a structural zero dropped by scipy.
        M = sps.csc_matrix((src + 1.0, (rows, cols)), shape=(n_rows, n_cols))
        M.sort_indices()
        return (n_rows, n_cols, M.indptr.astype(np.int64), M.indices.astype(np.int64)), \
            (M.data - 1.0).astype(np.intp)

    def sparsity(self, pattern):
        """A CasADi ``Sparsity`` of :attr:`H_pattern` or :attr:`A_pattern`."""
        import casadi as ca
        n_rows, n_cols, indptr, indices = pattern
        return ca.Sparsity(n_rows, n_cols, indptr.tolist(), indices.tolist())

    # -- problem data ----------------------------------------------------------------------
    @staticmethod
    def sources(qm, lin) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(H source, A source, g (nw,), b (ng,)) of a quadratic cost model ``qm``
        (:class:`~.quadratic_model.QuadraticModel`) and a ``Linearization`` ``lin``."""
        H_src = np.concatenate([qm.H.ravel(), qm.Hf.ravel()])
        A_src = np.concatenate([-lin.fx.ravel(), -lin.fu.ravel(), [1.0]])
        g = np.concatenate([qm.g.ravel(), qm.gf])
        return H_src, A_src, g, lin.f0.ravel()

    def h_values(self, H_src: np.ndarray, out: np.ndarray) -> None:
        """H's nonzeros in CSC order into ``out`` (nH,)."""
        np.take(H_src, self.H_perm, out=out)

    def a_values(self, A_src: np.ndarray, out: np.ndarray) -> None:
        """A's nonzeros in CSC order into ``out`` (nA,)."""
        np.take(A_src, self.A_perm, out=out)

    # -- trajectories <-> w --------------------------------------------------------------
    def pack(self, xs: np.ndarray, us: np.ndarray) -> np.ndarray:
        """(T+1, nx), (T, nu) -> w (nw,)."""
        w = np.empty(self.nw)
        W = w[:self.T * self.nz].reshape(self.T, self.nz)
        W[:, :self.nx] = xs[:self.T]
        W[:, self.nx:] = us
        w[self.T * self.nz:] = xs[self.T]
        return w

    def unpack(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """w (nw,) -> xs (T+1, nx), us (T, nu) (copies)."""
        W = w[:self.T * self.nz].reshape(self.T, self.nz)
        xs = np.concatenate([W[:, :self.nx], w[None, self.T * self.nz:]], axis=0)
        return xs, W[:, self.nx:].copy()

    def shift_primal(self, w: np.ndarray, steps: int) -> np.ndarray:
        """Shift a stage-wise vector (layout of w) by ``steps`` stages, repeating the last."""
        if steps <= 0:
            return w.copy()
        W = w[:self.T * self.nz].reshape(self.T, self.nz)
        out = np.empty_like(w)
        out[:self.T * self.nz] = shift_trajectory(W, steps).ravel()
        out[self.T * self.nz:] = w[self.T * self.nz:]
        return out

    def shift_rows(self, lam: np.ndarray, steps: int) -> np.ndarray:
        """Shift per-stage constraint multipliers (T * nx,) by ``steps`` stages."""
        if steps <= 0:
            return lam.copy()
        return shift_trajectory(lam.reshape(self.T, self.nx), steps).ravel()

    # -- bounds and the check of a solution -----------------------------------------------
    def bounds(self, x0: np.ndarray, u_min: np.ndarray, u_max: np.ndarray,
               x_lo: np.ndarray, x_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lbx, ubx) (nw,): x_0 fixed to x0, u_t in [u_min, u_max], x_1..x_T in
        [x_lo, x_hi] (each (nx,); +-inf: unbounded)."""
        T, nx, nz = self.T, self.nx, self.nz
        lo = np.full((T, nz), -np.inf)
        hi = np.full((T, nz), np.inf)
        lo[:, nx:] = u_min
        hi[:, nx:] = u_max
        lo[1:, :nx] = x_lo
        hi[1:, :nx] = x_hi
        lo[0, :nx] = x0
        hi[0, :nx] = x0
        return (np.concatenate([lo.ravel(), x_lo]), np.concatenate([hi.ravel(), x_hi]))

    def violation(self, w: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], lin) -> float:
        """Largest violation of a solution w: of the bounds (state/action units) or of the
        linearised dynamics (relative to 1 + max|x|, as state entries may be far from 1);
        inf if w is not finite. Some solvers report success with violated bounds (qrqp on
        arm7), so every answer is checked."""
        if not np.isfinite(w).all():
            return float("inf")
        xs, us = self.unpack(w)
        with np.errstate(invalid="ignore"):
            bound = max(float(np.max(bounds[0] - w)), float(np.max(w - bounds[1])), 0.0)
        pred = (np.einsum("tij,tj->ti", lin.fx, xs[:-1]) + np.einsum("tij,tj->ti", lin.fu, us)
                + lin.f0)
        dyn = float(np.max(np.abs(pred - xs[1:])))
        scale = 1.0 + float(np.max(np.abs(xs)))
        return max(bound, dyn / scale)
