"""LTV-MPC with CasADi: multiple-shooting QP along the model's linearisation, solved by
HPIPM (default), qrqp, OSQP, IPOPT or FATROP.

Problem solved at every replan (horizon T, decision variables declared stage by stage,
``w = [x_0, u_0, x_1, u_1, ..., x_{T-1}, u_{T-1}, x_T]``, the order structure-exploiting
solvers such as HPIPM and FATROP detect as an optimal-control problem)::

    min   sum_t 0.5 z_t' H_t z_t + g_t' z_t  +  0.5 x_T' H_T x_T + g_T' x_T,   z_t = [x_t; u_t]
    s.t.  x_0 = x0                                   (bounds lbx = ubx on x_0)
          x_{t+1} = fx_t x_t + fu_t u_t + f0_t       (the model's Linearization)
          u_min <= u_t <= u_max
          q_lo <= q_t <= q_hi,  |qd_t| <= v_max      (t >= 1; optional)

The dynamics are the model's affine approximation ``model.linearize(xs, us)`` along the
nominal trajectory (LTV-MPC); the cost is a quadratic model of any
:class:`~mbrl_ros.core.costs.quadratic.Cost`: :class:`QuadraticCost` terms enter exactly
(Q, R, Qf and targets), other terms through their second-order expansion from
``stage_derivatives`` at the nominal (Gauss-Newton Hessians for least-squares terms such as
:class:`~mbrl_ros.core.costs.end_effector.EndEffectorCost`), projected onto the PSD cone
when a term's Hessian is indefinite.

One ``optimize`` call is the real-time iteration of Diehl, Bock & Schloeder ("A real-time
iteration scheme for nonlinear optimization in optimal feedback control", SIAM J. Control
Optim. 2005): the previous solution shifted by the elapsed steps is the linearisation point
(its first state replaced by the measured x0), one convex QP is solved, and its solution is
the new plan. ``iterations > 1`` repeats linearise-and-solve around each new solution
(sequential convex programming) until the control step is below ``tol_step``.

The problem is built once per (T, nx, nu, solver options): QP solvers get a
``casadi.conic`` with the fixed sparsity of H and A, and each replan only writes the new
numbers into preallocated buffers (CasADi's zero-copy ``Function.buffer``); IPOPT and FATROP
get a ``casadi.nlpsol`` whose matrices are parameters. Nothing is rebuilt per replan.

Feedback: after the solve, a Riccati sweep of the same linearisation and cost Hessians
around the solution (the iLQR backward pass,
:class:`mbrl_ros.core.planners.ilqr.backward_pass.BackwardPass`, with the control limits
as a box so saturated controls get zero gain) gives the LQR gains K_t, returned in the
:class:`LinearGaussianPolicy` (``feedback=False``: K = 0). State bounds are not seen by the
gains.

Failures never raise inside the control loop: if the solver reports failure (infeasible,
iteration limit, numerical trouble) or returns a solution that violates the bounds or the
linearised dynamics by more than ``feasibility_tolerance`` (qrqp reports success with joint
bounds violated by up to 9e-3 rad on arm7), the problem is first re-solved without state
bounds (``relax_state_bounds``; state bounds can be infeasible when the robot is already
past a limit), and if that fails too the previous plan, shifted to the current time, is
returned with ``stats['status'] == 'failed'``. Only configuration errors raise
``ValueError``.

Measured QP solve times (arm7: nx = 14, nu = 7, T = 50, MuJoCo linearisation, torque and
joint bounds active, warm-started replans of a closed loop; 2 CPU cores shared with other
jobs, load average 4-5, so absolute numbers are pessimistic): hpipm 'robust' median ~15 ms
(~13 interior-point iterations; 'speed'/'balance' equal within noise, 'speed_abs' is
inaccurate), ipopt ~75-125 ms, fatrop ~50-125 ms but failing on 6 of 19 problems with
active joint bounds, qrqp ~12 ms warm but with the bound violations above, osqp > 2.5 s
without reaching 1e-6 accuracy. The linearisation of the MuJoCo model (not part of the
planner) takes ~40 ms of each replan on arm7.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.costs.quadratic import Cost, QuadraticCost, SumCost
from mbrl_ros.core.planners.base import Planner, shift_trajectory
from mbrl_ros.core.planners.casadi_mpc.settings import NLP_SOLVERS, CasadiMPCSettings
from mbrl_ros.core.planners.ilqr.backward_pass import BackwardPass, BackwardResult
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

__all__ = ["CasadiMPCPlanner", "QuadraticModel", "quadratic_model"]

# HPIPM takes every variable as box-constrained; infinite bounds are replaced by this.
# 1e8 (CasADi's default) stalls its interior point at the iteration limit on arm7; 1e6
# converges in the same ~25 iterations as tighter values and is far beyond any joint
# velocity (rad/s) or torque (N*m) a robot reaches.
_HPIPM_INF = 1e6
# Regularisations tried, in order, when the Riccati sweep for the gains meets a Q_uu that
# is not positive definite.
_FEEDBACK_MU = (0.0, 1e-8, 1e-6, 1e-4, 1e-2, 1.0)


# ---------------------------------------------------------------------------------------
# quadratic model of a cost
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# problem layout and solver back ends
# ---------------------------------------------------------------------------------------
# Solver defaults used when the settings leave max_solver_iterations / tolerance at 0:
# (iteration limit, tolerance). OSQP (first-order ADMM) needs many iterations and does not
# reach 1e-8 on badly scaled arm problems.
_SOLVER_DEFAULTS = {"hpipm": (100, 1e-8), "qrqp": (1000, 1e-8), "osqp": (20000, 1e-6),
                    "ipopt": (1000, 1e-8), "fatrop": (1000, 1e-8)}


def _solver_limits(s: CasadiMPCSettings) -> tuple[float, int]:
    it, tol = _SOLVER_DEFAULTS[s.solver]
    return (float(s.tolerance) if s.tolerance > 0 else tol,
            int(s.max_solver_iterations) if s.max_solver_iterations > 0 else it)


class _Layout:
    """Index bookkeeping of the stage-wise variable vector and of the sparse H and A.

    The nonzeros of H and A are gathered from "source" vectors that concatenate the
    per-stage blocks in C order, so filling the solver's column-compressed data is one
    fancy-index per replan:

    * H source: ``[H (T, nz, nz).ravel(), Hf (nx, nx).ravel()]``;
    * A source: ``[-fx (T, nx, nx).ravel(), -fu (T, nx, nu).ravel(), 1.0]`` (A's rows t
      are ``x_{t+1} - fx_t x_t - fu_t u_t``, equal to f0_t).
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
        rx, cx = np.meshgrid(np.arange(nx), np.arange(nx), indexing="ij")
        ru, cu = np.meshgrid(np.arange(nx), np.arange(nu), indexing="ij")
        for t in range(T):
            rows += [rx.ravel() + t * nx, ru.ravel() + t * nx, np.arange(nx) + t * nx]
            cols += [cx.ravel() + t * nz, cu.ravel() + t * nz + nx,
                     np.arange(nx) + (t + 1) * nz]
            src += [t * nx * nx + (rx * nx + cx).ravel(), nA + t * nx * nu + (ru * nu + cu).ravel(),
                    np.full(nx, nA + nB)]
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
        import casadi as ca
        n_rows, n_cols, indptr, indices = pattern
        return ca.Sparsity(n_rows, n_cols, indptr.tolist(), indices.tolist())

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


@dataclass
class _SolveResult:
    success: bool
    status: str
    iterations: int
    w: np.ndarray
    lam_x: np.ndarray
    lam_g: np.ndarray
    objective: float
    solver_time_s: float


class _Backend:
    """A built CasADi solver for one layout; ``solve`` takes the numeric problem data."""

    uses_duals = False
    # CasADi 3.8.2's HPIPM interface returns the first solution again on later evaluations
    # of one Function.buffer (measured); a fresh buffer per solve costs ~0.1 ms.
    _rebind = False

    def __init__(self, layout: _Layout, settings: CasadiMPCSettings):
        self.layout = layout
        self.settings = settings

    def _bind(self, fn, keep: bool = False) -> None:
        """Zero-copy argument/result buffers of a CasADi Function (``keep``: a new CasADi
        buffer on the existing numpy arrays)."""
        self._fn = fn
        self._buf, self._eval = fn.buffer()
        if not keep:
            self.args = {n: np.zeros(fn.nnz_in(i)) for i, n in enumerate(fn.name_in())}
            self.res = {n: np.zeros(fn.nnz_out(i)) for i, n in enumerate(fn.name_out())}
        for i, n in enumerate(fn.name_in()):
            self._buf.set_arg(i, memoryview(self.args[n]))
        for i, n in enumerate(fn.name_out()):
            self._buf.set_res(i, memoryview(self.res[n]))

    def _call(self) -> dict:
        self._eval()
        return self._buf.stats()


class _ConicBackend(_Backend):
    """``casadi.conic`` (hpipm, qrqp, osqp) with numeric H and A."""

    def __init__(self, layout: _Layout, settings: CasadiMPCSettings):
        import casadi as ca
        super().__init__(layout, settings)
        s, L = settings, layout
        tol, it = _solver_limits(s)
        opts: dict[str, Any] = {"error_on_fail": False, "print_time": False}
        if s.solver == "hpipm":
            self._rebind = True
            opts.update(N=L.T, nx=[L.nx] * (L.T + 1), nu=[L.nu] * L.T + [0],
                        ng=[0] * (L.T + 1), inf=_HPIPM_INF,
                        hpipm={"mode": s.hpipm_mode, "iter_max": it, "res_g_max": tol,
                               "res_b_max": tol, "res_d_max": tol, "res_m_max": tol,
                               "warm_start": int(bool(s.warm_start))})
        elif s.solver == "qrqp":
            opts.update(max_iter=it, constr_viol_tol=tol, dual_inf_tol=tol,
                        print_iter=False, print_header=False, print_info=False)
            self.uses_duals = True
        elif s.solver == "osqp":
            opts.update(osqp={"verbose": False, "eps_abs": tol, "eps_rel": tol,
                              "max_iter": it, "polish": True},
                        warm_start_primal=bool(s.warm_start), warm_start_dual=bool(s.warm_start))
            self.uses_duals = True
        else:
            raise ValueError(f"{s.solver!r} is not a QP solver")
        fn = ca.conic("casadi_mpc", s.solver, {"h": L.sparsity(L.H_pattern),
                                               "a": L.sparsity(L.A_pattern)}, opts)
        self._bind(fn)

    def solve(self, H_src, A_src, g, b, lbx, ubx, w0, lam_x0, lam_g0) -> _SolveResult:
        a, L = self.args, self.layout
        np.take(H_src, L.H_perm, out=a["h"])
        np.take(A_src, L.A_perm, out=a["a"])
        a["g"][:] = g
        a["lba"][:] = b
        a["uba"][:] = b
        a["lbx"][:] = lbx
        a["ubx"][:] = ubx
        a["x0"][:] = w0
        a["lam_x0"][:] = lam_x0
        a["lam_a0"][:] = lam_g0
        tic = time.perf_counter()
        if self._rebind:
            self._bind(self._fn, keep=True)
        st = self._call()
        dt = time.perf_counter() - tic
        r = self.res
        status = st.get("return_status", st.get("unified_return_status", ""))
        return _SolveResult(bool(st.get("success", False)), str(status),
                            int(st.get("iter_count", -1)), r["x"].copy(), r["lam_x"].copy(),
                            r["lam_a"].copy(), float(r["cost"][0]), dt)


class _NlpBackend(_Backend):
    """``casadi.nlpsol`` (ipopt, fatrop) on the problem with its matrices as parameters.

    Variables are declared stage by stage (x_t, u_t, then the gap constraint of x_{t+1}),
    which FATROP's structure detection needs.
    """
    uses_duals = True

    def __init__(self, layout: _Layout, settings: CasadiMPCSettings):
        import casadi as ca
        super().__init__(layout, settings)
        s, L = settings, layout
        T, nx, nu, nz = L.T, L.nx, L.nu, L.nz
        pH = ca.SX.sym("H", L.T * nz * nz + nx * nx)
        pA = ca.SX.sym("A", T * nx * nx + T * nx * nu)
        pg = ca.SX.sym("g", L.nw)
        w, gap = [], []
        f = 0
        x = ca.SX.sym("x0", nx)
        w.append(x)
        for t in range(T):
            u = ca.SX.sym(f"u{t}", nu)
            xn = ca.SX.sym(f"x{t + 1}", nx)
            w += [u, xn]
            z = ca.vertcat(x, u)
            Ht = ca.reshape(pH[t * nz * nz:(t + 1) * nz * nz], nz, nz).T
            f += 0.5 * ca.dot(z, ca.mtimes(Ht, z)) + ca.dot(pg[t * nz:(t + 1) * nz], z)
            At = ca.reshape(pA[t * nx * nx:(t + 1) * nx * nx], nx, nx).T
            o = T * nx * nx + t * nx * nu
            Bt = ca.reshape(pA[o:o + nx * nu], nu, nx).T
            gap.append(xn + ca.mtimes(At, x) + ca.mtimes(Bt, u))
            x = xn
        Hf = ca.reshape(pH[T * nz * nz:], nx, nx).T
        f += 0.5 * ca.dot(x, ca.mtimes(Hf, x)) + ca.dot(pg[T * nz:], x)
        nlp = {"x": ca.vertcat(*w), "p": ca.vertcat(pH, pA, pg), "f": f,
               "g": ca.vertcat(*gap)}
        tol, it = _solver_limits(s)
        opts: dict[str, Any] = {"error_on_fail": False, "print_time": False}
        if s.solver == "ipopt":
            ip = {"print_level": 0, "sb": "yes", "tol": tol, "max_iter": it,
                  "hessian_constant": "yes", "jac_c_constant": "yes", "jac_d_constant": "yes"}
            if s.warm_start:
                ip.update(warm_start_init_point="yes", warm_start_bound_push=1e-9,
                          warm_start_mult_bound_push=1e-9, mu_init=1e-6)
            opts["ipopt"] = ip
        elif s.solver == "fatrop":
            # A small bound push keeps the warm start where it is; with FATROP's defaults
            # it needed ~100 iterations on arm7, with these ~20 (measured).
            opts.update(structure_detection="auto", equality=[True] * L.ng, expand=True,
                        fatrop={"print_level": 0, "tol": tol, "max_iter": it,
                                "bound_push": 1e-8, "bound_frac": 1e-8})
        else:
            raise ValueError(f"{s.solver!r} is not an NLP solver")
        self._split = (L.T * nz * nz + nx * nx, T * nx * nx + T * nx * nu)
        self._bind(ca.nlpsol("casadi_mpc", s.solver, nlp, opts))

    def solve(self, H_src, A_src, g, b, lbx, ubx, w0, lam_x0, lam_g0) -> _SolveResult:
        a = self.args
        nH, nA = self._split
        p = a["p"]
        p[:nH] = H_src
        p[nH:nH + nA] = A_src[:nA]
        p[nH + nA:] = g
        a["lbg"][:] = b
        a["ubg"][:] = b
        a["lbx"][:] = lbx
        a["ubx"][:] = ubx
        a["x0"][:] = w0
        a["lam_x0"][:] = lam_x0
        a["lam_g0"][:] = lam_g0
        tic = time.perf_counter()
        st = self._call()
        dt = time.perf_counter() - tic
        r = self.res
        status = st.get("return_status", st.get("unified_return_status", ""))
        return _SolveResult(bool(st.get("success", False)), str(status),
                            int(st.get("iter_count", -1)), r["x"].copy(), r["lam_x"].copy(),
                            r["lam_g"].copy(), float(r["f"][0]), dt)


def _make_backend(layout: _Layout, settings: CasadiMPCSettings) -> _Backend:
    if settings.solver in NLP_SOLVERS:
        return _NlpBackend(layout, settings)
    return _ConicBackend(layout, settings)


# ---------------------------------------------------------------------------------------
# planner
# ---------------------------------------------------------------------------------------
@registry.register("planner", "casadi_mpc")
class CasadiMPCPlanner(Planner):
    """Linear time-varying MPC solved with CasADi (real-time iteration).

    Args:
        settings: :class:`CasadiMPCSettings` (None: defaults).
        nx, nu: state and action dimensions; the state is ``[q (nx/2), qd (nx/2)]`` when
            position or velocity bounds are used.
        u_min, u_max: (nu,) action limits (N*m or N; +-inf allowed).
        dt: model step [s].
        position_limits: (nx/2, 2) joint position bounds [lower, upper] (rad or m; +-inf:
            none) imposed on x_1..x_T, e.g. ``MujocoSim.position_limits``; None: none.
            Also settable later with :meth:`set_position_limits`.

    ``stats`` after ``optimize``: status ('solved'; 'solved_relaxed': state bounds dropped
    to regain feasibility; and, with the previous plan shifted to t0 returned instead:
    'failed', 'nonfinite_linearization', 'nonfinite_cost'), solver_status (the solver's
    own, or why its answer was rejected), solver, iterations (convexifications),
    solver_iterations (sum), cost (true cost of the returned plan), objective (QP
    objective without constant), step (last max relative control change), max_defect
    (max |model.predict(x_t, u_t) - x_{t+1}| along the plan: the linearisation error),
    projected_hessians, feedback ('riccati'; 'previous': gains of the shifted previous
    plan; 'none'; 'failed': Riccati sweep failed, K = 0), warm_start_shift, build_time_s,
    solve_time_s (whole call), solver_time_s, time_linearize_s, time_cost_s,
    time_feedback_s (seconds).

    Raises:
        ValueError: inconsistent limits or settings (at construction); the requested solver
            plugin cannot be created (at the first ``optimize``).
    """
    name = "casadi_mpc"
    Settings = CasadiMPCSettings

    def __init__(self, settings: Any, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float, position_limits: np.ndarray | None = None):
        self._position_limits: np.ndarray | None = None
        self._violation = 0.0
        self._backends: dict[tuple, tuple[_Layout, _Backend]] = {}
        self._bp: BackwardPass | None = None
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        self.set_position_limits(position_limits)
        self._velocity_bound()  # validate the settings now, not in the control loop

    # -- configuration --------------------------------------------------------------------
    def set_position_limits(self, limits: np.ndarray | None) -> None:
        """Joint position bounds (nx/2, 2) [lower, upper] on x[:nx/2] (rad or m; +-inf:
        unbounded), or None to remove them.

        Raises:
            ValueError: wrong shape, NaN, lower > upper, or nx odd.
        """
        if limits is None:
            self._position_limits = None
            return
        lim = np.array(limits, dtype=np.float64)
        if self.nx % 2:
            raise ValueError(f"position limits need a state [q, qd] of even size, nx={self.nx}")
        n = self.nx // 2
        if lim.shape != (n, 2):
            raise ValueError(f"position_limits must have shape ({n}, 2), got {lim.shape}")
        if np.isnan(lim).any() or np.any(lim[:, 0] > lim[:, 1]):
            raise ValueError(f"position_limits must satisfy lower <= upper, got {lim.tolist()}")
        self._position_limits = lim

    @property
    def position_limits(self) -> np.ndarray | None:
        """(nx/2, 2) joint position bounds, or None."""
        return None if self._position_limits is None else self._position_limits.copy()

    def _velocity_bound(self) -> np.ndarray | None:
        v = self.settings.velocity_limits
        if not v:
            return None
        if self.nx % 2:
            raise ValueError(f"velocity_limits need a state [q, qd] of even size, nx={self.nx}")
        n = self.nx // 2
        v = np.asarray(v, dtype=np.float64)
        if v.size == 1:
            v = np.full(n, float(v[0]))
        if v.shape != (n,) or np.any(~(v >= 0)):
            raise ValueError(f"velocity_limits must be one value or {n} values >= 0, "
                             f"got {self.settings.velocity_limits}")
        return v

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        super().reset(horizon, initial_actions)
        self._K: np.ndarray | None = None
        self._lam_x: np.ndarray | None = None
        self._lam_g: np.ndarray | None = None

    def _on_warm_start(self) -> None:
        self._K = None
        self._lam_x = None
        self._lam_g = None

    def _backend(self, T: int) -> tuple[_Layout, _Backend, float]:
        s = self.settings
        key = (T, s.solver, s.max_solver_iterations, s.tolerance, s.hpipm_mode,
               bool(s.warm_start))
        if key in self._backends:
            layout, backend = self._backends[key]
            return layout, backend, 0.0
        tic = time.perf_counter()
        layout = next((lay for (t, *_), (lay, _) in self._backends.items() if t == T), None)
        layout = layout or _Layout(T, self.nx, self.nu)
        try:
            backend = _make_backend(layout, s)
        except RuntimeError as e:  # CasADi raises RuntimeError for plugin/option errors
            raise ValueError(f"casadi_mpc: cannot create solver {s.solver!r}: {e}") from e
        # Keep only the newest build per horizon (settings changes would otherwise pile up).
        self._backends = {k: v for k, v in self._backends.items() if k[0] != T}
        self._backends[key] = (layout, backend)
        return layout, backend, time.perf_counter() - tic

    def prepare(self) -> float:
        """Build the solver for the current horizon and settings now instead of in the
        first :meth:`optimize` (IPOPT/FATROP take seconds to build for arm7-sized
        problems). Returns the build time [s] (0 if it was already built)."""
        return self._backend(self.horizon)[2]

    # -- helpers ----------------------------------------------------------------------------
    def _rollout(self, model: Any, x0: np.ndarray, us: np.ndarray) -> np.ndarray:
        T = us.shape[0]
        xs = np.empty((T + 1, self.nx))
        xs[0] = x0
        tv = bool(getattr(model, "time_varying", False))
        with np.errstate(invalid="ignore", over="ignore"):
            for t in range(T):
                xs[t + 1] = (model.predict(xs[t], us[t], t) if tv
                             else model.predict(xs[t], us[t]))[0][0]
        if not np.isfinite(xs).all():
            # Multiple shooting does not need a consistent nominal: linearise at x0.
            xs[:] = x0
        return xs

    def _bounds(self, x0: np.ndarray, layout: _Layout, with_state: bool
                ) -> tuple[np.ndarray, np.ndarray]:
        T, nx, nz = layout.T, layout.nx, layout.nz
        lo = np.full((T, nz), -np.inf)
        hi = np.full((T, nz), np.inf)
        lo[:, nx:] = self.u_min
        hi[:, nx:] = self.u_max
        xlo = np.full(nx, -np.inf)
        xhi = np.full(nx, np.inf)
        if with_state:
            n = nx // 2
            if self._position_limits is not None:
                xlo[:n] = self._position_limits[:, 0]
                xhi[:n] = self._position_limits[:, 1]
            v = self._velocity_bound()
            if v is not None:
                xlo[n:] = -v
                xhi[n:] = v
        lo[1:, :nx] = xlo
        hi[1:, :nx] = xhi
        lo[0, :nx] = x0
        hi[0, :nx] = x0
        return (np.concatenate([lo.ravel(), xlo]), np.concatenate([hi.ravel(), xhi]))

    def _feasible(self, w: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], lin,
                  layout: _Layout) -> bool:
        """Check a solver's answer: finite, within the bounds and the linearised dynamics
        (some solvers report success with violated bounds; measured for qrqp on arm7)."""
        if not np.isfinite(w).all():
            self._violation = float("inf")
            return False
        xs, us = layout.unpack(w)
        with np.errstate(invalid="ignore"):
            bound = max(float(np.max(bounds[0] - w)), float(np.max(w - bounds[1])), 0.0)
        pred = (np.einsum("tij,tj->ti", lin.fx, xs[:-1]) + np.einsum("tij,tj->ti", lin.fu, us)
                + lin.f0)
        dyn = float(np.max(np.abs(pred - xs[1:])))
        # Relative to the magnitudes involved: state entries may be far from 1.
        scale = 1.0 + float(np.max(np.abs(xs)))
        self._violation = max(bound, dyn / scale)
        return self._violation <= self.settings.feasibility_tolerance

    def _has_state_bounds(self) -> bool:
        pl = self._position_limits
        return ((pl is not None and bool(np.isfinite(pl).any()))
                or self._velocity_bound() is not None)

    def _gains(self, lin, qm: QuadraticModel, xs: np.ndarray, us: np.ndarray
               ) -> tuple[np.ndarray | None, str]:
        """LQR gains of the convexified problem around the solution (Riccati sweep with
        the control limits as a box: saturated controls get zero gain)."""
        T, nx = self.horizon, self.nx
        if self._bp is None or self._bp.T != T:
            self._bp = BackwardPass(T, nx, self.nu)
        z = np.concatenate([xs[:T], us], axis=1)
        gz = np.einsum("tij,tj->ti", qm.H, z) + qm.g
        lfx = qm.Hf @ xs[T] + qm.gf
        self._bp.prepare(lin.fx, lin.fu, gz[:, :nx], gz[:, nx:], qm.H[:, :nx, :nx],
                         qm.H[:, nx:, nx:], qm.H[:, nx:, :nx], lfx, qm.Hf)
        box = bool(np.isfinite(self.u_min).any() or np.isfinite(self.u_max).any())
        # Controls within solver tolerance of a bound count as on it.
        du_lo = np.minimum(self.u_min - us, 0.0) if box else None
        du_hi = np.maximum(self.u_max - us, 0.0) if box else None
        for mu in _FEEDBACK_MU:
            res = self._bp.run(mu, du_lo, du_hi)
            if isinstance(res, BackwardResult):
                return res.K, "riccati"
        return None, "failed"

    # -- planning ---------------------------------------------------------------------------
    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any
                 ) -> LinearGaussianPolicy:
        """Solve the LTV-MPC problem from x0 (nx,) at time t0 [s] (``iterations``
        linearise-and-solve rounds) and return the policy of the new plan.

        Args:
            x0: (nx,) current state.
            t0: current time [s] (step 0 of the returned policy).
            model: a DynamicsModel with ``predict`` and ``linearize`` at step ``dt``.
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost`.

        Returns:
            The :class:`LinearGaussianPolicy` of the new plan, or of the previous plan
            shifted to t0 if the solver failed (see ``stats['status']``).

        Raises:
            ValueError: the configured solver cannot be created (first call only).
        """
        s = self.settings
        T, nx, nu = self.horizon, self.nx, self.nu
        t_start = time.perf_counter()
        x0 = np.asarray(x0, dtype=np.float64).reshape(nx)
        layout, backend, build_time = self._backend(T)
        timings = {"time_linearize_s": 0.0, "time_cost_s": 0.0, "solver_time_s": 0.0,
                   "time_feedback_s": 0.0}

        us, shift = self._initial_actions(t0)
        if self._xs is not None:
            xs = np.array(shift_trajectory(self._xs, shift))
            xs[0] = x0
        else:
            xs = self._rollout(model, x0, us)
        K_prev = shift_trajectory(self._K, shift)
        # The fallback plan: previous solution shifted (or the initial guess).
        fallback = (xs.copy(), us.copy(), K_prev)
        w0 = layout.pack(xs, us)
        lam_x = np.zeros(layout.nw)
        lam_g = np.zeros(layout.ng)
        if s.warm_start and backend.uses_duals and self._lam_x is not None:
            lam_x = layout.shift_primal(self._lam_x, shift)
            lam_g = layout.shift_rows(self._lam_g, shift)
            # x_0's bound multiplier belongs to the old initial state.
            lam_x[:nx] = 0.0
        if not s.warm_start:
            w0 = np.zeros(layout.nw)
        state_bounds = self._has_state_bounds()
        bounds = self._bounds(x0, layout, True)
        relaxed_bounds = None

        status, solver_status = "failed", ""
        iterations = solver_iterations = projected = 0
        objective, step = float("nan"), float("nan")
        solved = False
        lin = qm = None
        for _ in range(s.iterations):
            iterations += 1
            tic = time.perf_counter()
            lin_k = model.linearize(xs[:T], us)
            toc = time.perf_counter()
            timings["time_linearize_s"] += toc - tic
            if not (np.isfinite(lin_k.fx).all() and np.isfinite(lin_k.fu).all()
                    and np.isfinite(lin_k.f0).all()):
                status = "nonfinite_linearization"
                break
            qm_k = quadratic_model(cost, xs, us)
            if s.hessian_regularization > 0:
                idx = np.arange(nx + nu)
                qm_k.H[:, idx, idx] += s.hessian_regularization
                idx = np.arange(nx)
                qm_k.Hf[idx, idx] += s.hessian_regularization
            timings["time_cost_s"] += time.perf_counter() - toc
            if not (np.isfinite(qm_k.H).all() and np.isfinite(qm_k.g).all()
                    and np.isfinite(qm_k.Hf).all() and np.isfinite(qm_k.gf).all()):
                status = "nonfinite_cost"
                break
            H_src = np.concatenate([qm_k.H.ravel(), qm_k.Hf.ravel()])
            A_src = np.concatenate([-lin_k.fx.ravel(), -lin_k.fu.ravel(), [1.0]])
            g = np.concatenate([qm_k.g.ravel(), qm_k.gf])
            b = lin_k.f0.ravel()
            res = backend.solve(H_src, A_src, g, b, *bounds, w0, lam_x, lam_g)
            timings["solver_time_s"] += res.solver_time_s
            solver_iterations += max(res.iterations, 0)
            ok = res.success and self._feasible(res.w, bounds, lin_k, layout)
            this_status = "solved"
            if not ok and state_bounds and s.relax_state_bounds:
                if relaxed_bounds is None:
                    relaxed_bounds = self._bounds(x0, layout, False)
                res = backend.solve(H_src, A_src, g, b, *relaxed_bounds, w0, lam_x, lam_g)
                timings["solver_time_s"] += res.solver_time_s
                solver_iterations += max(res.iterations, 0)
                ok = res.success and self._feasible(res.w, relaxed_bounds, lin_k, layout)
                this_status = "solved_relaxed"
            solver_status = res.status
            if res.success and not ok:
                solver_status = f"{res.status} (solution violates the constraints by " \
                    f"{self._violation:.3g} > feasibility_tolerance)"
            if not ok:
                status = "failed"
                break
            xs_new, us_new = layout.unpack(res.w)
            # Interior-point solutions may sit a hair outside the box; the policy clips anyway.
            us_new = self.clip(us_new)
            step = float(np.max(np.abs(us_new - us) / (np.abs(us) + 1.0)))
            xs, us = xs_new, us_new
            xs[0] = x0
            lin, qm = lin_k, qm_k
            projected = qm_k.projected
            objective = res.objective
            solved = True
            status = this_status
            lam_x, lam_g = res.lam_x, res.lam_g
            w0 = res.w
            if step < s.tol_step:
                break

        if solved:
            K, feedback = None, "none"
            if s.feedback:
                tic = time.perf_counter()
                K, feedback = self._gains(lin, qm, xs, us)
                timings["time_feedback_s"] = time.perf_counter() - tic
            if K is None:
                K = np.zeros((T, nu, nx))
            self._lam_x, self._lam_g = lam_x, lam_g
        else:
            xs, us, K = fallback
            feedback = "previous" if K is not None else "none"
            if K is None:
                K = np.zeros((T, nu, nx))
            if status == "failed" and not solver_status:
                solver_status = "not_solved"
            self._lam_x = self._lam_g = None
        with np.errstate(invalid="ignore", over="ignore"):
            J = float(cost.total(xs, us))
            if getattr(model, "time_varying", False):
                pred = np.concatenate([model.predict(xs[t], us[t], t)[0] for t in range(T)])
            else:
                pred = model.predict(xs[:T], us)[0]
            defect = float(np.max(np.abs(pred - xs[1:])))
        self._xs, self._us, self._K = xs, us, K
        self._t_nominal = float(t0)
        self.stats = dict(status=status, solver_status=solver_status, solver=s.solver,
                          iterations=iterations, solver_iterations=solver_iterations,
                          cost=J, objective=objective, step=step, max_defect=defect,
                          projected_hessians=projected, feedback=feedback,
                          warm_start_shift=shift, build_time_s=build_time,
                          solve_time_s=time.perf_counter() - t_start, **timings)
        return LinearGaussianPolicy(K=K, k=us, xbar=xs[:T], cov=None, t0=t0, dt=self.dt,
                                    u_min=self.u_min, u_max=self.u_max)
