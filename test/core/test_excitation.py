"""ExcitationPolicy: limits, determinism, gain scaling, noise statistics and a sim run."""
import math

import numpy as np
import pytest

from mbrl_ros.core.policies.excitation import ExcitationPolicy, ExcitationSettings

ARM7_LIMITS = np.array(
    [[-2.8973, 2.8973], [-1.7628, 1.7628], [-2.8973, 2.8973], [-3.0718, -0.0698],
     [-2.8973, 2.8973], [-0.0175, 3.7525], [-2.8973, 2.8973]]
)
ARM7_EFFORT = np.array([87.0, 87, 87, 87, 12, 12, 12])


def _arm7_policy(seed=0, settings=ExcitationSettings()):
    return ExcitationPolicy(settings, ARM7_LIMITS, ARM7_EFFORT, np.arange(7), 7, seed=seed)


def _random_states(n, count, scale, seed=5):
    return np.random.default_rng(seed).normal(0.0, scale, size=(count, 2 * n))


def _run(policy, states, dt=0.01):
    return np.array([policy.action(x, k * dt) for k, x in enumerate(states)])


def test_actions_within_effort_limits_even_for_wild_states():
    policy = _arm7_policy()
    actions = _run(policy, _random_states(7, 500, scale=50.0))
    assert actions.shape == (500, 7)
    assert (np.abs(actions) <= ARM7_EFFORT).all()
    # Wild states saturate: the clip is what keeps the actions in range.
    assert (np.abs(actions) == ARM7_EFFORT).any()


def test_deterministic_for_a_seed_and_different_across_seeds():
    states = _random_states(7, 300, scale=1.0)
    a = _run(_arm7_policy(seed=4), states)
    b = _run(_arm7_policy(seed=4), states)
    c = _run(_arm7_policy(seed=5), states)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_reset_continues_the_stream_deterministically():
    states = _random_states(7, 100, scale=1.0)
    runs = []
    for _ in range(2):
        policy = _arm7_policy(seed=9)
        first = _run(policy, states)
        policy.reset()
        second = _run(policy, states)
        assert not np.array_equal(first, second)
        runs.append(np.concatenate([first, second]))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_gains_scale_with_effort_limits():
    policy = _arm7_policy(settings=ExcitationSettings(kp=20.0, kd=2.0))
    np.testing.assert_allclose(policy.kp, 20.0 * ARM7_EFFORT / 87.0)
    np.testing.assert_allclose(policy.kd, 2.0 * ARM7_EFFORT / 87.0)


def test_targets_respect_margin_and_change_every_period():
    settings = ExcitationSettings(target_period=0.5, target_margin=0.2)
    limits = np.array([[-1.0, 3.0], [-np.inf, np.inf]])
    policy = ExcitationPolicy(settings, limits, [5.0, 5.0], [1, 0], 2, seed=2)
    x = np.zeros(4)
    targets = []
    for k in range(500):
        policy.action(x, k * 0.01)
        targets.append(policy.target)
    targets = np.array(targets)
    assert (targets[:, 0] >= -1.0 + 0.8 - 1e-12).all()
    assert (targets[:, 0] <= 3.0 - 0.8 + 1e-12).all()
    assert (np.abs(targets[:, 1]) <= math.pi).all()
    changes = np.flatnonzero(np.any(np.diff(targets, axis=0) != 0, axis=1)) + 1
    np.testing.assert_array_equal(changes, np.arange(50, 500, 50))


def test_pd_drives_toward_target_with_wrapped_error_for_continuous_joints():
    settings = ExcitationSettings(kp=10.0, kd=1.0, noise_std=0.0)
    limits = np.array([[-1.0, 1.0], [-np.inf, np.inf]])
    policy = ExcitationPolicy(settings, limits, [100.0, 100.0], [0, 1], 2, seed=0)
    q = np.array([0.2, 0.0])
    policy.action(np.concatenate([q, [0.0, 0.0]]), 0.0)
    target = policy.target
    # Same target, joint 2 one full turn further: the wrapped error is unchanged.
    u = policy.action(np.array([0.2, 2 * math.pi, 0.5, 0.0]), 0.01)
    expected_err = target - q
    expected_err[1] = (expected_err[1] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(u, 10.0 * expected_err - 1.0 * np.array([0.5, 0.0]), atol=1e-12)


def test_noise_is_ornstein_uhlenbeck_with_requested_std_and_correlation():
    settings = ExcitationSettings(kp=0.0, kd=0.0, noise_std=0.3, noise_corr_time=0.1)
    policy = ExcitationPolicy(settings, [[-1.0, 1.0]], [1000.0], [0], 1, seed=1, dt=0.01)
    u = _run(policy, np.zeros((20000, 2)))[:, 0]
    assert np.std(u) == pytest.approx(300.0, rel=0.1)
    lag = 10  # one correlation time
    corr = np.corrcoef(u[:-lag], u[lag:])[0, 1]
    assert corr == pytest.approx(math.exp(-1.0), abs=0.08)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        ExcitationSettings(noise_corr_time=0.0)
    with pytest.raises(ValueError):
        ExcitationSettings(target_margin=0.5)
    with pytest.raises(ValueError):
        ExcitationSettings(kp=-1.0)
    with pytest.raises(ValueError, match="effort_limits"):
        ExcitationPolicy(ExcitationSettings(), [[-1, 1]], [np.inf], [0], 1)
    with pytest.raises(ValueError, match="position_limits"):
        ExcitationPolicy(ExcitationSettings(), [[-1, 1], [0, 1]], [1.0], [0], 1)
    with pytest.raises(ValueError, match="command_index"):
        ExcitationPolicy(ExcitationSettings(), [[-1, 1]], [1.0], [3], 2)
    policy = ExcitationPolicy(ExcitationSettings(), [[-1, 1]], [1.0], [0], 1)
    with pytest.raises(ValueError, match="shape"):
        policy.action(np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        policy.action(np.array([np.nan, 0.0]), 0.0)


# ---------------------------------------------------------------- closed loop in the simulator


def _excite(model: str, seconds: float, seed: int = 0):
    from mbrl_ros.sim.env import MujocoSim

    sim = MujocoSim(model, seed=seed)
    policy = ExcitationPolicy(
        ExcitationSettings(),
        sim.position_limits[sim.command_index],
        sim.effort_limits,
        sim.command_index,
        sim.n_joints,
        seed=seed,
        dt=sim.control_period,
    )
    positions, actions = [], []
    for _ in range(round(seconds / sim.control_period)):
        u = policy.action(sim.state(), sim.time)
        actions.append(u)
        sim.step(u)
        positions.append(sim.positions())
    return sim, np.array(positions), np.array(actions)


def test_arm7_excitation_stays_in_limits_and_spreads():
    sim, q, u = _excite("arm7", 10.0)
    lim = sim.position_limits
    assert (q >= lim[:, 0] - 0.05).all() and (q <= lim[:, 1] + 0.05).all()
    assert (np.abs(u) <= sim.effort_limits).all()
    spread = q.std(axis=0)
    assert (spread > 0.3).all(), f"joint position std {spread} too small"
    # With effort-scaled gains no joint, in particular no 12 N*m wrist joint, spends much
    # time saturated (typically <= 2 % of the steps).
    saturated = np.mean(np.abs(u) >= sim.effort_limits - 1e-9, axis=0)
    assert (saturated < 0.1).all(), f"saturation fraction {saturated}"


def test_cartpole_excitation_keeps_cart_on_the_rail():
    sim, q, u = _excite("cartpole", 10.0)
    assert (np.abs(q[:, 0]) <= 1.8 + 0.01).all()
    assert q[:, 0].std() > 0.3
