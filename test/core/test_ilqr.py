"""iLQR / control-limited DDP: exact on LQ problems, box-constrained optimum, nonlinear
swing-up, warm starts, hand-over, time-varying models and (if available) MuJoCo MPC."""
import numpy as np
import pytest
from scipy.optimize import minimize

from analytic_models import AnalyticModel as _Analytic
from analytic_models import Pendulum
from analytic_models import spec_for as _spec
from mbrl_ros.core import registry
from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.models.base import (Linearization, check_xu)
from mbrl_ros.core.planners import Planner
from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.settings import from_mapping, specs






class LinearModel(_Analytic):
    """x' = A_t x + B_t u, time-invariant (A (nx,nx)) or time-varying (A (T,nx,nx))."""

    def __init__(self, A, B, dt=0.05):
        self.time_varying = A.ndim == 3
        super().__init__({}, _spec(A.shape[-1], B.shape[-1], dt))
        self.A, self.B = A, B
        self.calls_t = []

    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        if self.time_varying:
            self.calls_t.append(t)
            return x @ self.A[t].T + u @ self.B[t].T, None
        return x @ self.A.T + u @ self.B.T, None

    def linearize(self, xs, us):
        T = xs.shape[0]
        if self.time_varying:
            A, B = self.A[:T], self.B[:T]
        else:
            A = np.broadcast_to(self.A, (T,) + self.A.shape)
            B = np.broadcast_to(self.B, (T,) + self.B.shape)
        return Linearization(A, B, np.zeros((T, self.spec.nx)))





def _lq_problem(seed, nx=5, nu=2, T=30, time_varying=False):
    rng = np.random.default_rng(seed)
    n_mats = T if time_varying else 1
    A = np.eye(nx) + 0.1 * rng.standard_normal((n_mats, nx, nx))
    A *= 0.98 / np.max(np.abs(np.linalg.eigvals(A)), axis=1)[:, None, None]
    B = rng.standard_normal((n_mats, nx, nu))
    if not time_varying:
        A, B = A[0], B[0]
    M = rng.standard_normal((nx, nx))
    Q = M @ M.T / nx + 0.1 * np.eye(nx)
    N = rng.standard_normal((nu, nu))
    R = N @ N.T / nu + 0.1 * np.eye(nu)
    Qf = 5.0 * Q
    cost = QuadraticCost(Q, R, Qf, x_target=rng.standard_normal(nx))
    x0 = 3.0 * rng.standard_normal(nx)
    return LinearModel(A, B), cost, x0


def _riccati(model, cost, T):
    """Finite-horizon discrete-time LQR for x' = A x + B u with cost
    0.5 (x-r)'Q(x-r) + 0.5 u'Ru: u_t = K_t x_t + c_t. Returns K (T,nu,nx), c (T,nu),
    Quu (T,nu,nu)."""
    Q, R, Qf, r = cost.Q, cost.R, cost.Qf, cost.x_target
    P, p = Qf, -Qf @ r
    K = np.zeros((T, R.shape[0], Q.shape[0]))
    c = np.zeros((T, R.shape[0]))
    Quu = np.zeros((T, R.shape[0], R.shape[0]))
    for t in range(T - 1, -1, -1):
        A = model.A[t] if model.time_varying else model.A
        B = model.B[t] if model.time_varying else model.B
        H = R + B.T @ P @ B
        K[t] = -np.linalg.solve(H, B.T @ P @ A)
        c[t] = -np.linalg.solve(H, B.T @ p)
        Quu[t] = H
        Acl = A + B @ K[t]
        p = -Q @ r + Acl.T @ p + K[t].T @ R @ c[t] + Acl.T @ P @ B @ c[t]
        P = Q + A.T @ P @ Acl
    return K, c, Quu


def _rollout(model, x0, us):
    xs = [x0]
    for t, u in enumerate(us):
        xs.append(model.predict(xs[-1], u, t)[0][0])
    return np.array(xs)


def _planner(nx, nu, limit=np.inf, dt=0.05, **kw):
    settings = from_mapping(ILQRSettings, kw)
    return registry.create("planner", "ilqr", settings, nx, nu, -limit * np.ones(nu),
                           limit * np.ones(nu), dt)


@pytest.mark.parametrize("seed", [0, 1])
def test_unconstrained_lq_equals_riccati_in_one_iteration(seed):
    model, cost, x0 = _lq_problem(seed, nx=4 + seed, T=30)
    T = 30
    K_ref, c_ref, Quu_ref = _riccati(model, cost, T)
    xs_ref = [x0]
    us_ref = []
    for t in range(T):
        us_ref.append(K_ref[t] @ xs_ref[-1] + c_ref[t])
        xs_ref.append(model.A @ xs_ref[-1] + model.B @ us_ref[-1])
    us_ref = np.array(us_ref)
    xs_ref = np.array(xs_ref)

    planner = _planner(model.spec.nx, model.spec.nu, horizon=T, max_iterations=10,
                       mu_init=0.0)
    assert isinstance(planner, ILQRPlanner) and isinstance(planner, Planner)
    pol = planner.optimize(x0, 0.0, model, cost)
    assert isinstance(pol, LinearGaussianPolicy)
    st = planner.stats
    # One Newton step solves an LQ problem exactly; the second iteration only confirms it.
    assert st["accepted"] == 1 and st["iterations"] == 2, st
    assert st["status"] == "converged_gradient"
    np.testing.assert_allclose(pol.K, K_ref, atol=1e-6)
    np.testing.assert_allclose(pol.k, us_ref, atol=1e-6)
    np.testing.assert_allclose(planner.nominal[0], xs_ref, atol=1e-6)
    assert st["cost"] == pytest.approx(cost.total(xs_ref, us_ref), rel=1e-10)
    # iLQG controller covariance = inv(Q_uu) as in GPS.
    np.testing.assert_allclose(pol.cov, np.linalg.inv(Quu_ref), rtol=1e-6, atol=1e-9)
    # The policy reproduces the optimal closed loop from a perturbed state too.
    x = x0 + 0.1
    for t in range(5):
        np.testing.assert_allclose(pol.action(x, t * 0.05), K_ref[t] @ x + c_ref[t], atol=1e-6)
        x = model.A @ x + model.B @ pol.action(x, t * 0.05)


def test_time_varying_model_gets_step_indices():
    model, cost, x0 = _lq_problem(3, nx=4, nu=2, T=20, time_varying=True)
    K_ref, _, _ = _riccati(model, cost, 20)
    planner = _planner(4, 2, horizon=20, max_iterations=5, mu_init=0.0)
    pol = planner.optimize(x0, 0.0, model, cost)
    assert planner.stats["accepted"] == 1
    np.testing.assert_allclose(pol.K, K_ref, atol=1e-6)
    assert model.calls_t[:20] == list(range(20))


def _lbfgsb_open_loop(model, cost, x0, T, limit):
    """Box-constrained optimum over open-loop controls of the linear system, with the
    exact gradient from the stacked prediction matrices."""
    nx, nu = model.spec.nx, model.spec.nu
    Sx = np.zeros((T + 1, nx, nx))
    Su = np.zeros((T + 1, nx, T, nu))
    Sx[0] = np.eye(nx)
    for t in range(T):
        Sx[t + 1] = model.A @ Sx[t]
        Su[t + 1] = np.einsum("ij,jsk->isk", model.A, Su[t])
        Su[t + 1, :, t] = model.B
    Su = Su.reshape(T + 1, nx, T * nu)
    free = np.einsum("tij,j->ti", Sx, x0)
    W = np.stack([cost.Q] * T + [cost.Qf])
    r = cost.x_target

    def f(U):
        X = free + Su @ U
        d = X - r
        Wd = np.einsum("tij,tj->ti", W, d)
        Uu = U.reshape(T, nu)
        val = 0.5 * np.sum(d * Wd) + 0.5 * np.einsum("ti,ij,tj->", Uu, cost.R, Uu)
        grad = np.einsum("ti,tik->k", Wd, Su) + (Uu @ cost.R).ravel()
        return val, grad

    res = minimize(f, np.zeros(T * nu), jac=True, method="L-BFGS-B",
                   bounds=[(-limit, limit)] * (T * nu),
                   options=dict(ftol=1e-15, gtol=1e-11, maxiter=20000, maxcor=50))
    return res.fun, res.x.reshape(T, nu)


def test_box_constrained_lq_matches_lbfgsb_and_clamped_rows_are_zero():
    model, cost, x0 = _lq_problem(5, nx=5, nu=2, T=30)
    T = 30
    free_opt = _planner(5, 2, horizon=T, max_iterations=5, mu_init=0.0)
    free_opt.optimize(x0, 0.0, model, cost)
    u_unc = free_opt.nominal[1]
    limit = 0.15 * np.abs(u_unc).max()
    J_ref, U_ref = _lbfgsb_open_loop(model, cost, x0, T, limit)

    planner = _planner(5, 2, limit=limit, horizon=T, max_iterations=100, mu_init=0.0,
                       tol_cost=1e-12, tol_grad=1e-9)
    pol = planner.optimize(x0, 0.0, model, cost)
    xs, us = planner.nominal
    assert np.all(np.abs(us) <= limit)
    at_bound = np.isclose(np.abs(us), limit, rtol=0, atol=1e-9)
    assert at_bound.sum() >= 5, "the limits must be active for this test to mean anything"
    assert planner.stats["cost"] == pytest.approx(J_ref, rel=1e-4)
    assert planner.stats["cost"] <= J_ref * (1 + 1e-6)
    np.testing.assert_allclose(us, U_ref, atol=1e-3)
    # Control-limited DDP: controls clamped at a bound get no feedback.
    assert np.all(pol.K[at_bound] == 0.0)
    assert np.any(pol.K[~at_bound] != 0.0)
    assert planner.stats["n_clamped"] == at_bound.sum()


def test_box_constrained_clamping_only_mode_respects_limits():
    model, cost, x0 = _lq_problem(5, nx=5, nu=2, T=30)
    planner = _planner(5, 2, limit=0.3, horizon=30, max_iterations=30, mu_init=0.0,
                       box_qp=False)
    pol = planner.optimize(x0, 0.0, model, cost)
    assert np.all(np.abs(planner.nominal[1]) <= 0.3)
    assert planner.stats["n_boxqp"] == 0
    assert np.all(np.abs(pol.action(10 * x0, 0.0)) <= 0.3)


def _pendulum_cost(T_weight=1.0):
    return QuadraticCost.diagonal([1.0, 0.1], [0.01], qf=[100.0 * T_weight, 10.0 * T_weight],
                                  x_target=np.array([np.pi, 0.0]))


def test_pendulum_swing_up_with_torque_limit():
    model = Pendulum(dt=0.05)
    cost = _pendulum_cost()
    # 4 N*m cannot lift the pendulum (needs g = 9.81) directly: it has to pump energy.
    planner = _planner(2, 1, limit=4.0, horizon=80, max_iterations=200, mu_init=1.0)
    pol = planner.optimize(np.zeros(2), 0.0, model, cost)
    xs, us = planner.nominal
    assert planner.stats["status"].startswith("converged"), planner.stats
    assert np.all(np.abs(us) <= 4.0)
    assert abs(xs[-1, 0] - np.pi) < 0.05 and abs(xs[-1, 1]) < 0.2
    assert np.any(us < -3.0) and np.any(us > 3.0)          # it swung both ways
    # The returned policy, run on the model, follows the plan.
    np.testing.assert_allclose(_rollout(model, np.zeros(2), [pol.action(x, i * 0.05)
                               for i, x in enumerate(xs[:-1])]), xs, atol=1e-9)
    assert pol.cov is not None and np.all(np.linalg.eigvalsh(pol.cov) > 0)


@pytest.mark.parametrize("parallel", [False, True])
def test_warm_start_beats_cold_start_with_same_budget(parallel):
    model = Pendulum(dt=0.05)
    cost = _pendulum_cost()
    T, dt = 60, 0.05
    warm = _planner(2, 1, limit=4.0, horizon=T, max_iterations=3, mu_init=1.0,
                    parallel_line_search="always" if parallel else "never")
    x = np.zeros(2)
    for _ in range(8):                          # converge somewhat at t = 0 (no shift)
        pol = warm.optimize(x, 0.0, model, cost)
        assert warm.stats["warm_start_shift"] == 0
    prev_us = warm.nominal[1]
    x1 = model.predict(x, pol.action(x, 0.0))[0][0]
    warm.optimize(x1, dt, model, cost)
    assert warm.stats["warm_start_shift"] == 1
    cold = _planner(2, 1, limit=4.0, horizon=T, max_iterations=3, mu_init=1.0,
                    parallel_line_search="always" if parallel else "never")
    cold.optimize(x1, dt, model, cost)
    assert warm.stats["cost"] <= cold.stats["cost"]
    # The warm start began from the shifted previous actions (followed by the feedback
    # of the previous plan), so its initial cost is already far below the cold one.
    assert warm.stats["cost_initial"] < 0.5 * cold.stats["cost_initial"]
    assert prev_us.shape == warm.nominal[1].shape


@pytest.mark.parametrize("vectorized", [True, False])
def test_line_search_orders_give_the_same_plan(vectorized):
    """'never' (one by one), 'always' (one batch) and 'auto' (for a vectorized model: the
    full step alone, then the rest in one batch; else one by one) accept the same step
    sizes; the rows each line-search rollout carried show which order ran."""
    model = Pendulum(dt=0.05)
    model.vectorized = vectorized
    cost = _pendulum_cost()
    out = {}
    for mode in ("never", "always", "auto"):
        # limit 20 N*m: the full Newton steps overshoot and some are rejected
        p = _planner(2, 1, limit=20.0, horizon=50, max_iterations=15, mu_init=1.0,
                     parallel_line_search=mode)
        rows = []
        rollout = p._rollout

        def counting(*a, _r=rollout, _rows=rows, **kw):
            xs, us = _r(*a, **kw)
            if len(a) > 5 or "alphas" in kw:
                _rows.append(xs.shape[0])
            return xs, us
        p._rollout = counting
        p.optimize(np.zeros(2), 0.0, model, cost)
        out[mode] = (p.nominal[1], p.stats["cost"], rows)
    n = len(ILQRSettings().line_search_alphas)
    assert set(out["never"][2]) == {1} and set(out["always"][2]) == {n}
    auto_rows = out["auto"][2]
    if vectorized:
        assert set(auto_rows) == {1, n - 1}        # some full steps were rejected
    else:
        assert auto_rows == out["never"][2]
    for mode in ("always", "auto"):
        np.testing.assert_allclose(out[mode][0], out["never"][0], atol=1e-8)
        assert out[mode][1] == pytest.approx(out["never"][1], rel=1e-10)


def test_handover_between_planners_and_reset():
    model, cost, x0 = _lq_problem(7, nx=4, nu=2, T=25)
    a = _planner(4, 2, limit=2.0, horizon=25, max_iterations=20, mu_init=0.0)
    a.optimize(x0, 1.0, model, cost)
    xs_a, us_a = a.nominal
    b = _planner(4, 2, limit=2.0, horizon=25, max_iterations=1, mu_init=0.0)
    assert a.nominal_time == 1.0
    b.warm_start(us_a, t0=a.nominal_time)       # bumpless switch at the same time/state
    b.optimize(x0, 1.0, model, cost)
    assert b.stats["cost_initial"] == pytest.approx(a.stats["cost"], rel=1e-12)
    # Handing over a plan made one step earlier shifts it.
    b.warm_start(us_a, t0=0.95)
    b.optimize(xs_a[1], 1.0, model, cost)
    assert b.stats["warm_start_shift"] == 1
    # Different lengths are resized; reset forgets everything.
    b.warm_start(us_a[:5])
    b.reset(10, initial_actions=np.ones((3, 2)))
    assert b.nominal is None and b.horizon == 10
    pol = b.optimize(x0, 0.0, model, cost)
    assert pol.horizon == 10
    assert b.stats["cost_initial"] == pytest.approx(
        cost.total(_rollout(model, x0, np.ones((10, 2))), np.ones((10, 2))))
    with pytest.raises(ValueError, match="shape"):
        b.warm_start(np.ones((3, 5)))


def test_nonconvex_action_cost_needs_regularisation():
    # R < 0 makes Q_uu indefinite: the backward pass only succeeds with mu > 0 (Tassa et
    # al. 2012 schedule), and the box keeps the concave problem bounded.
    model, cost, x0 = _lq_problem(5, nx=4, nu=2, T=20)
    concave = QuadraticCost(cost.Q, -0.5 * np.eye(2), cost.Qf, cost.x_target)
    planner = _planner(4, 2, limit=1.0, horizon=20, max_iterations=30, mu_init=0.0)
    pol = planner.optimize(x0, 0.0, model, concave)
    st = planner.stats
    assert st["regularization"] > 0.0 and st["accepted"] > 0
    assert st["cost"] < st["cost_initial"]
    assert np.all(np.isfinite(pol.K)) and np.all(np.abs(planner.nominal[1]) <= 1.0)


class _NaNJacobian(LinearModel):
    def linearize(self, xs, us):
        lin = super().linearize(xs, us)
        return Linearization(np.full_like(lin.fx, np.nan), lin.fu, lin.f0)


class _Exploding(LinearModel):
    def predict(self, x, u, t=None):
        x, u = check_xu(self.spec, x, u)
        return np.full_like(x, np.inf), None


def test_nonfinite_models_are_reported_not_propagated():
    model, cost, x0 = _lq_problem(2, nx=4, nu=2, T=10)
    planner = _planner(4, 2, limit=1.0, horizon=10, max_iterations=3)
    pol = planner.optimize(x0, 0.0, _NaNJacobian(model.A, model.B), cost)
    assert planner.stats["status"] == "nonfinite_linearization"
    assert np.all(np.isfinite(pol.action(x0, 0.0)))
    with pytest.raises(ValueError, match="not finite"):
        planner.optimize(x0, 0.05, _Exploding(model.A, model.B), cost)


def test_settings_schema_and_registry():
    names = [s.name for s in specs(ILQRSettings)]
    assert {"horizon", "max_iterations", "mu_init", "line_search_alphas"} <= set(names)
    assert "ilqr" in registry.available("planner")
    assert registry.lookup("planner", "ilqr") is ILQRPlanner
    with pytest.raises(Exception, match="line_search_alphas"):
        from_mapping(ILQRSettings, {"line_search_alphas": []})


def test_mpc_drives_mujoco_arm2_to_target():
    mm = pytest.importorskip("mbrl_ros.core.models.mujoco_model",
                             reason="MuJoCo dynamics model not available")
    dt = 0.02
    model = mm.MujocoModel.from_sim("arm2", control_period=dt)
    nx, nu = model.spec.nx, model.spec.nu
    assert (nx, nu) == (4, 2)
    target = np.array([0.8, -0.6, 0.0, 0.0])
    cost = QuadraticCost.diagonal([100.0, 100.0, 1.0, 1.0], [0.01, 0.01],
                                  qf=[1000.0, 1000.0, 10.0, 10.0], x_target=target)
    planner = _planner(nx, nu, limit=3.0, horizon=30, max_iterations=2, dt=dt)
    x = np.zeros(nx)
    for i in range(int(1.5 / dt)):          # replan every step, act with the new policy
        pol = planner.optimize(x, i * dt, model, cost)
        u = pol.action(x, i * dt)
        assert np.all(np.abs(u) <= 3.0)
        x = model.predict(x, u)[0][0]
    assert np.max(np.abs(x[:2] - target[:2])) < 0.05, x
    assert np.max(np.abs(x[2:])) < 0.5, x


def test_feedback_scale_scales_only_the_executed_gains():
    # mujoco_mpc's iLQG feedback_scaling: the same plan, its gains times the scale; the
    # next solve (warm-started from the full gains) is the same as without the scale.
    model, cost, x0 = _lq_problem(5, nx=4, nu=2, T=20)
    full, half = _planner(4, 2), _planner(4, 2, feedback_scale=0.5)
    for p in (full, half):
        p.reset(20)
    pf, ph = full.optimize(x0, 0.0, model, cost), half.optimize(x0, 0.0, model, cost)
    np.testing.assert_allclose(ph.k, pf.k)
    np.testing.assert_allclose(ph.xbar, pf.xbar)
    np.testing.assert_allclose(ph.K, 0.5 * pf.K)
    assert np.abs(pf.K).max() > 0.1
    x1 = x0 + 0.1
    np.testing.assert_allclose(half.optimize(x1, 0.05, model, cost).k,
                               full.optimize(x1, 0.05, model, cost).k)
    with pytest.raises(ValueError):
        _planner(4, 2, feedback_scale=1.5)
