"""CasADi LTV-MPC: exact on LQ problems (vs a Riccati sweep and iLQR), torque/position/
velocity bounds, sequential convexification on a nonlinear model, failure paths that never
raise, warm start / hand-over, and closed-loop MPC of arm2 with the MuJoCo model."""
import dataclasses

import numpy as np
import pytest

from analytic_models import AnalyticModel as _Analytic
from analytic_models import Pendulum
from analytic_models import spec_for as _spec
from mbrl_ros.core import registry
from mbrl_ros.core.costs import JointLimitBarrier, QuadraticCost
from mbrl_ros.core.models.base import (
    Linearization,
    check_xu,
)
from mbrl_ros.core.planners import Planner
from mbrl_ros.core.planners.casadi_mpc import (
    CasadiMPCPlanner,
    CasadiMPCSettings,
    quadratic_model,
)
from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.settings import SettingsError, from_mapping, specs

SOLVERS = ["hpipm", "qrqp", "ipopt", "fatrop", "osqp"]


class LinearModel(_Analytic):
    """x' = A_t x + B_t u + c_t (time-varying if A is (T, nx, nx))."""

    def __init__(self, A, B, c=None, dt=0.05):
        self.time_varying = A.ndim == 3
        super().__init__({}, _spec(A.shape[-1], B.shape[-1], dt))
        self.A, self.B = A, B
        self.c = np.zeros(A.shape[:-1]) if c is None else c

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        if self.time_varying:
            return x @ self.A[t].T + u @ self.B[t].T + self.c[t], None
        return x @ self.A.T + u @ self.B.T + self.c, None

    def linearize(self, xs, us):
        T = xs.shape[0]
        if self.time_varying:
            return Linearization(self.A[:T], self.B[:T], self.c[:T].copy())
        return Linearization(np.broadcast_to(self.A, (T,) + self.A.shape),
                             np.broadcast_to(self.B, (T,) + self.B.shape),
                             np.broadcast_to(self.c, (T, self.spec.nx)).copy())





class NanModel(LinearModel):
    def linearize(self, xs, us):
        lin = super().linearize(xs, us)
        fx = np.array(lin.fx)
        fx[0, 0, 0] = np.nan
        return Linearization(fx, lin.fu, lin.f0)


def _random_lq(seed=0, nx=4, nu=2):
    rng = np.random.default_rng(seed)
    A = np.eye(nx) + 0.1 * rng.standard_normal((nx, nx))
    B = 0.2 * rng.standard_normal((nx, nu))
    Mq = rng.standard_normal((nx, nx))
    cost = QuadraticCost(Mq @ Mq.T + np.eye(nx), np.diag(rng.uniform(0.1, 1.0, nu)),
                         5.0 * np.eye(nx), x_target=rng.standard_normal(nx),
                         u_ref=0.1 * rng.standard_normal(nu))
    return LinearModel(A, B), cost, rng.standard_normal(nx)


def _riccati_gains(A, B, cost, T):
    """Time-invariant LQR gains u = K x of the finite-horizon problem (the target only
    changes the feed-forward)."""
    P = cost.Qf
    Ks = []
    for _ in range(T):
        K = -np.linalg.solve(cost.R + B.T @ P @ B, B.T @ P @ A)
        P = cost.Q + A.T @ P @ (A + B @ K)
        P = 0.5 * (P + P.T)
        Ks.append(K)
    return np.array(Ks[::-1])


def _dense_lq_controls(model, cost, x0, T):
    """Exact unconstrained LQ optimum by eliminating the states (batch least squares)."""
    A, B = model.A, model.B
    nx, nu = B.shape
    # x_t = Phi_t x0 + sum_{s<t} Gamma_{t,s} u_s
    Phi = [np.eye(nx)]
    for _ in range(T):
        Phi.append(A @ Phi[-1])
    G = np.zeros((T + 1, nx, T * nu))
    for t in range(1, T + 1):
        G[t] = A @ G[t - 1]
        G[t][:, (t - 1) * nu:t * nu] += B
    H = np.kron(np.eye(T), cost.R)
    g = -np.kron(np.ones(T), cost.R @ cost.u_ref)
    for t in range(T + 1):
        W = cost.Q if t < T else cost.Qf
        H += G[t].T @ W @ G[t]
        g += G[t].T @ W @ (Phi[t] @ x0 - cost.x_target)
    return np.linalg.solve(H, -g).reshape(T, nu)


def _planner(T=20, nx=4, nu=2, lo=-np.inf, hi=np.inf, dt=0.05, position_limits=None, **kw):
    return CasadiMPCPlanner(CasadiMPCSettings(horizon=T, **kw), nx, nu, lo, hi, dt,
                            position_limits=position_limits)


def _ilqr(T, nx, nu, lo=-np.inf, hi=np.inf, dt=0.05, iters=100):
    return ILQRPlanner(ILQRSettings(horizon=T, max_iterations=iters, tol_cost=1e-14,
                                    tol_grad=1e-12), nx, nu, lo, hi, dt)


# ---------------------------------------------------------------------------------------
def test_registered_and_settings_schema():
    p = registry.create("planner", "casadi_mpc", None, 4, 2, -1.0, 1.0, 0.05)
    assert isinstance(p, CasadiMPCPlanner) and isinstance(p, Planner)
    names = [sp.name for sp in specs(CasadiMPCSettings)]
    assert {"horizon", "solver", "iterations", "velocity_limits"} <= set(names)
    s = from_mapping(CasadiMPCSettings, {"solver": "ipopt", "velocity_limits": [2.0]})
    assert s.solver == "ipopt" and s.velocity_limits == (2.0,)
    with pytest.raises(SettingsError):
        from_mapping(CasadiMPCSettings, {"solver": "cplex"})


def test_configuration_errors_raise_value_error():
    with pytest.raises(ValueError):
        _planner(position_limits=np.zeros((3, 2)))                # wrong shape
    with pytest.raises(ValueError):
        _planner(position_limits=np.array([[1.0, -1.0], [0.0, 1.0]]))   # lower > upper
    with pytest.raises(ValueError):
        _planner(velocity_limits=(1.0, 2.0, 3.0))                 # neither 1 nor nx/2 values
    with pytest.raises(ValueError):
        _planner(nx=3, velocity_limits=(1.0,))                    # state is not [q, qd]


@pytest.mark.parametrize("solver", SOLVERS)
def test_lq_problem_equals_riccati_and_ilqr(solver):
    T, nx, nu = 20, 4, 2
    model, cost, x0 = _random_lq()
    kw = {"tolerance": 1e-10} if solver == "osqp" else {}
    p = _planner(T, nx, nu, solver=solver, **kw)
    policy = p.optimize(x0, 0.0, model, cost)
    assert p.stats["status"] == "solved", p.stats
    assert isinstance(policy, LinearGaussianPolicy)
    u_exact = _dense_lq_controls(model, cost, x0, T)
    il = _ilqr(T, nx, nu)
    il.optimize(x0, 0.0, model, cost)
    atol = 1e-4 if solver == "osqp" else 1e-5
    np.testing.assert_allclose(policy.k, u_exact, atol=atol)
    np.testing.assert_allclose(policy.k, il.nominal[1], atol=atol)
    # Feedback gains are the exact LQR gains of the LQ problem.
    np.testing.assert_allclose(policy.K, _riccati_gains(model.A, model.B, cost, T), atol=1e-6)
    assert p.stats["feedback"] == "riccati"
    np.testing.assert_allclose(p.stats["cost"], cost.total(*p.nominal), rtol=1e-12)
    assert p.stats["max_defect"] < 1e-6
    # A second solve of the built problem from another state (warm-started from the first
    # solution) returns the new optimum, not the previous one.
    x1 = x0 + np.array([0.5, -0.3, 0.2, 0.1])
    policy = p.optimize(x1, 0.0, model, cost)
    assert p.stats["status"] == "solved" and p.stats["build_time_s"] == 0.0
    np.testing.assert_allclose(policy.k, _dense_lq_controls(model, cost, x1, T), atol=atol)


def test_time_varying_model_and_affine_term():
    rng = np.random.default_rng(3)
    T, nx, nu = 15, 3, 2
    A = np.eye(nx) + 0.1 * rng.standard_normal((T, nx, nx))
    B = 0.3 * rng.standard_normal((T, nx, nu))
    c = 0.05 * rng.standard_normal((T, nx))
    model = LinearModel(A, B, c)
    cost = QuadraticCost.diagonal([1.0] * nx, [0.1] * nu, [10.0] * nx, x_target=np.ones(nx))
    x0 = rng.standard_normal(nx)
    p = _planner(T, nx, nu)
    p.optimize(x0, 0.0, model, cost)
    il = _ilqr(T, nx, nu)
    il.optimize(x0, 0.0, model, cost)
    np.testing.assert_allclose(p.nominal[1], il.nominal[1], atol=1e-5)
    np.testing.assert_allclose(p.nominal[0], il.nominal[0], atol=1e-6)


@pytest.mark.parametrize("solver", ["hpipm", "ipopt", "qrqp"])
def test_torque_bounds_match_box_constrained_ddp(solver):
    T, nx, nu = 25, 4, 2
    model, cost, x0 = _random_lq(seed=1)
    x0 = 3.0 * x0
    u_free = _dense_lq_controls(model, cost, x0, T)
    bound = 0.4 * np.abs(u_free).max()
    p = _planner(T, nx, nu, -bound, bound, solver=solver)
    policy = p.optimize(x0, 0.0, model, cost)
    assert p.stats["status"] == "solved", p.stats
    us = p.nominal[1]
    assert np.all(np.abs(us) <= bound + 1e-9)
    assert np.sum(np.isclose(np.abs(us), bound, atol=1e-6)) >= 3   # bounds are active
    il = _ilqr(T, nx, nu, -bound, bound, iters=200)
    il.optimize(x0, 0.0, model, cost)
    J_ilqr = cost.total(*il.nominal)
    assert p.stats["cost"] == pytest.approx(J_ilqr, rel=1e-4)
    # Saturated controls get no feedback.
    sat = np.isclose(np.abs(us), bound, atol=1e-7)
    assert np.all(policy.K[sat] == 0.0)


def _double_integrator(dt=0.05):
    A = np.array([[1.0, dt], [0.0, 1.0]])
    B = np.array([[0.5 * dt * dt], [dt]])
    return LinearModel(A, B, dt=dt)


def test_position_bounds_stop_the_plan_at_the_limit():
    model = _double_integrator()
    T = 60
    cost = QuadraticCost.diagonal([10.0, 0.1], [1e-3], [100.0, 1.0], x_target=[2.0, 0.0])
    limits = np.array([[-1.0, 1.0]])
    p = _planner(T, 2, 1, -5.0, 5.0, position_limits=limits)
    p.optimize(np.zeros(2), 0.0, model, cost)
    assert p.stats["status"] == "solved", p.stats
    xs = p.nominal[0]
    assert xs[:, 0].max() <= 1.0 + 1e-7
    assert xs[-1, 0] == pytest.approx(1.0, abs=1e-3)     # pushed against the bound
    assert abs(xs[-1, 1]) < 1e-2
    # Without the bound the plan overshoots 1 towards the target 2.
    free = _planner(T, 2, 1, -5.0, 5.0)
    free.optimize(np.zeros(2), 0.0, model, cost)
    assert free.nominal[0][:, 0].max() > 1.5


def test_velocity_limits_respected():
    model = _double_integrator()
    cost = QuadraticCost.diagonal([10.0, 0.0], [1e-4], [100.0, 1.0], x_target=[1.0, 0.0])
    p = _planner(40, 2, 1, -20.0, 20.0, velocity_limits=(0.5,))
    p.optimize(np.zeros(2), 0.0, model, cost)
    assert p.stats["status"] == "solved"
    assert np.abs(p.nominal[0][:, 1]).max() <= 0.5 + 1e-7
    assert np.isclose(np.abs(p.nominal[0][:, 1]).max(), 0.5, atol=1e-4)


def test_sequential_convexification_converges_to_ilqr_optimum():
    model = Pendulum()
    T = 40
    cost = QuadraticCost.diagonal([1.0, 0.1], [0.05], [100.0, 10.0], x_target=[np.pi, 0.0])
    x0 = np.zeros(2)
    il = _ilqr(T, 2, 1, -3.0, 3.0, iters=300)
    il.optimize(x0, 0.0, model, cost)
    J_ilqr = cost.total(*il.nominal)
    p = _planner(T, 2, 1, -3.0, 3.0, iterations=100, tol_step=1e-10)
    p.optimize(x0, 0.0, model, cost)
    assert p.stats["status"] == "solved"
    assert p.stats["iterations"] > 2
    assert p.stats["max_defect"] < 1e-6          # converged plans are dynamically feasible
    assert p.stats["cost"] == pytest.approx(J_ilqr, rel=1e-4)


def test_nonquadratic_cost_uses_its_expansion():
    """A barrier term enters through its Gauss-Newton expansion; the convexified problem
    still converges to the iLQR optimum of the same cost."""
    model = _double_integrator()
    T = 40
    cost = (QuadraticCost.diagonal([10.0, 0.1], [1e-2], [100.0, 1.0], x_target=[2.0, 0.0])
            + JointLimitBarrier([-1.0], [1.0], nx=2, nu=1, weight=1e3))
    il = _ilqr(T, 2, 1, -5.0, 5.0, iters=300)
    il.optimize(np.zeros(2), 0.0, model, cost)
    p = _planner(T, 2, 1, -5.0, 5.0, iterations=50, tol_step=1e-10)
    p.optimize(np.zeros(2), 0.0, model, cost)
    assert p.stats["cost"] == pytest.approx(cost.total(*il.nominal), rel=1e-5)


def test_quadratic_model_is_exact_for_quadratic_costs_and_second_order_otherwise():
    rng = np.random.default_rng(5)
    T, nx, nu = 6, 4, 2
    _, cost, _ = _random_lq(seed=5)
    xs, us = rng.standard_normal((T + 1, nx)), rng.standard_normal((T, nu))
    qm = quadratic_model(cost, xs, us)
    z = np.concatenate([xs[:T], us], axis=1)
    value = (0.5 * np.einsum("ti,tij,tj->", z, qm.H, z) + np.sum(qm.g * z)
             + 0.5 * xs[T] @ qm.Hf @ xs[T] + qm.gf @ xs[T])
    const = (0.5 * np.sum((cost.x_target @ cost.Q) * cost.x_target) * T
             + 0.5 * cost.u_ref @ cost.R @ cost.u_ref * T
             + 0.5 * cost.x_target @ cost.Qf @ cost.x_target)
    assert value + const == pytest.approx(cost.total(xs, us), rel=1e-12)
    # Barrier: gradient of the model at the nominal equals the cost's gradient.
    barrier = JointLimitBarrier([-0.5, -0.5], [0.5, 0.5], nx, nu, weight=7.0)
    qm = quadratic_model(barrier, xs, us)
    lx, lu, *_ = barrier.stage_derivatives(xs[:T], us)
    gz = np.einsum("tij,tj->ti", qm.H, z) + qm.g
    np.testing.assert_allclose(gz[:, :nx], lx, atol=1e-12)
    np.testing.assert_allclose(gz[:, nx:], lu, atol=1e-12)
    assert qm.projected == 0


def test_warm_start_shift_and_handover():
    T, nx, nu = 20, 4, 2
    model, cost, x0 = _random_lq(seed=2)
    p = _planner(T, nx, nu)
    p.optimize(x0, 1.0, model, cost)
    xs = p.nominal[0]
    assert p.nominal_time == 1.0
    # One step later from the predicted state: the shifted plan is (close to) optimal again.
    p.optimize(xs[1], 1.05, model, cost)
    assert p.stats["warm_start_shift"] == 1
    # Hand over another planner's nominal.
    il = _ilqr(T, nx, nu)
    il.optimize(x0, 2.0, model, cost)
    p.warm_start(il.nominal[1], t0=il.nominal_time)
    policy = p.optimize(x0, 2.0, model, cost)
    assert p.stats["status"] == "solved" and p.stats["warm_start_shift"] == 0
    np.testing.assert_allclose(policy.k, il.nominal[1], atol=1e-5)


def test_solver_failure_returns_previous_shifted_plan_without_raising():
    T, nx, nu = 20, 4, 2
    model, cost, x0 = _random_lq(seed=4)
    p = _planner(T, nx, nu, -1.0, 1.0)
    first = p.optimize(x0, 0.0, model, cost)
    assert p.stats["status"] == "solved"
    # Test hook: an iteration limit of 1 makes the interior-point solver fail.
    p.settings = dataclasses.replace(p.settings, max_solver_iterations=1)
    policy = p.optimize(first.xbar[1] + 0.3, 0.05, model, cost)
    assert p.stats["status"] == "failed" and p.stats["solver_status"] != ""
    assert p.stats["warm_start_shift"] == 1
    np.testing.assert_allclose(policy.k[:-1], first.k[1:])          # shifted by one step
    np.testing.assert_allclose(policy.K[:-1], first.K[1:])
    assert np.all(np.isfinite(policy.action(x0, 0.05)))
    # A fresh planner that fails on its first call returns the clipped initial guess.
    q = _planner(T, nx, nu, -1.0, 1.0, max_solver_iterations=1)
    pol = q.optimize(x0, 0.0, model, cost)
    assert q.stats["status"] == "failed"
    np.testing.assert_array_equal(pol.k, np.zeros((T, nu)))
    np.testing.assert_array_equal(pol.K, np.zeros((T, nu, nx)))


def test_infeasible_state_bounds_are_relaxed_or_reported():
    """Past the joint limit and moving outward with weak torques, the bounds cannot hold at
    step 1: relaxed by default, a reported failure (no exception) otherwise."""
    model = _double_integrator()
    cost = QuadraticCost.diagonal([1.0, 0.1], [1e-2], [10.0, 1.0])
    limits = np.array([[-1.0, 1.0]])
    x0 = np.array([1.2, 3.0])
    p = _planner(20, 2, 1, -0.1, 0.1, position_limits=limits)
    p.optimize(x0, 0.0, model, cost)
    assert p.stats["status"] == "solved_relaxed"
    q = _planner(20, 2, 1, -0.1, 0.1, position_limits=limits, relax_state_bounds=False)
    policy = q.optimize(x0, 0.0, model, cost)
    assert q.stats["status"] == "failed"
    assert np.all(np.isfinite(policy.action(x0, 0.0)))


def test_nonfinite_linearization_is_reported_not_raised():
    model, cost, x0 = _random_lq(seed=6)
    bad = NanModel(model.A, model.B)
    p = _planner(10, 4, 2, -1.0, 1.0)
    policy = p.optimize(x0, 0.0, bad, cost)
    assert p.stats["status"] == "nonfinite_linearization"
    assert np.all(np.isfinite(policy.action(x0, 0.0)))


def test_closed_loop_mpc_drives_arm2_to_target():
    pytest.importorskip("mujoco")
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    from mbrl_ros.sim.env import MujocoSim

    dt = 0.02
    sim = MujocoSim("arm2", control_period=dt)
    model = MujocoModel.from_sim("arm2", control_period=dt)
    target = np.array([0.8, -1.2, 0.0, 0.0])
    cost = QuadraticCost.diagonal([100.0, 100.0, 1.0, 1.0], [1e-3, 1e-3],
                                  [1000.0, 1000.0, 10.0, 10.0], x_target=target)
    lim = sim.effort_limits
    p = _planner(25, 4, 2, -lim, lim, dt=dt, position_limits=sim.position_limits)
    for _ in range(75):
        x = sim.state()
        policy = p.optimize(x, sim.time, model, cost)
        assert p.stats["status"] == "solved", p.stats
        sim.step(policy.action(x, sim.time))
    assert np.abs(sim.state()[:2] - target[:2]).max() < 0.02
    assert np.abs(sim.state()[2:]).max() < 0.1


def test_solutions_violating_constraints_are_rejected_even_if_reported_solved():
    """A solver that reports success with violated bounds (seen with qrqp on arm7) must not
    become the plan."""
    T, nx, nu = 10, 4, 2
    model, cost, x0 = _random_lq(seed=7)
    p = _planner(T, nx, nu, -0.5, 0.5, relax_state_bounds=False)
    assert p.prepare() > 0.0 and p.prepare() == 0.0
    backend = next(iter(p._backends.values()))[1]
    honest = backend.solve

    def lying_solve(*args):
        res = honest(*args)
        res.w[p.nx:p.nx + p.nu] += 0.1         # u_0 moved off the dynamics
        return res

    backend.solve = lying_solve
    policy = p.optimize(x0, 0.0, model, cost)
    assert p.stats["status"] == "failed"
    assert "violates" in p.stats["solver_status"]
    assert np.all(np.abs(policy.k) <= 0.5)
