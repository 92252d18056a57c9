"""ExcitationPolicy: limits, determinism, inertia-based gains, noise statistics, sim runs."""
import math

import numpy as np
import pytest

from mbrl_ros.core.policies.excitation import ExcitationPolicy, ExcitationSettings

ARM7_LIMITS = np.array(
    [[-2.8973, 2.8973], [-1.7628, 1.7628], [-2.8973, 2.8973], [-3.0718, -0.0698],
     [-2.8973, 2.8973], [-0.0175, 3.7525], [-2.8973, 2.8973]]
)
ARM7_EFFORT = np.array([87.0, 87, 87, 87, 12, 12, 12])
ARM7_INERTIA = np.array([0.5, 2.0, 0.3, 0.7, 0.05, 0.05, 0.01])   # kg·m², order of magnitude


def _arm7_policy(seed=0, settings=ExcitationSettings()):
    return ExcitationPolicy(settings, ARM7_LIMITS, ARM7_EFFORT, np.arange(7), 7, ARM7_INERTIA,
                            seed=seed)


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


def test_gains_follow_inertia_and_bandwidth():
    policy = _arm7_policy(settings=ExcitationSettings(bandwidth=1.0, damping_ratio=0.5))
    w = 2 * math.pi
    np.testing.assert_allclose(policy.kp, ARM7_INERTIA * w * w)
    np.testing.assert_allclose(policy.kd, ARM7_INERTIA * 2 * 0.5 * w)


def test_bandwidth_capped_for_discrete_stability():
    dt = 0.01
    p = ExcitationPolicy(ExcitationSettings(bandwidth=50.0, damping_ratio=1.0), [[-1, 1]],
                         [10.0], [0], 1, [0.02], dt=dt)
    assert 2 * 1.0 * (p.kd[0] / 0.02 / 2) * dt == pytest.approx(0.5)


def test_targets_respect_margin_and_change_every_period():
    settings = ExcitationSettings(target_period=0.5, target_margin=0.2)
    limits = np.array([[-1.0, 3.0], [-np.inf, np.inf]])
    policy = ExcitationPolicy(settings, limits, [5.0, 5.0], [1, 0], 2, [0.1, 0.1], seed=2)
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
    settings = ExcitationSettings(bandwidth=0.5, damping_ratio=0.5, noise_std=0.0)
    limits = np.array([[-1.0, 1.0], [-np.inf, np.inf]])
    policy = ExcitationPolicy(settings, limits, [100.0, 100.0], [0, 1], 2, [1.0, 1.0], seed=0)
    q = np.array([0.2, 0.0])
    policy.action(np.concatenate([q, [0.0, 0.0]]), 0.0)
    target = policy.target
    # Same target, joint 2 one full turn further: the wrapped error is unchanged.
    u = policy.action(np.array([0.2, 2 * math.pi, 0.5, 0.0]), 0.01)
    expected_err = target - q
    expected_err[1] = (expected_err[1] + math.pi) % (2 * math.pi) - math.pi
    kp, kd = policy.kp, policy.kd
    np.testing.assert_allclose(u, kp * expected_err - kd * np.array([0.5, 0.0]), atol=1e-12)


def test_noise_is_ornstein_uhlenbeck_with_requested_std_and_correlation():
    settings = ExcitationSettings(bandwidth=0.0, noise_std=0.3, noise_corr_time=0.1)
    policy = ExcitationPolicy(settings, [[-1.0, 1.0]], [1000.0], [0], 1, [1.0], seed=1, dt=0.01)
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
        ExcitationSettings(bandwidth=-1.0)
    with pytest.raises(ValueError, match="effort_limits"):
        ExcitationPolicy(ExcitationSettings(), [[-1, 1]], [np.inf], [0], 1, [1.0])
    with pytest.raises(ValueError, match="position_limits"):
        ExcitationPolicy(ExcitationSettings(), [[-1, 1], [0, 1]], [1.0], [0], 1, [1.0])
    with pytest.raises(ValueError, match="command_index"):
        ExcitationPolicy(ExcitationSettings(), [[-1, 1]], [1.0], [3], 2, [1.0])
    with pytest.raises(ValueError, match="inertia"):
        ExcitationPolicy(ExcitationSettings(), [[-1, 1]], [1.0], [0], 1, [0.0])
    policy = ExcitationPolicy(ExcitationSettings(), [[-1, 1]], [1.0], [0], 1, [1.0])
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
        sim.effective_inertia(),
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
    # With inertia-based gains no joint, in particular no 12 N*m wrist joint, spends much
    # time saturated; joint2 carries the arm against gravity (no gravity compensation) and
    # saturates most (~11 %).
    saturated = np.mean(np.abs(u) >= sim.effort_limits - 1e-9, axis=0)
    assert (saturated < 0.15).all(), f"saturation fraction {saturated}"


def test_cartpole_excitation_keeps_cart_on_the_rail():
    sim, q, u = _excite("cartpole", 10.0)
    assert (np.abs(q[:, 0]) <= 1.8 + 0.01).all()
    assert q[:, 0].std() > 0.3


@pytest.mark.parametrize("model", ["arm2", "arm7"])
def test_excitation_does_not_chatter(model):
    """A PD loop too stiff for a light joint at the control rate oscillates at the Nyquist
    frequency: the velocity flips sign every step. Good data has smooth motion."""
    sim, q, u = _excite(model, 5.0)
    dq = np.diff(q, axis=0)
    flips = np.mean(np.sign(dq[1:]) != np.sign(dq[:-1]), axis=0)
    assert (flips < 0.1).all(), f"sign flips of the joint velocity per step: {flips}"
