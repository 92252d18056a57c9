"""The iLQR planner's compiled rollout of a GP's posterior mean (``kernel_dynamics`` +
``kernel_rollout_kernel``) against the GP's own ``predict_mean``: exact (shared centres),
sparse (inducing points per output), the sparse multitask GP (latents mixed into the
outputs) and each kernel; whole solves agree; the multitask exact GP and a model above
``compiled_gp_max_centers`` keep the predict path."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings

sys.path.insert(0, str(Path(__file__).parent))
from test_model_gp import make, pendulum  # noqa: E402

torch.set_num_threads(1)
CONFIGS = {
    "exact": {},
    "exact_matern52": {"kernel": "matern52"},
    "exact_matern32": {"kernel": "matern32"},
    "sparse": {"max_exact": 100, "n_inducing": 60},
    "multitask_sparse": {"outputs": "multitask", "max_exact": 100, "n_inducing": 60,
                         "sparse_iterations": 5},
}


@pytest.fixture(scope="module")
def models():
    data = pendulum(200, seed=0)
    out = {}
    for name, kw in CONFIGS.items():
        m = make(**kw)
        m.fit(data)
        out[name] = m
    return out


class _Reference:
    """The same GP without ``kernel_dynamics``: rolled out by ``predict_mean``."""
    time_varying = False
    vectorized = True

    def __init__(self, model):
        self.m, self.spec = model, model.spec

    def predict(self, x, u, t=None):
        return self.m.predict(x, u)

    def predict_mean(self, x, u):
        return self.m.predict_mean(x, u)

    def linearize_mean(self, xs, us):
        return self.m.linearize_mean(xs, us)

    linearize = linearize_mean


def _planner(T=20, limit=1.5, **kw):
    return ILQRPlanner(ILQRSettings(horizon=T, **kw), 2, 1, -limit * np.ones(1),
                       limit * np.ones(1), 0.05)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("feedback", [True, False])
def test_kernel_rollout_equals_predict_mean(models, name, feedback):
    model = models[name]
    assert model.kernel_dynamics() is not None
    rng = np.random.default_rng(4)
    T = 30
    planner = _planner(T, limit=1.2)
    x0 = np.array([0.4, -0.3])
    U = rng.uniform(-1.5, 1.5, (T, 1))
    args = dict(xbar=rng.uniform(-1, 1, (T + 1, 2)), K=rng.standard_normal((T, 1, 2)),
                kff=rng.standard_normal((T, 1)), alphas=np.array([1.0, 0.5, 0.125])
                ) if feedback else {}
    assert planner._fast_dynamics(model)[0] == "kernel"
    xs_f, us_f = planner._rollout(model, x0, U, **args)
    xs_r, us_r = planner._rollout(_Reference(model), x0, U, **args)
    assert _rel(us_f, us_r) < 1e-9
    assert _rel(xs_f, xs_r) < 1e-9
    assert np.ptp(xs_f[..., 0]) > 0.1            # the state moved: not a trivial rollout


@pytest.mark.parametrize("name", ["exact", "sparse"])
def test_ilqr_solves_agree_with_the_predict_path(models, name):
    model = models[name]
    cost = QuadraticCost(np.diag([5.0, 0.5]), 0.05 * np.eye(1), np.diag([50.0, 5.0]),
                         x_target=np.array([1.0, 0.0]))
    x0 = np.array([-0.5, 0.2])
    fast, ref = _planner(), _planner()
    for p in (fast, ref):
        p.reset(20)
    for k in range(3):
        pf = fast.optimize(x0, 0.05 * k, model, cost)
        pr = ref.optimize(x0, 0.05 * k, _Reference(model), cost)
        assert _rel(pf.k, pr.k) < 1e-7 and _rel(pf.xbar, pr.xbar) < 1e-7
        x0 = pf.xbar[1]
    assert fast._fast_dynamics(model)[0] == "kernel"          # the compiled path ran
    assert ref._fast_dynamics(_Reference(model)) is None        # against predict_mean


def test_where_the_compiled_rollout_does_not_apply(models):
    m = make(outputs="multitask", rank=2)
    m.fit(pendulum(120, seed=1))
    assert m.kernel_dynamics() is None              # the Kronecker posterior
    small = _planner(compiled_gp_max_centers=10)
    assert small._fast_dynamics(models["exact"]) is None
    assert _planner()._fast_dynamics(models["exact"])[0] == "kernel"


def test_gp_solves_add_no_kernel_specialisation(models):
    # the warm-up's signature is the one every planner call uses (no compile at control time)
    from mbrl_ros.core.lqr.rollout import kernel_rollout_kernel
    from mbrl_ros.core.lqr.warmup import warm_up
    warm_up()
    before = len(kernel_rollout_kernel.overloads)
    assert before == 1
    cost = QuadraticCost(np.eye(2), 0.1 * np.eye(1), x_target=np.array([1.0, 0.0]))
    for name in ("exact", "sparse", "exact_matern32"):
        p = _planner(T=13)
        p.reset(13)
        p.optimize(np.array([0.1, 0.0]), 0.0, models[name], cost)
    assert len(kernel_rollout_kernel.overloads) == before
