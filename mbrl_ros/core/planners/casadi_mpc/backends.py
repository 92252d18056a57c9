"""CasADi solver back ends of the LTV-MPC problem: one template, two solver paths.

:class:`SolverBackend` is the template: it builds one CasADi ``Function`` for a
:class:`~.problem.ProblemLayout` and the settings (once per horizon and solver options),
binds zero-copy numpy buffers to its arguments and results (CasADi's
``Function.buffer``), and per replan writes the problem's numbers, the bounds and the warm
start into them, evaluates, and reads the solution, multipliers and solver statistics.
The two paths differ only in how the problem reaches CasADi:

* :class:`ConicBackend` -- ``casadi.conic`` (hpipm, qrqp, osqp) with the numeric sparse H
  and A of the layout;
* :class:`NlpBackend` -- ``casadi.nlpsol`` (ipopt, fatrop) on the same problem written
  symbolically, the nonzeros of H and A (and g) as parameters.

HPIPM: Frison & Diehl, "HPIPM: a high-performance quadratic programming framework for
model predictive control", IFAC 2020. FATROP: Vanroye et al., "FATROP: A Fast Constrained
Optimal Control Problem Solver for Robot Trajectory Optimization and Control", IROS 2023.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mbrl_ros.core.planners.casadi_mpc.problem import ProblemLayout
from mbrl_ros.core.planners.casadi_mpc.settings import NLP_SOLVERS, CasadiMPCSettings

__all__ = ["ConicBackend", "NlpBackend", "SolveResult", "SolverBackend", "make_backend"]

# HPIPM takes every variable as box-constrained; infinite bounds are replaced by this.
# 1e8 (CasADi's default) stalls its interior point at the iteration limit on arm7; 1e6
# converges in the same ~25 iterations as tighter values and is far beyond any joint
# velocity (rad/s) or torque (N*m) a robot reaches.
_HPIPM_INF = 1e6

# Solver defaults used when the settings leave max_solver_iterations / tolerance at 0:
# (iteration limit, tolerance). OSQP (first-order ADMM) needs many iterations and does not
# reach 1e-8 on badly scaled arm problems.
_SOLVER_DEFAULTS = {"hpipm": (100, 1e-8), "qrqp": (1000, 1e-8), "osqp": (20000, 1e-6),
                    "ipopt": (1000, 1e-8), "fatrop": (1000, 1e-8)}


def solver_limits(s: CasadiMPCSettings) -> tuple[float, int]:
    """(tolerance, iteration limit) of the configured solver (0 in the settings: default)."""
    it, tol = _SOLVER_DEFAULTS[s.solver]
    return (float(s.tolerance) if s.tolerance > 0 else tol,
            int(s.max_solver_iterations) if s.max_solver_iterations > 0 else it)


@dataclass
class SolveResult:
    """One solve: w (nw,) the solution, lam_x (nw,) / lam_g (ng,) its multipliers of the
    bounds / the dynamics rows, objective the QP objective (without constant), solver
    time [s]; success and status as the solver reports them."""
    success: bool
    status: str
    iterations: int
    w: np.ndarray
    lam_x: np.ndarray
    lam_g: np.ndarray
    objective: float
    solver_time_s: float


class SolverBackend(ABC):
    """A built CasADi solver for one layout; :meth:`solve` takes the numeric problem data.

    Subclasses set the CasADi argument/result names of the dynamics rows, their initial
    multipliers and the objective (``_LBG``, ``_UBG``, ``_LAM_G0``, ``_LAM_G``,
    ``_OBJECTIVE``) and implement :meth:`_build` (the CasADi Function) and
    :meth:`_set_matrices` (H, A and g into its arguments).
    """

    uses_duals = False
    # CasADi 3.8.2's HPIPM interface returns the first solution again on later evaluations
    # of one Function.buffer; a fresh buffer per solve is cheap (BENCHMARKS.md, 'CasADi
    # LTV-MPC solvers').
    _rebind = False
    _LBG = _UBG = _LAM_G0 = _LAM_G = _OBJECTIVE = ""

    def __init__(self, layout: ProblemLayout, settings: CasadiMPCSettings):
        self.layout = layout
        self.settings = settings
        tol, it = solver_limits(settings)
        opts: dict[str, Any] = {"error_on_fail": False, "print_time": False}
        self._bind(self._build(tol, it, opts))

    @abstractmethod
    def _build(self, tol: float, it: int, opts: dict[str, Any]) -> Any:
        """The CasADi Function of the configured solver (``opts``: the common options)."""

    @abstractmethod
    def _set_matrices(self, H_src: np.ndarray, A_src: np.ndarray, g: np.ndarray) -> None:
        """Write H, A (layout sources) and g (nw,) into the argument buffers."""

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

    def solve(self, H_src, A_src, g, b, lbx, ubx, w0, lam_x0, lam_g0) -> SolveResult:
        """Solve with H, A sources (see :class:`~.problem.ProblemLayout`), g (nw,), b (ng,),
        bounds lbx/ubx (nw,), initial guess w0 (nw,) and multipliers lam_x0 (nw,),
        lam_g0 (ng,). Never raises for a failed solve (``success`` False)."""
        a = self.args
        self._set_matrices(H_src, A_src, g)
        a[self._LBG][:] = b
        a[self._UBG][:] = b
        a["lbx"][:] = lbx
        a["ubx"][:] = ubx
        a["x0"][:] = w0
        a["lam_x0"][:] = lam_x0
        a[self._LAM_G0][:] = lam_g0
        tic = time.perf_counter()
        if self._rebind:
            self._bind(self._fn, keep=True)
        self._eval()
        st = self._buf.stats()
        dt = time.perf_counter() - tic
        r = self.res
        status = st.get("return_status", st.get("unified_return_status", ""))
        return SolveResult(bool(st.get("success", False)), str(status),
                           int(st.get("iter_count", -1)), r["x"].copy(), r["lam_x"].copy(),
                           r[self._LAM_G].copy(), float(r[self._OBJECTIVE][0]), dt)


class ConicBackend(SolverBackend):
    """``casadi.conic`` (hpipm, qrqp, osqp) with numeric H and A."""

    _LBG, _UBG, _LAM_G0, _LAM_G, _OBJECTIVE = "lba", "uba", "lam_a0", "lam_a", "cost"

    def _build(self, tol: float, it: int, opts: dict[str, Any]) -> Any:
        import casadi as ca
        s, L = self.settings, self.layout
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
        return ca.conic("casadi_mpc", s.solver, {"h": L.sparsity(L.H_pattern),
                                                 "a": L.sparsity(L.A_pattern)}, opts)

    def _set_matrices(self, H_src, A_src, g) -> None:
        self.layout.h_values(H_src, self.args["h"])
        self.layout.a_values(A_src, self.args["a"])
        self.args["g"][:] = g


class NlpBackend(SolverBackend):
    """``casadi.nlpsol`` (ipopt, fatrop) on the layout's problem with the nonzeros of H and
    A and the vector g as parameters: ``min 0.5 w' H w + g' w  s.t.  A w = b``.

    The variables are declared stage by stage (x_t, u_t, ..., x_T) and x_{t+1} enters its
    gap-closing row with the constant coefficient 1 (A's identity blocks, not parameters),
    which FATROP's structure detection needs.
    """
    uses_duals = True
    _LBG, _UBG, _LAM_G0, _LAM_G, _OBJECTIVE = "lbg", "ubg", "lam_g0", "lam_g", "f"

    def _build(self, tol: float, it: int, opts: dict[str, Any]) -> Any:
        import casadi as ca
        s, L = self.settings, self.layout
        T, nx, nz = L.T, L.nx, L.nz
        pH = ca.SX.sym("H", L.nH)
        self._a_param = np.flatnonzero(L.A_perm != L.A_ONE)   # nonzeros of A that vary
        pA = ca.SX.sym("A", self._a_param.size)
        a_nz = [ca.SX(1.0)] * L.nA
        for k, j in enumerate(self._a_param):
            a_nz[j] = pA[k]
        pg = ca.SX.sym("g", L.nw)
        H = ca.SX(L.sparsity(L.H_pattern), pH)
        A = ca.SX(L.sparsity(L.A_pattern), ca.vertcat(*a_nz))
        # Written stage by stage (0.5 z' H_t z + g_t' z; x_{t+1} + A_t x_t + B_t u_t with
        # A's blocks), not as 0.5 w' H w + g' w and A w: the same numbers, but the stage
        # sums keep the rounding of the stage-wise formulation the solver results were
        # recorded with.
        x = ca.SX.sym("x0", nx)
        w, gap, f = [x], [], 0
        for t in range(T):
            u, xn = ca.SX.sym(f"u{t}", L.nu), ca.SX.sym(f"x{t + 1}", nx)
            w += [u, xn]
            z = ca.vertcat(x, u)
            st, rt, c = slice(t * nz, (t + 1) * nz), slice(t * nx, (t + 1) * nx), t * nz
            f += 0.5 * ca.dot(z, ca.mtimes(H[st, st], z)) + ca.dot(pg[st], z)
            gap.append(xn + ca.mtimes(A[rt, c:c + nx], x) + ca.mtimes(A[rt, c + nx:c + nz], u))
            x = xn
        sT = slice(T * nz, L.nw)
        f += 0.5 * ca.dot(x, ca.mtimes(H[sT, sT], x)) + ca.dot(pg[sT], x)
        nlp = {"x": ca.vertcat(*w), "p": ca.vertcat(pH, pA, pg), "f": f, "g": ca.vertcat(*gap)}
        if s.solver == "ipopt":
            ip = {"print_level": 0, "sb": "yes", "tol": tol, "max_iter": it,
                  "hessian_constant": "yes", "jac_c_constant": "yes", "jac_d_constant": "yes"}
            if s.warm_start:
                ip.update(warm_start_init_point="yes", warm_start_bound_push=1e-9,
                          warm_start_mult_bound_push=1e-9, mu_init=1e-6)
            opts["ipopt"] = ip
        elif s.solver == "fatrop":
            # A small bound push keeps the warm start where it is; with FATROP's defaults
            # it needed several times the iterations on arm7 (BENCHMARKS.md, 'CasADi
            # LTV-MPC solvers').
            opts.update(structure_detection="auto", equality=[True] * L.ng, expand=True,
                        fatrop={"print_level": 0, "tol": tol, "max_iter": it,
                                "bound_push": 1e-8, "bound_frac": 1e-8})
        else:
            raise ValueError(f"{s.solver!r} is not an NLP solver")
        self._a_nz = np.empty(L.nA)
        return ca.nlpsol("casadi_mpc", s.solver, nlp, opts)

    def _set_matrices(self, H_src, A_src, g) -> None:
        L, p = self.layout, self.args["p"]
        nH, nAp = L.nH, self._a_param.size
        L.h_values(H_src, p[:nH])
        L.a_values(A_src, self._a_nz)
        np.take(self._a_nz, self._a_param, out=p[nH:nH + nAp])
        p[nH + nAp:] = g


def make_backend(layout: ProblemLayout, settings: CasadiMPCSettings) -> SolverBackend:
    """The back end of ``settings.solver`` built for ``layout``."""
    if settings.solver in NLP_SOLVERS:
        return NlpBackend(layout, settings)
    return ConicBackend(layout, settings)
