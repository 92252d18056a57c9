"""The GPS sampler seam (core/algorithms/sampler.py) and the lg_controller planner that
executes a condition's linear-Gaussian controller with the sample's noise: the noise-array
execution the node path uses reproduces the in-process samples bit for bit."""
import numpy as np
import pytest

from mbrl_ros.core import registry
from mbrl_ros.core.algorithms.gps import MDGPS, GPSError, GPSSettings
from mbrl_ros.core.algorithms.sampler import (EnvSampler, SampleBatch, Sampler, consume_noise,
                                              first_invalid, noise_for_sample)
from mbrl_ros.core.models.base import ModelSpec
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.planners.lg_controller import (ExecutedLG, LGControllerSettings,
                                                  load_lg_controller, publish_lg_controller)

DT = 0.05


def _spec(nx=4, nu=2, dt=DT, names=("a", "b")):
    return ModelSpec(nx, nu, tuple(f"{n}/position" for n in names)
                     + tuple(f"{n}/velocity" for n in names), names, dt, "test")


def _controller(rng, T=6, nx=4, nu=2, umax=5.0):
    cov = np.stack([np.diag(rng.uniform(0.2, 1.0, nu)) for _ in range(T)])
    return LinearGaussianPolicy(K=rng.normal(size=(T, nu, nx)), k=rng.normal(size=(T, nu)),
                                xbar=rng.normal(size=(T, nx)), cov=cov, t0=0.0, dt=DT,
                                u_min=-umax * np.ones(nu), u_max=umax * np.ones(nu))


def test_noise_block_is_the_stepwise_draws_and_a_cut_sample_consumes_only_its_steps():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    eps, before = noise_for_sample(a, 7, 3)
    np.testing.assert_array_equal(eps, np.array([b.standard_normal(3) for _ in range(7)]))
    assert a.bit_generator.state == b.bit_generator.state
    c = np.random.default_rng(5)
    [c.standard_normal(3) for _ in range(4)]
    consume_noise(a, before, 4, 3)
    assert a.bit_generator.state == c.bit_generator.state
    assert a.standard_normal() == c.standard_normal()


def test_first_invalid_finds_the_first_bad_state():
    X = np.zeros((5, 2))
    X[3, 0] = 9.0
    X[4, 0] = np.nan
    check = lambda x: "big" if abs(x[0]) > 1 else None          # noqa: E731
    assert first_invalid(check, X) == (3, "big")
    assert first_invalid(None, X) is None
    assert first_invalid(lambda x: None, X) == (4, "non-finite state")


def test_executed_lg_is_linear_gaussian_sample_with_the_noise_rows():
    rng = np.random.default_rng(0)
    ctrl = _controller(rng)
    noise = rng.standard_normal((ctrl.horizon, ctrl.nu))
    ex = ExecutedLG(ctrl, noise, ctrl.u_min, ctrl.u_max).at(3.0)
    assert ex.t_end == pytest.approx(3.0 + ctrl.horizon * DT)
    for t in range(ctrl.horizon):
        x = rng.normal(size=4)
        r = np.random.default_rng(100 + t)
        # what LinearGaussianPolicy.sample does with the same draw, bit for bit
        want = ctrl.sample(x, t * DT, np.random.default_rng(100 + t))
        eps = r.standard_normal(ctrl.nu)
        got = ExecutedLG(ctrl, np.tile(eps, (ctrl.horizon, 1)), ctrl.u_min, ctrl.u_max
                         ).action(x, t * DT)
        np.testing.assert_array_equal(got, want)
        assert ex.step(3.0 + t * DT) == t
    mean = ExecutedLG(ctrl, None, -1.0, 1.0)
    x = rng.normal(size=4)
    np.testing.assert_array_equal(mean.action(x, 0.0), np.clip(ctrl.K[0] @ x + ctrl.k_gps[0],
                                                               -1, 1))
    with pytest.raises(ValueError, match="noise must have shape"):
        ExecutedLG(ctrl, noise[:2], ctrl.u_min, ctrl.u_max)


def test_lg_controller_artifact_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(1)
    ctrl = _controller(rng)
    noise = rng.standard_normal((ctrl.horizon, 2))
    info = publish_lg_controller(ctrl, tmp_path, "lg", _spec(), noise)
    got, n, meta = load_lg_controller(tmp_path / "lg" / "latest")
    assert meta["version"] == info.version == 1 and meta["kind"] == "lg_controller"
    for k in ("K", "k", "xbar", "cov", "k_gps", "u_min", "u_max"):
        np.testing.assert_array_equal(getattr(got, k), getattr(ctrl, k), err_msg=k)
    np.testing.assert_array_equal(n, noise)
    with pytest.raises(ValueError, match="noise must have shape"):
        publish_lg_controller(ctrl, tmp_path, "lg", _spec(), noise[:3])
    with pytest.raises(ValueError, match="spec is for"):
        publish_lg_controller(ctrl, tmp_path, "lg", _spec(nx=6, names=("a", "b", "c")))
    bad = ctrl.K.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(Exception, match="NaN|finite"):
        publish_lg_controller(LinearGaussianPolicy(K=bad, k=ctrl.k, xbar=ctrl.xbar, cov=ctrl.cov,
                                                   t0=0.0, dt=DT, u_min=ctrl.u_min,
                                                   u_max=ctrl.u_max), tmp_path, "lg", _spec())


def test_lg_controller_planner_runs_steps_from_its_first_plan(tmp_path):
    assert "lg_controller" in registry.available("planner")
    assert registry.PLUGINS["planner"]["lg_controller"].role == "trained"
    rng = np.random.default_rng(2)
    ctrl = _controller(rng, umax=50.0)
    noise = rng.standard_normal((ctrl.horizon, 2))
    publish_lg_controller(ctrl, tmp_path, "lg", _spec(), noise)
    s = LGControllerSettings(artifact=str(tmp_path / "lg" / "latest"))
    planner = registry.create("planner", "lg_controller", s, 4, 2, -3.0, 3.0, DT)
    assert planner.needs_model is False
    x = rng.normal(size=4)
    p = planner.optimize(x, 10.0, None, None)
    assert planner.stats["reloaded"] and planner.stats["noise"] == "artifact"
    assert planner.stats["step"] == 0 and p.t_end == pytest.approx(10.0 + 6 * DT)
    # replanned two steps later: still the same execution, now at step 2
    p2 = planner.optimize(x, 10.0 + 2 * DT, None, None)
    assert not planner.stats["reloaded"] and planner.stats["step"] == 2
    want = np.clip(ctrl.K[2] @ x + ctrl.k_gps[2] + np.linalg.cholesky(ctrl.cov[2]) @ noise[2],
                   -3.0, 3.0)          # the planner's (controller's) limits apply
    np.testing.assert_allclose(p2.action(x, 10.0 + 2 * DT), want, rtol=1e-12)
    # a new version (the next sample) restarts at step 0 at the next plan
    publish_lg_controller(ctrl, tmp_path, "lg", _spec(), noise)
    planner.optimize(x, 11.0, None, None)
    assert planner.stats["reloaded"] and planner.stats["version"] == 2
    assert planner.stats["step"] == 0 and planner.stats["t_start"] == 11.0
    # reset (a new episode) restarts it too
    planner.reset(planner.horizon)
    planner.optimize(x, 12.0, None, None)
    assert planner.stats["step"] == 0 and planner.stats["t_start"] == 12.0
    # no noise in the artifact: seeded draws, the same for the same seed
    publish_lg_controller(ctrl, tmp_path, "lg2", _spec())
    acts = []
    for seed in (4, 4, 5):
        pl = registry.create("planner", "lg_controller", LGControllerSettings(
            artifact=str(tmp_path / "lg2" / "latest"), seed=seed), 4, 2, -50.0, 50.0, DT)
        acts.append(pl.optimize(x, 0.0, None, None).action(x, 0.0))
        assert pl.stats["noise"] == "seeded"
    np.testing.assert_array_equal(acts[0], acts[1])
    assert not np.array_equal(acts[0], acts[2])
    pl = registry.create("planner", "lg_controller", LGControllerSettings(
        artifact=str(tmp_path / "lg2" / "latest"), noise=False), 4, 2, -50.0, 50.0, DT)
    np.testing.assert_array_equal(pl.optimize(x, 0.0, None, None).action(x, 0.0),
                                  np.clip(ctrl.K[0] @ x + ctrl.k_gps[0], -50, 50))


def test_lg_controller_planner_refuses_bad_artifacts(tmp_path):
    ctrl = _controller(np.random.default_rng(3))
    mk = lambda **kw: registry.create("planner", "lg_controller",          # noqa: E731
                                      LGControllerSettings(**kw), 4, 2, -3.0, 3.0, DT)
    with pytest.raises(ValueError, match="no artifact set"):
        mk().optimize(np.zeros(4), 0.0, None, None)
    with pytest.raises(ValueError, match="lg_controller"):
        mk(artifact=str(tmp_path / "nothing")).optimize(np.zeros(4), 0.0, None, None)
    publish_lg_controller(ctrl, tmp_path, "lg", _spec())
    with pytest.raises(ValueError, match="nx=4, nu=2"):
        registry.create("planner", "lg_controller", LGControllerSettings(
            artifact=str(tmp_path / "lg" / "latest")), 6, 3, -3.0, 3.0, DT
        ).optimize(np.zeros(6), 0.0, None, None)
    with pytest.raises(ValueError, match="steps every"):
        registry.create("planner", "lg_controller", LGControllerSettings(
            artifact=str(tmp_path / "lg" / "latest")), 4, 2, -3.0, 3.0, 0.01
        ).optimize(np.zeros(4), 0.0, None, None)
    pl = mk(artifact=str(tmp_path / "lg" / "latest"))

    class _M:
        spec = _spec(names=("c", "d"))
    with pytest.raises(ValueError, match="disagree"):
        pl.optimize(np.zeros(4), 0.0, _M(), None)


class NoiseArraySampler:
    """What the node sampler does, with an in-process environment in place of the nodes:
    per sample, the noise drawn as one block, the whole horizon executed by ExecutedLG,
    the first invalid state found afterwards and the unused noise given back."""

    def __init__(self, env, u_min, u_max, max_discarded=20):
        self.env, self.u_min, self.u_max, self.max_discarded = env, u_min, u_max, max_discarded
        self.calls = 0

    def sample(self, condition, controller, n, horizon, rng, noisy=True):
        self.calls += 1
        env = self.env
        X = np.empty((n, horizon + 1, env.nx))
        U = np.empty((n, horizon, env.nu))
        out = SampleBatch(X, U)
        i = 0
        while i < n:
            if noisy:
                eps, before = noise_for_sample(rng, horizon, env.nu)
                pol = ExecutedLG(controller, eps, self.u_min, self.u_max)
            else:
                pol = controller
            x = env.reset(condition)
            Xi, Ui = [x], []
            for t in range(horizon):
                u = np.clip(pol.action(x, t * env.dt), self.u_min, self.u_max)
                x = env.step(u)
                Xi.append(x)
                Ui.append(u)
            bad = first_invalid(getattr(env, "check", None) if noisy else None, np.array(Xi))
            if bad is not None:
                consume_noise(rng, before, bad[0], env.nu)
                out.discarded += 1
                out.reasons.append(f"condition {condition}, step {bad[0]}: {bad[1]}")
                out.lost += bad[0] * env.dt
                continue
            X[i], U[i] = Xi, Ui
            i += 1
        return out


def _arm2_gps(sampler_cls, seed=3):
    from mbrl_ros.core.algorithms.sim_env import reach_task
    task = reach_task("arm2", conditions=2, horizon=15, seed=seed)
    sampler = sampler_cls(task.env, task.env.u_min, task.env.u_max)
    gps = MDGPS(task.env, task.costs, GPSSettings(horizon=15, samples=3, seed=seed),
                initial_controllers=task.initial_controllers, tasks=task.targets,
                sampler=sampler, distance=task.distances())
    return gps, sampler, task


def test_mdgps_draws_through_the_sampler_and_noise_arrays_reproduce_it_bit_for_bit():
    import torch
    torch.set_num_threads(1)
    ref, s_ref, _ = _arm2_gps(EnvSampler)
    alt, s_alt, task = _arm2_gps(NoiseArraySampler)
    assert isinstance(s_alt, Sampler) and isinstance(s_ref, Sampler)
    a, b = ref.draw_samples(), alt.draw_samples()
    assert s_alt.calls == ref.M
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert ref.rng.bit_generator.state == alt.rng.bit_generator.state
    # one whole iteration (fit, C-step, S-step, policy evaluation) then the next samples
    ra, rb = ref.iteration(a), alt.iteration(b)
    assert ra.cost_lg == rb.cost_lg and ra.kl == rb.kl
    a2, b2 = ref.draw_samples(), alt.draw_samples()
    np.testing.assert_array_equal(a2[0], b2[0])


def test_a_discarded_sample_consumes_the_same_noise_on_both_samplers():
    ref, _, task = _arm2_gps(EnvSampler)
    alt, _, _ = _arm2_gps(NoiseArraySampler)
    for g in (ref, alt):          # a tight velocity bound: some samples are discarded
        g.env.max_velocity = 12.0
    a, b = ref.draw_samples(), alt.draw_samples()
    assert a[3][0] > 0 and a[3][0] == b[3][0]
    assert a[3][1] == b[3][1]
    assert a[3][2] == pytest.approx(b[3][2])
    np.testing.assert_array_equal(a[0], b[0])
    assert ref.rng.bit_generator.state == alt.rng.bit_generator.state


def test_too_many_invalid_samples_is_a_gps_error():
    ref, _, _ = _arm2_gps(EnvSampler)
    ref.env.max_velocity = 1e-6
    with pytest.raises(GPSError, match="invalid samples"):
        ref.draw_samples()
