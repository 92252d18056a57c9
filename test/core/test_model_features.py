"""Continuous joints in the PETS ensemble: sin/cos inputs (InputFeatures) through fit,
predict, propagate, whole-horizon rollouts, linearize and artifacts."""
import numpy as np
import pytest
import torch

from mbrl_ros.core import store
from mbrl_ros.core.models.base import ModelSpec, finite_difference_linearization
from mbrl_ros.core.models.pipeline import InputFeatures
from mbrl_ros.core.models.ensemble import EnsembleModel
from mbrl_ros.core.settings import from_mapping
from mbrl_ros.core.types import TransitionBatch

DT = 0.05


def _pendulum(n, seed):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-3, 3, n)], axis=1)
    u = rng.uniform(-2, 2, (n, 1))
    w = x[:, 1] + DT * (-9.81 * np.sin(x[:, 0]) - 0.2 * x[:, 1] + u[:, 0])
    xn = np.stack([x[:, 0] + DT * w, w], axis=1)
    return TransitionBatch(x, u, xn, np.full(n, DT), np.arange(n) * DT, np.zeros(n, int),
                           ("p/position", "p/velocity"), ("p",),
                           {"continuous_joints": ["p"]})


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    m = EnsembleModel(from_mapping(EnsembleModel.Settings, {"members": 3, "n_elites": 2,
                                                             "epochs": 30, "seed": 0}))
    m.fit(_pendulum(600, 0))
    return m


def test_features_map_and_chain_rule():
    spec = ModelSpec(4, 1, ("a/position", "b/position", "a/velocity", "b/velocity"), ("a",),
                     0.02, "", (1,))
    f = InputFeatures(spec)
    rng = np.random.default_rng(0)
    x, u = rng.standard_normal((5, 4)), rng.standard_normal((5, 1))
    z = f(x, u)
    assert z.shape == (5, f.n_in) == (5, 6)
    np.testing.assert_allclose(z[:, 1], np.sin(x[:, 1]))
    np.testing.assert_allclose(z[:, 4], np.cos(x[:, 1]))
    np.testing.assert_allclose(f(torch.as_tensor(x), torch.as_tensor(u)).numpy(), z)
    W = rng.standard_normal((3, f.n_in))
    dfdx, dfdu = f.chain(np.repeat(W[None], 5, 0), x)
    for i in range(4):
        d = np.zeros(4)
        d[i] = 1e-6
        fd = (f(x + d, u) - f(x - d, u)) @ W.T / 2e-6
        np.testing.assert_allclose(dfdx[:, :, i], fd, atol=1e-8)
    np.testing.assert_allclose(dfdu[:, :, 0], np.repeat(W[None, :, 5], 5, 0))


def test_ensemble_wraps_linearizes_and_round_trips(model, tmp_path):
    assert model.spec.periodic == (0,) and model.features.n_in == 4
    rng = np.random.default_rng(1)
    xq = np.stack([rng.uniform(-2.5, 2.5, 20), rng.uniform(-2, 2, 20)], axis=1)
    uq = rng.uniform(-1, 1, (20, 1))
    turn = np.array([2 * np.pi, 0.0])
    m0, v0 = model.predict(xq, uq)
    m1, v1 = model.predict(xq + turn, uq)
    np.testing.assert_allclose(m1 - turn, m0, atol=1e-5)
    np.testing.assert_allclose(v1, v0, rtol=1e-4, atol=1e-8)
    lin = model.linearize(xq[:5] + turn, uq[:5])
    fd = finite_difference_linearization(lambda a, b: model.predict(a, b)[0],
                                         xq[:5] + turn, uq[:5], eps=1e-4)
    np.testing.assert_allclose(lin.fx, fd.fx, atol=2e-3)
    np.testing.assert_allclose(lin.fu, fd.fu, atol=2e-3)
    info = store.publish(model, tmp_path, "ens")
    loaded = store.load(info.uri)
    assert loaded.spec.periodic == (0,)
    np.testing.assert_allclose(loaded.predict(xq, uq)[0], m0, atol=1e-6)


@pytest.mark.parametrize("mode", ["expectation", "tsinf"])
def test_ensemble_rollout_equals_propagate_steps(model, mode):
    dt = model.torch_dtype
    rng = np.random.default_rng(2)
    n, T = 4, 6
    U = torch.as_tensor(rng.uniform(-1, 1, (n, T, 1)), dtype=dt)
    x0 = torch.as_tensor([3.0, 0.5], dtype=dt)
    xs = model.rollout(x0, U, mode, torch.Generator().manual_seed(0), sample=False)
    x = x0.expand(n, 2)
    member = torch.arange(n) % model.n_elite
    for t in range(T):
        x = model.propagate(x, U[:, t], mode, member, sample=False)
        torch.testing.assert_close(xs[t + 1], x)
