"""MDGPS on a known linear system, the global policy (training, linearisation, artifacts)
and the gps_policy planner."""
import json
import time

import numpy as np
import pytest

from mbrl_ros.core import registry, store
from mbrl_ros.core.policies.neural import (
    NeuralPolicy,
    PolicySettings,
    PolicyTrainer,
    load_policy,
    publish_policy,
)
from mbrl_ros.core.algorithms.gps import MDGPS, Environment, GPSSettings
from mbrl_ros.core.policies.linearization import PolicyPriorGMM, fit_policy_linearization
from mbrl_ros.core.lqr.kl_step import (
    CostExpansion,
    kl_constrained_update,
)
from mbrl_ros.core.costs import QuadraticCost
from mbrl_ros.core.models.base import Linearization, ModelError, ModelSpec
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

DT = 0.05


class LinearEnv:
    """Two decoupled damped double integrators (x = [p1, p2, v1, v2], u = forces) with
    small process noise; conditions differ in the start position."""

    def __init__(self, starts, noise=1e-3, seed=0):
        I = np.eye(2)
        self.A = np.block([[I, DT * I], [0 * I, 0.98 * I]])
        self.B = np.vstack([0.5 * DT * DT * I, DT * I])
        self.nx, self.nu, self.dt = 4, 2, DT
        self.starts = np.asarray(starts, dtype=float)
        self.n_conditions = len(self.starts)
        self.u_min, self.u_max = np.full(2, -10.0), np.full(2, 10.0)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.x = None

    def reset(self, condition):
        self.x = self.starts[condition].copy()
        return self.x.copy()

    def step(self, u):
        self.x = self.A @ self.x + self.B @ u + self.noise * self.rng.standard_normal(4)
        return self.x.copy()


def _lqr_cost(env, cost, T):
    """Expected cost of the optimal (LQR) controller from each start, known dynamics."""
    dyn = Linearization(np.tile(env.A, (T, 1, 1)), np.tile(env.B, (T, 1, 1)),
                        np.zeros((T, 4)), np.tile(env.noise ** 2 * np.eye(4), (T, 1, 1)))
    expansion = CostExpansion.from_samples(cost, np.zeros((1, T + 1, 4)), np.zeros((1, T, 2)))
    ref = LinearGaussianPolicy(K=np.zeros((T, 2, 4)), k=np.zeros((T, 2)),
                               xbar=np.zeros((T, 4)), cov=np.tile(np.eye(2), (T, 1, 1)),
                               t0=0.0, dt=DT, u_min=-np.inf, u_max=np.inf)
    return [kl_constrained_update(dyn, x0, 1e-12 * np.eye(4), expansion, ref, 1e9)
            .expected_cost for x0 in env.starts]


def test_gps_on_a_linear_system_lowers_cost_and_the_policy_imitates():
    env = LinearEnv([[1, 0, 0, 0], [0, 1, 0, 0], [-1, -1, 0, 0]])
    assert isinstance(env, Environment)
    cost = QuadraticCost.diagonal([1, 1, 0.1, 0.1], [0.01, 0.01], [100, 100, 10, 10])
    T = 30
    gps = MDGPS(env, cost, GPSSettings(horizon=T, samples=5, seed=0),
                policy=PolicySettings(hidden=(32, 32), iterations=300),
                distance=lambda x: float(np.linalg.norm(x[:2])))
    recs = gps.run(6)
    lg = np.array([np.mean(r.cost_lg) for r in recs])
    pol = np.array([np.mean(r.cost_policy) for r in recs])
    optimum = float(np.mean(_lqr_cost(env, cost, T)))
    # The controllers' sample cost falls by an order of magnitude; the global policy's
    # cost falls monotonically (5 % slack) to within 20 % of the LQR optimum.
    assert lg[-1] < 0.2 * lg[0]
    assert np.all(np.diff(pol) < 0.05 * pol[:-1]), pol
    assert pol[-1] < 1.2 * optimum, (pol, optimum)
    assert max(recs[-1].policy_final_distance) < 0.2       # do nothing: >= 1
    # Every C-step kept its KL bound.
    for r in recs:
        for kl, status in zip(r.kl, r.traj_opt_status):
            assert status in ("converged", "inactive")
            assert kl <= 1.1 * r.epsilon
    # Imitation: the global policy's mean action at the last samples is close to the
    # controllers' mean action there.
    X, _ = gps.last_samples
    err, ref = [], []
    for m, c in enumerate(gps.controllers):
        Xm = X[m, :, :T]
        target = np.einsum("tij,ntj->nti", c.K, Xm) + c.k_gps
        err.append(gps.policy.mean(Xm.reshape(-1, 4)).reshape(target.shape) - target)
        ref.append(target)
    rel = np.sqrt(np.mean(np.square(err))) / np.sqrt(np.mean(np.square(ref)))
    assert rel < 0.1, rel
    assert json.dumps([r.to_json() for r in recs])          # JSON-able history


def test_trainer_fits_the_precision_weighted_mean_and_closed_form_std():
    """Two targets per state, 0 with precision 1 and 1 with precision 3: the S-step
    optimum is their precision-weighted mean 0.75 and std^2 = 1 / mean precision."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (150, 2))
    X = np.concatenate([x, x])
    U = np.concatenate([np.zeros((150, 1)), np.ones((150, 1))])
    P = np.concatenate([np.ones((150, 1, 1)), 3.0 * np.ones((150, 1, 1))])
    tr = PolicyTrainer(2, 1, -np.inf, np.inf, PolicySettings(hidden=(16,), iterations=400,
                                                             batch_size=300, learning_rate=1e-2))
    stats = tr.train(X, U, P)
    assert stats["loss_after"] < stats["loss_before"]
    pol = tr.policy()
    np.testing.assert_allclose(pol.mean(x), 0.75, atol=0.03)
    np.testing.assert_allclose(pol.std, np.sqrt(1 / 2.0), rtol=1e-12)


def _linear_neural_policy(rng, nx=4, nu=2, std=0.2, limit=np.inf):
    """A NeuralPolicy with one linear layer: u = u_mean + u_scale (W (x-m)/s + b)."""
    return NeuralPolicy((rng.standard_normal((nu, nx)),), (rng.standard_normal(nu),),
                        rng.standard_normal(nx), rng.uniform(0.5, 2, nx), np.zeros(nu),
                        np.full(nu, 2.0), np.full(nu, std), -limit, limit)


@pytest.mark.parametrize("with_prior", [False, True])
def test_policy_linearization_recovers_a_linear_policy(with_prior):
    rng = np.random.default_rng(1)
    pol = _linear_neural_policy(rng)
    W = pol.u_scale[:, None] * pol.weights[0] / pol.x_std
    b = pol.u_mean + pol.u_scale * (pol.biases[0] - pol.weights[0] @ (pol.x_mean / pol.x_std))
    N, T = 5, 12
    X = np.cumsum(rng.standard_normal((N, T, 4)), axis=1)
    prior = None
    if with_prior:
        prior = PolicyPriorGMM(max_samples=20, min_samples_per_cluster=10)
        prior.update(X, pol.mean, rng=np.random.default_rng(0))
    mu = pol.mean(X.reshape(-1, 4)).reshape(N, T, 2)
    K, k, S = fit_policy_linearization(X, mu, pol.std ** 2, prior)
    # exact up to the priors' shrinkage (N = 5 samples per step)
    np.testing.assert_allclose(K, np.broadcast_to(W, K.shape), rtol=5e-3, atol=1e-3)
    np.testing.assert_allclose(k, np.broadcast_to(b, k.shape), rtol=5e-3, atol=1e-2)
    np.testing.assert_allclose(S, np.broadcast_to(np.diag(pol.std ** 2), S.shape), atol=1e-3)


def _spec(nx=4, nu=2, names=("a", "b")):
    return ModelSpec(nx, nu, tuple(f"{j}/position" for j in names)
                     + tuple(f"{j}/velocity" for j in names), names, DT, "test")


def test_policy_artifact_roundtrip_and_refusals(tmp_path):
    rng = np.random.default_rng(2)
    tr = PolicyTrainer(4, 2, -3.0, 3.0, PolicySettings(hidden=(8, 8), iterations=20))
    X = rng.standard_normal((100, 4))
    tr.train(X, np.tanh(X[:, :2]), np.tile(np.eye(2), (100, 1, 1)))
    pol = tr.policy()
    info = publish_policy(pol, tmp_path, "pi", _spec(), tr.settings,
                          extra_arrays={"x_target": np.ones(4)})
    loaded, meta = load_policy(tmp_path / "pi" / "latest", expect=_spec(),
                               checksum=info.checksum)
    np.testing.assert_array_equal(loaded.mean(X), pol.mean(X))
    for x in X[:5]:
        np.testing.assert_array_equal(loaded.action(x, 0.0), pol.action(x, 0.0))
    assert meta["kind"] == "gps_policy" and meta["version"] == 1
    assert meta["spec"].state_names[0] == "a/position"
    np.testing.assert_array_equal(meta["task"]["x_target"], np.ones(4))
    raw = json.loads((tmp_path / "pi" / "v0001" / "model.json").read_text())
    assert raw["settings"]["hidden"] == [8, 8]
    with pytest.raises(ModelError, match="names differ"):
        load_policy(tmp_path / "pi" / "latest", expect=_spec(names=("c", "d")))
    with pytest.raises(ModelError):                   # not a dynamics model
        store.load(tmp_path / "pi" / "latest")
    w = tmp_path / "pi" / "v0001" / "weights.npz"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(ModelError, match="checksum"):
        load_policy(tmp_path / "pi" / "v0001")


def test_policy_action_is_fast_and_clipped():
    rng = np.random.default_rng(3)
    tr = PolicyTrainer(14, 7, -1.0, 1.0, PolicySettings(iterations=5))
    X = rng.standard_normal((64, 14))
    tr.train(X, rng.uniform(-1, 1, (64, 7)), np.tile(np.eye(7), (64, 1, 1)))
    pol = tr.policy()
    x = X[0]
    for _ in range(100):
        pol.action(x, 0.0)
    t0 = time.perf_counter()
    for _ in range(1000):
        u = pol.action(x, 0.0)
    per_call = (time.perf_counter() - t0) / 1000
    assert per_call < 2e-4, per_call                 # typically ~15 us
    big = pol.at(1.0, 0.5)
    assert big.t_end == pytest.approx(1.5) and big.action(100 * x, 1.2).max() <= 1.0
    assert np.all(np.abs(u) <= 1.0)


class _Lin:
    """Known linear model with a spec (as the controller's models have)."""
    time_varying = False

    def __init__(self, spec):
        self.spec = spec
        self.A = np.eye(4) + DT * np.eye(4, k=2)
        self.B = np.vstack([np.zeros((2, 2)), DT * np.eye(2)])

    def predict(self, x, u, t=None):
        return x @ self.A.T + u @ self.B.T, None

    def linearize(self, xs, us):
        T = len(xs)
        return Linearization(np.tile(self.A, (T, 1, 1)), np.tile(self.B, (T, 1, 1)),
                             np.zeros((T, 4)))


def test_gps_policy_planner_serves_and_reloads_the_artifact(tmp_path):
    from mbrl_ros.core.planners.gps_policy import GPSPolicySettings

    assert "gps_policy" in registry.available("planner")
    rng = np.random.default_rng(4)
    pol1 = _linear_neural_policy(rng, limit=5.0)
    publish_policy(pol1, tmp_path, "pi", _spec())
    s = GPSPolicySettings(horizon=20, artifact=str(tmp_path / "pi" / "latest"))
    planner = registry.create("planner", "gps_policy", s, 4, 2, -3.0, 3.0, DT)
    model = _Lin(_spec())
    cost = QuadraticCost.diagonal([1, 1, 0.1, 0.1], [0.01, 0.01])
    x0 = np.array([0.3, -0.2, 0.0, 0.1])
    p = planner.optimize(x0, 2.0, model, cost)
    assert p.t_end == pytest.approx(2.0 + 20 * DT)
    np.testing.assert_allclose(p.action(x0, 2.0), np.clip(pol1.mean(x0), -3, 3))
    assert planner.stats["version"] == 1 and planner.stats["reloaded"]
    xs, us = planner.nominal
    assert xs.shape == (21, 4) and us.shape == (20, 2)
    np.testing.assert_allclose(xs[1], model.predict(x0[None], us[:1])[0][0])
    assert planner.nominal_time == 2.0 and np.isfinite(planner.stats["cost"])
    # A new version behind 'latest' is picked up at the next plan.
    pol2 = _linear_neural_policy(rng, limit=5.0)
    publish_policy(pol2, tmp_path, "pi", _spec())
    p = planner.optimize(x0, 2.1, model, cost)
    assert planner.stats["version"] == 2 and planner.stats["reloaded"]
    np.testing.assert_allclose(p.action(x0, 2.1), np.clip(pol2.mean(x0), -3, 3))
    planner.optimize(x0, 2.2, model, cost)
    assert not planner.stats["reloaded"]
    # Refusals: other joints, other dimensions, no artifact.
    with pytest.raises(ValueError, match="disagree"):
        planner.optimize(x0, 2.3, _Lin(_spec(names=("c", "d"))), cost)
    with pytest.raises(ValueError, match="nx=4"):
        registry.create("planner", "gps_policy", s, 6, 3, -3.0, 3.0, DT).optimize(
            np.zeros(6), 0.0, None, None)
    with pytest.raises(ValueError, match="no artifact"):
        registry.create("planner", "gps_policy", None, 4, 2, -3.0, 3.0, DT).optimize(
            x0, 0.0, None, None)


def test_mpc_controller_switches_between_ilqr_and_the_gps_policy(tmp_path):
    """The controller's ROS-free core: gps_policy is one more planner id; switching to it
    and back to iLQR goes through the usual warm start from the nominal."""
    from mbrl_ros.core.control.mpc import CostSettings, MPCController
    from mbrl_ros.core.planners.gps_policy import GPSPolicySettings

    rng = np.random.default_rng(5)
    publish_policy(_linear_neural_policy(rng, limit=5.0), tmp_path, "pi", _spec())
    settings = {"gps_policy": GPSPolicySettings(artifact=str(tmp_path / "pi" / "latest"))}

    def factory(pid, nx, nu, lo, hi, dt):
        return registry.create("planner", pid, settings.get(pid), nx, nu, lo, hi, dt)

    mpc = MPCController(factory, ["ilqr", "gps_policy"], "ilqr", 20, np.full(2, 3.0),
                        np.tile([-3.0, 3.0], (2, 1)), CostSettings())
    mpc.set_model(_Lin(_spec()))
    mpc.set_target(np.zeros(2))
    x = np.array([0.3, -0.2, 0.0, 0.1])
    mpc.replan(x, 0.0)
    mpc.select("gps_policy")
    p = mpc.replan(x, DT)
    assert mpc.stats["planner"] == "gps_policy" and mpc.stats["switched"] == ("ilqr",
                                                                            "gps_policy")
    assert isinstance(p, NeuralPolicy) and p.t_end == pytest.approx(DT + 20 * DT)
    assert mpc.nominal_states()[0].shape == (21, 4)
    mpc.select("ilqr")
    p = mpc.replan(x, 2 * DT)
    assert mpc.stats["planner"] == "ilqr" and isinstance(p, LinearGaussianPolicy)
