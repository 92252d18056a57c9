"""The iLQR planner's fast paths over learned models against their reference paths: the
compiled closed-loop rollout of the ensemble's MLP mean (``mlp_dynamics`` +
``mlp_rollout_kernel``) against ``predict``, the ensemble's analytic Jacobian against
autograd (``linearize_reference``), and whole iLQR solves with the fast paths against the
same solves through the reference paths (float64 models: equal to ~1e-9 relative)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.models.ensemble import EnsembleModel
from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings

sys.path.insert(0, str(Path(__file__).parent))
from test_model_ensemble import _pendulum  # noqa: E402

torch.set_num_threads(1)


def _fit(dtype="float64", activation="silu", prior=True, layers=3, data=None):
    m = EnsembleModel(EnsembleModel.Settings(
        members=4, n_elites=3, hidden_layers=layers, hidden_units=24, epochs=6, dtype=dtype,
        linear_prior=prior, activation=activation, seed=2))
    m.fit(data if data is not None else _pendulum(600))
    return m


@pytest.fixture(scope="module")
def models():
    out = {}
    for act in ("silu", "relu", "tanh"):
        for prior in (True, False):
            out[act, prior] = _fit(activation=act, prior=prior, layers=3 if prior else 1)
    return out


class _Reference:
    """The same model through its reference paths only: per-step ``predict`` and the
    autograd Jacobian (no mlp_dynamics, no linearize_mean)."""
    time_varying = False
    vectorized = True

    def __init__(self, model):
        self.m = model
        self.spec = model.spec

    def predict(self, x, u, t=None):
        return self.m.predict(x, u)

    def linearize(self, xs, us):
        return self.m.linearize_reference(xs, us)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _planner(T=20, limit=1.5, **kw):
    return ILQRPlanner(ILQRSettings(horizon=T, **kw), 2, 1, -limit * np.ones(1),
                       limit * np.ones(1), 0.05)


@pytest.mark.parametrize("act", ["silu", "relu", "tanh"])
@pytest.mark.parametrize("prior", [True, False])
@pytest.mark.parametrize("feedback", [True, False])
def test_mlp_rollout_kernel_equals_predict(models, act, prior, feedback):
    model = models[act, prior]
    rng = np.random.default_rng(3)
    T = 30
    planner = _planner(T, limit=0.6)
    x0 = np.array([0.4, -0.3])
    U = rng.uniform(-1, 1, (T, 1))
    alphas = np.array([1.0, 0.5, 0.125])
    args = dict(xbar=rng.uniform(-1, 1, (T + 1, 2)), K=rng.standard_normal((T, 1, 2)),
                kff=rng.standard_normal((T, 1)), alphas=alphas) if feedback else {}
    xs_f, us_f = planner._rollout(model, x0, U, **args)
    xs_r, us_r = planner._rollout(_Reference(model), x0, U, **args)
    assert xs_f.shape == xs_r.shape == ((3 if feedback else 1), T + 1, 2)
    assert _rel(xs_f, xs_r) < 1e-9 and _rel(us_f, us_r) < 1e-12
    assert np.abs(us_f).max() == pytest.approx(0.6)            # the limits bind
    # the dynamics are not trivial: the states move and the rows differ
    assert np.ptp(xs_f[0, :, 1]) > 0.05
    if feedback:
        assert np.abs(xs_f[0] - xs_f[2]).max() > 1e-3


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-5)])
@pytest.mark.parametrize("act", ["silu", "relu", "tanh"])
def test_analytic_jacobian_equals_autograd(dtype, tol, act):
    model = _fit(dtype, act)
    data = _pendulum(50, seed=5)
    xs, us = data.states, data.actions
    fast, ref = model.linearize(xs, us), model.linearize_reference(xs, us)
    for name in ("fx", "fu", "f0"):
        assert _rel(getattr(fast, name), getattr(ref, name)) < tol, name
    np.testing.assert_array_equal(fast.cov, ref.cov)
    assert np.abs(fast.fx[:, 1, 0]).max() > 0.05               # coupled, not identity
    mean_only = model.linearize_mean(xs, us)
    assert mean_only.cov is None
    assert _rel(mean_only.fx, ref.fx) < tol and _rel(mean_only.fu, ref.fu) < tol
    assert _rel(mean_only.f0, ref.f0) < tol


@pytest.mark.parametrize("parallel", ["auto", "always", "never"])
def test_ilqr_over_ensemble_fast_paths_equal_reference_paths(models, parallel):
    """Three warm-started MPC solves: the same plans, iterations and step sizes whether
    the planner rolls out through the compiled kernel and the analytic Jacobian or
    through predict and autograd."""
    model = models["silu", True]
    cost = QuadraticCost(np.diag([1.0, 0.1]), 0.1 * np.eye(1), np.diag([5.0, 0.5]),
                         x_target=np.array([0.8, 0.0]))
    runs = []
    for m in (model, _Reference(model)):
        planner = _planner(25, limit=1.0, max_iterations=3, parallel_line_search=parallel)
        x = np.array([-0.5, 0.2])
        out = []
        for k in range(3):
            pol = planner.optimize(x, 0.05 * k, m, cost)
            out.append((planner.nominal, dict(planner.stats)))
            x = model.predict(x, pol.action(x, 0.05 * k))[0][0]
        runs.append(out)
    for (nom_f, st_f), (nom_r, st_r) in zip(*runs):
        assert _rel(nom_f[0], nom_r[0]) < 1e-9 and _rel(nom_f[1], nom_r[1]) < 1e-9
        for key in ("iterations", "accepted", "alpha", "status"):
            assert st_f[key] == st_r[key], key
        assert st_f["cost"] == pytest.approx(st_r["cost"], rel=1e-9)
    assert runs[0][0][1]["cost"] < runs[0][0][1]["cost_initial"]   # it optimises


def test_sin_cos_inputs_fall_back_to_the_reference_paths():
    data = _pendulum(400)
    data.meta["continuous_joints"] = ("p",)
    model = _fit(data=data)
    assert model.spec.periodic == (0,)
    assert model.mlp_dynamics() is None
    xs, us = data.states[:10], data.actions[:10]
    fast, ref = model.linearize(xs, us), model.linearize_reference(xs, us)
    np.testing.assert_array_equal(fast.fx, ref.fx)
    planner = _planner(10)
    xs_p, _ = planner._rollout(model, xs[0], us[:10])
    xs_r, _ = planner._rollout(_Reference(model), xs[0], us[:10])
    np.testing.assert_array_equal(xs_p, xs_r)


def test_mlp_dynamics_of_wrong_shape_is_a_clear_error(models):
    model = models["silu", True]

    class Bad(_Reference):
        def mlp_dynamics(self):
            return self.m.mlp_dynamics()._replace(c=np.zeros(3))

    class BadAct(_Reference):
        def mlp_dynamics(self):
            return self.m.mlp_dynamics()._replace(activation="gelu")
    cost = QuadraticCost(np.eye(2), np.eye(1))
    for bad, match in ((Bad(model), "c"), (BadAct(model), "gelu")):
        with pytest.raises(ValueError, match=f"mlp_dynamics.*{match}"):
            _planner(5).optimize(np.zeros(2), 0.0, bad, cost)
