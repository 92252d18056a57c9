"""Hyper-parameters of the CasADi LTV-MPC planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.settings import setting

__all__ = ["NLP_SOLVERS", "QP_SOLVERS", "SOLVERS", "CasadiMPCSettings"]

#: Solvers reached through ``casadi.conic`` with numeric (H, A) data: the LTV-MPC problem
#: with a quadratic cost model is a convex QP.
QP_SOLVERS = ("hpipm", "qrqp", "osqp")
#: Solvers reached through ``casadi.nlpsol`` on a parametric symbolic problem.
NLP_SOLVERS = ("ipopt", "fatrop")
SOLVERS = QP_SOLVERS + NLP_SOLVERS


@dataclass(frozen=True)
class CasadiMPCSettings:
    """LTV-MPC (real-time iteration) settings.

    The default solver is HPIPM (Frison & Diehl 2020), the fastest accurate one measured
    on the 7-joint arm (BENCHMARKS.md, 'CasADi LTV-MPC solvers').
    """
    horizon: int = setting(50, "planning horizon", unit="steps", low=1, high=100000)
    solver: str = setting(
        "hpipm", "QP/NLP solver of the convexified problem: hpipm (structure-exploiting "
        "interior point), qrqp (active set), osqp (ADMM), ipopt, fatrop", choices=SOLVERS)
    iterations: int = setting(
        1, "sequential convexifications (re-linearise around the new solution) per optimize "
        "call; 1 is the real-time iteration", low=1, high=1000, dynamic=True)
    tol_step: float = setting(
        1e-6, "stop the convexification loop when max_t,i |du_ti|/(|u_ti|+1) is below this",
        low=0.0, high=1.0, dynamic=True)
    velocity_limits: tuple[float, ...] = setting(
        (), "joint velocity bounds |qd_j| <= v_j on x[nx/2:], one value for all joints or one "
        "per joint; empty: none", unit="rad/s or m/s", low=0.0, high=1e6, dynamic=True)
    relax_state_bounds: bool = setting(
        True, "if the problem with position/velocity bounds is infeasible (e.g. the state is "
        "already past a limit), solve it again with torque bounds only", dynamic=True)
    max_solver_iterations: int = setting(
        0, "iteration limit of the QP/NLP solver per solve; 0: the solver's default here "
        "(hpipm 100, qrqp 1000, osqp 20000, ipopt 1000, fatrop 1000)", low=0, high=1000000)
    tolerance: float = setting(
        0.0, "solver optimality/feasibility tolerance (hpipm residuals, qrqp constraint and "
        "dual tolerances, osqp eps_abs/eps_rel, ipopt/fatrop tol); 0: 1e-8 (osqp 1e-6)",
        low=0.0, high=1e-2)
    feasibility_tolerance: float = setting(
        1e-6, "largest bound violation (state/action units) or linearised-dynamics violation "
        "(relative to 1 + max|x|) accepted in a solution; more counts as a solver failure",
        low=0.0, high=1.0, dynamic=True)
    hpipm_mode: str = setting(
        "robust", "HPIPM preset (its iteration options)",
        choices=("speed_abs", "speed", "balance", "robust"))
    hessian_regularization: float = setting(
        1e-9, "added to the diagonal of the cost Hessian so the QP stays strictly convex when "
        "a cost term has no curvature in some direction (e.g. zero action weight)",
        low=0.0, high=1e6)
    warm_start: bool = setting(
        True, "pass the shifted previous solution (and duals where the solver uses them) "
        "as the initial guess", dynamic=True)
    feedback: bool = setting(
        True, "return Riccati feedback gains of the convexified problem (clamped controls get "
        "zero gain); false: open-loop policy (K = 0)", dynamic=True)
