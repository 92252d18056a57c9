"""Riccati backward pass of iLQR / control-limited DDP.

For each step t = T-1 ... 0 it forms the quadratic model of the state-action value
function around the nominal trajectory,

    Q_x  = l_x + A' V_x,          Q_u  = l_u + B' V_x,
    Q_xx = l_xx + A' V_xx A,      Q_uu = l_uu + B' V_xx B,     Q_ux = l_ux + B' V_xx A,

minimises it over the control step du (unconstrained: du = k + K dx; with limits: the box QP
of Tassa, Mansard & Todorov 2014 with K rows of clamped controls zero) and propagates

    V_x  = Q_x + K' Q_uu k + K' Q_u + Q_ux' k,
    V_xx = Q_xx + K' Q_uu K + K' Q_ux + Q_ux' K                (Tassa, Erez & Todorov 2012).

Regularisation (Tassa et al. 2012, eq. 10): mu I is added to V_xx *inside* Q_uu and Q_ux
only, i.e. Q_uu + mu B'B and Q_ux + mu B'A, which keeps the step invariant to control
scaling; the value update uses the unregularised terms.

Implementation: all terms of one step are one matrix product in homogeneous coordinates.
With z = [1, dx, du] (N = 1 + nx + nu), the stage cost model is 0.5 z' L z with
L = [[0, l_x', l_u'], [l_x, l_xx, l_xu], [l_u, l_ux, l_uu]], the dynamics
[1, dx'] = F z with F = [[1, 0, 0], [0, A, B]], and the value 0.5 y' V y with
y = [1, dx] and V = [[., V_x'], [V_x, V_xx]]. Then Q = L + F' V F holds every Q term, the
rows u of Q are [Q_u, Q_ux, Q_uu] contiguous, the solution [k, K] = -Q_uu^{-1} [Q_u, Q_ux]
is one Cholesky solve, and with G = [[I], [k K]] the propagated value is V = G' Q G.
Filling F and L for all steps, and the sequential sweep (with the box QP where needed), are
compiled calls (:mod:`.kernels`, numba), loaded at construction: no compilation at control
time. The mu-terms F'F are one batched product, formed only when mu > 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.lqr.jit import as_f64
from mbrl_ros.core.lqr.kernels import prepare_kernel, riccati_kernel
from mbrl_ros.core.lqr.warmup import warm_up

__all__ = ["BackwardPass", "BackwardResult"]


@dataclass
class BackwardResult:
    """Output of a successful backward pass (arrays owned by the caller).

    Attributes:
        k: (T, nu) control step (feed-forward) du at dx = 0.
        K: (T, nu, nx) feedback gains.
        dV: (2,) expected-reduction coefficients: the model predicts a cost change of
            alpha dV[0] + alpha^2 dV[1] for line-search step alpha.
        Quu_reg: (T, nu, nu) regularised Q_uu (for the iLQG controller covariance).
        n_boxqp: number of steps where the box QP was needed.
        n_clamped: number of clamped (control, step) pairs.
    """
    k: np.ndarray
    K: np.ndarray
    dV: np.ndarray
    Quu_reg: np.ndarray
    n_boxqp: int
    n_clamped: int


class BackwardPass:
    """Preallocated workspace for the Riccati sweep of a fixed (T, nx, nu).

    Usage: :meth:`prepare` once per linearisation, then :meth:`run` for each
    regularisation value tried. Construction loads the compiled kernels (:func:`.warmup.
    warm_up`, once per process).
    """

    def __init__(self, T: int, nx: int, nu: int):
        self.T, self.nx, self.nu = T, nx, nu
        M = 1 + nx
        N = M + nu
        self.M, self.N = M, N
        self._F = np.zeros((T, M, N))
        self._F[:, 0, 0] = 1.0
        self._L = np.zeros((T, N, N))
        self._FtFu = np.zeros((T, nu, N))
        self._Vf = np.zeros((M, M))
        self._kK = np.zeros((T, nu, M))
        self._Qrows = np.zeros((T, nu, N))
        self._Quu_reg = np.zeros((T, nu, nu))
        self._FtFu_valid = False
        self._no_bounds = np.zeros((1, nu))
        warm_up()

    def prepare(self, fx: np.ndarray, fu: np.ndarray, lx: np.ndarray, lu: np.ndarray,
                lxx: np.ndarray, luu: np.ndarray, lux: np.ndarray, lfx: np.ndarray,
                lfxx: np.ndarray) -> None:
        """Load the linearisation and cost derivatives along the nominal.

        Args:
            fx: (T, nx, nx), fu: (T, nx, nu) dynamics Jacobians.
            lx (T, nx), lu (T, nu), lxx (T, nx, nx), luu (T, nu, nu), lux (T, nu, nx):
                stage cost derivatives.
            lfx (nx,), lfxx (nx, nx): terminal cost derivatives.
        """
        T, nx, nu = self.T, self.nx, self.nu
        steps = self._per_step
        prepare_kernel(steps(fx, nx, nx), steps(fu, nx, nu), as_f64(lx, (T, nx)),
                       as_f64(lu, (T, nu)), steps(lxx, nx, nx), steps(luu, nu, nu),
                       steps(lux, nu, nx), as_f64(lfx, (nx,)), as_f64(lfxx, (nx, nx)),
                       self._F, self._L, self._Vf)
        self._FtFu_valid = False

    def _per_step(self, a: np.ndarray, r: int, c: int) -> np.ndarray:
        """(T, r, c) per-step matrices for the kernel; a matrix repeated over the steps
        (np.broadcast_to over T, as the costs and linear models return, or (r, c)) is passed
        once, (1, r, c), instead of being copied T times."""
        a = np.asarray(a)
        if a.ndim == 2 or (a.ndim == 3 and a.shape[0] > 1 and a.strides[0] == 0):
            a = a[:1] if a.ndim == 3 else a[None]
            return as_f64(a, (1, r, c))
        return as_f64(a, (self.T, r, c))

    def _mu_rows(self) -> np.ndarray:
        """Rows u of F'F = [0, B'A, B'B] (the mu-regularisation of the rows u of Q), computed
        on the first run with mu > 0 after a prepare."""
        if not self._FtFu_valid:
            F, M = self._F, self.M
            np.matmul(np.swapaxes(F[:, :, M:], 1, 2), F, out=self._FtFu)
            self._FtFu_valid = True
        return self._FtFu

    def run(self, mu: float, du_lower: np.ndarray | None, du_upper: np.ndarray | None
            ) -> BackwardResult | int:
        """One sweep with regularisation mu (the compiled :func:`.kernels.riccati_kernel`).

        Args:
            mu: regularisation added to V_xx (>= 0).
            du_lower, du_upper: (T, nu) bounds on the control step (u_min - u_t,
                u_max - u_t), or None for the unconstrained pass.

        Returns:
            A :class:`BackwardResult`, or the step index (int) where Q_uu (or its free
            block) was not positive definite.
        """
        box = du_lower is not None
        if box:
            shape = (self.T, self.nu)
            lo, hi = as_f64(du_lower, shape), as_f64(du_upper, shape)
        else:
            lo = hi = self._no_bounds
        mu = float(mu)
        t_fail, n_box, n_clamped, dV0, dV1 = riccati_kernel(
            self._F, self._L, self._mu_rows() if mu > 0.0 else self._FtFu, self._Vf, mu, box,
            lo, hi, self._kK,
            self._Qrows, self._Quu_reg)
        if t_fail >= 0:
            return int(t_fail)
        kK = self._kK
        return BackwardResult(kK[:, :, 0].copy(), kK[:, :, 1:].copy(), np.array([dV0, dV1]),
                              self._Quu_reg.copy(), int(n_box), int(n_clamped))
