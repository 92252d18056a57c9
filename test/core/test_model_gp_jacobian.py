"""The GP's analytic Jacobian of the predictive mean (posterior ``mean_jacobian``, no
autograd) against the autograd reference (``linearize_reference``) for every posterior
kind: exact (RBF, Matern 5/2 and 3/2), sparse, LMC-mixed sparse, Kronecker multitask, and
with sin/cos features; on training points (D = 0, where Matern's sqrt is singular) and
off them."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings

sys.path.insert(0, str(Path(__file__).parent))
from test_model_gp import CONFIGS, make, pendulum  # noqa: E402

torch.set_num_threads(1)
KINDS = {**CONFIGS, "exact_matern32": {"kernel": "matern32"},
         "sparse_matern52": {"kernel": "matern52", "max_exact": 100, "n_inducing": 60}}


@pytest.fixture(scope="module")
def fitted():
    data = pendulum(200, seed=0)
    return {name: _fit(kw, data) for name, kw in KINDS.items()}


def _fit(kw, data):
    m = make(**kw)
    m.fit(data)
    return m


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("name", list(KINDS))
def test_analytic_jacobian_equals_autograd(fitted, name):
    """Off the training points both are accurate to rounding: equal to 1e-9. On them the
    autograd reference itself is off by up to ~3e-8 (the clamp of the rounded squared
    distance at a training point drops its gradient), so 1e-7 there; the exact value is
    checked in the next test."""
    model = fitted[name]
    train = pendulum(200, seed=0)
    off = pendulum(40, seed=7)
    for xs, us, tol in ((off.states, off.actions, 1e-9),
                        (train.states[:15], train.actions[:15], 1e-7)):
        fast, ref = model.linearize(xs, us), model.linearize_reference(xs, us)
        for part in ("fx", "fu", "f0"):
            assert _rel(getattr(fast, part), getattr(ref, part)) < tol, part
        np.testing.assert_array_equal(fast.cov, ref.cov)
        # the learned part matters: the Jacobian is not the prior's alone
        assert np.abs(fast.fx[:, 1, 0]).max() > 0.05
        mean_only = model.linearize_mean(xs, us)
        assert mean_only.cov is None
        for part in ("fx", "fu", "f0"):
            assert _rel(getattr(mean_only, part), getattr(ref, part)) < tol, part
    assert model.linearize(xs[:0], us[:0]).fx.shape == (0, 2, 2)


def test_analytic_jacobian_on_training_points_equals_the_direct_sum(fitted):
    """Exact RBF GP at training points: the latent Jacobians equal the direct sum
    sum_n a_n dk/dD 2 w (z - c_n) outputscale, evaluated in long double."""
    model = fitted["exact"]
    data = pendulum(200, seed=0)
    z = model._normalise(data.states[:15], data.actions[:15])
    post = model._post
    Z = z.numpy().astype(np.longdouble)
    diff = Z[:, None, :] - post.centers.numpy().astype(np.longdouble)[None]   # (B, n, d)
    ref = np.zeros((len(Z), post.n_latent, Z.shape[1]), dtype=np.longdouble)
    for q in range(post.n_latent):
        w = post.w[q].numpy().astype(np.longdouble)
        a = post.alpha[q, :, 0].numpy().astype(np.longdouble)
        g = -0.5 * np.exp(-0.5 * (diff ** 2 * w).sum(-1)) * a                 # (B, n)
        ref[:, q] = float(post.outputscale[q]) * 2 * w * (g[..., None] * diff).sum(1)
    _, J = post.mean_jacobian(z)
    assert _rel(J.numpy(), ref.astype(np.float64)) < 1e-12


def test_sin_cos_features_chain_rule():
    data = pendulum(150, seed=3)
    data.meta["continuous_joints"] = ("pendulum",)
    model = make()
    model.fit(data)
    assert model.spec.periodic == (0,)
    xs, us = data.states[:20] + 3.0, data.actions[:20]        # wrapped angles too
    fast, ref = model.linearize(xs, us), model.linearize_reference(xs, us)
    for part in ("fx", "fu", "f0"):
        assert _rel(getattr(fast, part), getattr(ref, part)) < 1e-9, part


def test_ilqr_plans_equal_with_the_analytic_jacobian(fitted):
    """iLQR over the GP takes linearize_mean (analytic, no variance); the same solves
    through the autograd reference give the same plans."""
    model = fitted["exact"]

    class Reference:
        time_varying = False
        vectorized = True
        spec = model.spec

        def predict(self, x, u, t=None):
            return model.predict(x, u)

        def predict_mean(self, x, u):
            return model.predict_mean(x, u)

        def linearize(self, xs, us):
            return model.linearize_reference(xs, us)
    cost = QuadraticCost(np.diag([5.0, 0.1]), 0.1 * np.eye(1), np.diag([20.0, 1.0]),
                         x_target=np.array([0.5, 0.0]))
    plans = []
    for m in (model, Reference()):
        planner = ILQRPlanner(ILQRSettings(horizon=20, max_iterations=3), 2, 1,
                              -2.0 * np.ones(1), 2.0 * np.ones(1), 0.05)
        x = np.array([-0.3, 0.0])
        out = []
        for k in range(3):
            pol = planner.optimize(x, 0.05 * k, m, cost)
            out.append((planner.nominal, planner.stats["iterations"], planner.stats["cost"]))
            x = model.predict_mean(x, pol.action(x, 0.05 * k))[0]
        plans.append(out)
    for (nf, itf, cf), (nr, itr, cr) in zip(*plans):
        assert _rel(nf[0], nr[0]) < 1e-9 and _rel(nf[1], nr[1]) < 1e-9
        assert itf == itr and cf == pytest.approx(cr, rel=1e-9)
