"""Joint-state plausibility (ROS-free): bounds, reachability, teleports, the latch."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbrl_ros.core.control.health import RecentEvents
from mbrl_ros.core.control.plausibility import (PlausibilitySettings, StatePlausibility,
                                                default_limits, robot_limits)
from mbrl_ros.core.settings import SettingsError

LIMITS = np.array([[-2.9671, 2.9671], [-2.7925, 2.7925]])     # arm2
DT = 0.01


def make(continuous=(False, False), limits=LIMITS, **kw):
    s = PlausibilitySettings(**kw)
    vmax, amax = default_limits(np.zeros(len(limits), bool), np.full(len(limits), 3.0),
                                np.full(len(limits), 0.01))
    return StatePlausibility(s, limits, np.array(continuous), vmax, amax,
                             names=[f"j{i}" for i in range(len(limits))])


def feed(check, states, t0=0.0, now0=0.0):
    """Check (q, qd) pairs stamped DT apart (arrival DT apart too); returns the verdicts."""
    return [check.check(q, qd, t0 + k * DT, now0 + k * DT) for k, (q, qd) in enumerate(states)]


def moving(n, q0=(0.5, -0.5), v=(1.0, -0.5), t0=0.0):
    """A smooth trajectory: constant velocity v from q0."""
    q0, v = np.array(q0), np.array(v)
    return [(q0 + v * (t0 + k * DT), v) for k in range(n)]


def test_default_limits_from_effort_and_inertia():
    vmax, amax = default_limits(np.array([True, False]), np.array([10.0]), np.array([2.0]))
    np.testing.assert_allclose(vmax, [20.0, 100.0])      # slide m/s, hinge rad/s
    np.testing.assert_allclose(amax, [50.0, 50.0])       # 10 x 10 N / 2 kg
    _, amax = default_limits(np.array([False]), np.array([np.inf]), np.array([1.0]))
    assert np.isinf(amax).all()                          # no finite limit: no velocity jump check


def test_robot_limits_of_arm2_and_cartpole():
    from mbrl_ros.core.robot import RobotDescription
    arm = RobotDescription.load("arm2")
    vmax, amax = robot_limits(arm)
    np.testing.assert_allclose(vmax, [100.0, 100.0])
    # 3 N·m over the elbow's effective inertia (about 0.01 kg·m²) x 10
    assert 2000.0 < amax[0] < 10000.0 and amax[0] == amax[1]
    # the inertia sampling is the description's (one implementation)
    np.testing.assert_array_equal(
        amax, default_limits(arm.linear, arm.effort_limits, arm.min_effective_inertia())[1])
    vmax, _ = robot_limits(RobotDescription.load("cartpole"))
    np.testing.assert_allclose(vmax, [20.0, 100.0])       # slider m/s, hinge rad/s


@pytest.mark.parametrize("robot,scale", [("arm2", 1.0), ("cartpole", 1.0), ("arm7", 0.5)])
def test_simulated_motion_is_never_rejected(robot, scale):
    """Random bang-bang efforts drive the shipped robots into their joint stops (impacts
    reverse velocities within a step) and to high speeds: every state stays plausible."""
    from mbrl_ros.core.robot import RobotDescription
    from mbrl_ros.sim.env import MujocoSim
    sim = MujocoSim(robot, control_period=DT)
    check = StatePlausibility.for_robot(PlausibilitySettings(), RobotDescription.load(robot))
    rng = np.random.default_rng(1)
    n, jumps = sim.n_joints, 0.0
    prev = sim.state()
    for k in range(6000):
        if k % 20 == 0:
            u = rng.choice([-1.0, 1.0], size=sim.n_commands) * sim.effort_limits * scale
        sim.step(u)
        x = sim.state()
        jumps = max(jumps, np.abs(x[n:] - prev[n:]).max() / DT)
        prev = x
        v = check.check(x[:n], x[n:], (k + 1) * DT, (k + 1) * DT)
        assert not v.implausible, (k, v.reason)
    assert jumps > check.a_max[0] or robot == "arm7"  # impacts beyond the smooth bound


def test_smooth_trajectory_is_accepted_after_confirmation():
    check = make()
    v = feed(check, moving(50))
    assert [x.accepted for x in v[:3]] == [False, False, True]   # state_confirm = 3
    assert not any(x.implausible for x in v[:3])                 # confirming, not implausible
    assert "confirming" in v[0].reason
    assert all(x.accepted and not x.implausible for x in v[2:])
    assert check.counters == {"accepted": 48, "implausible": 0, "reanchors": 0}


@pytest.mark.parametrize("q,qd,what", [
    ([1e6, 0.0], [0.0, 0.0], "j0 position 1e+06 outside"),
    ([0.5, -1e308], [0.0, 0.0], "j1 position -1e+308 outside"),
    ([3.2, 0.0], [0.0, 0.0], "j0 position 3.2 outside [-3.167, 3.167]"),
    ([0.5, -0.5], [1e6, 0.0], "j0 speed 1e+06 above 100"),
])
def test_out_of_range_states_are_implausible(q, qd, what):
    check = make()
    feed(check, moving(5))
    v = check.check(np.array(q), np.array(qd), 5 * DT, 5 * DT)
    assert not v.accepted and v.implausible and what in v.reason and not v.latch


def test_range_margin_and_continuous_joints():
    check = make(continuous=(True, False), limits=np.array([[-np.inf, np.inf], [-1.0, 1.0]]),
                 state_position_margin=0.1)
    feed(check, [(np.array([100.0, 1.05]), np.zeros(2))] * 3)    # within 1 + 0.1; any angle
    assert check.anchored
    # A continuous joint wrapping from pi to -pi is no jump.
    check = make(continuous=(True, False), limits=np.array([[-np.inf, np.inf], [-1.0, 1.0]]))
    feed(check, [(np.array([np.pi - 0.001, 0.0]), np.array([1.0, 0.0]))] * 1)
    check.reset()
    vs = feed(check, [(np.array([np.pi - 0.005, 0.0]), np.array([1.0, 0.0])),
                      (np.array([np.pi + 0.005 - 2 * np.pi, 0.0]), np.array([1.0, 0.0])),
                      (np.array([-np.pi + 0.015, 0.0]), np.array([1.0, 0.0]))])
    assert vs[-1].accepted and not any(v.implausible for v in vs)


def test_nonfinite_state_latches_at_once():
    check = make(implausible_latch=0)                    # even with the count latch off
    feed(check, moving(5))
    v = check.check(np.array([np.nan, 0.0]), np.zeros(2), 0.05, 0.05)
    assert not v.accepted and v.implausible and v.latch and "non-finite" in v.reason
    assert check.check(np.zeros(2), np.zeros(2), np.inf, 0.06).latch     # stamp too


def test_jumps_beyond_reach_are_implausible():
    check = make(state_max_acceleration=(100.0,))
    feed(check, moving(5))
    q, qd = moving(6)[5]
    # 0.3 rad in 10 ms at ~1 rad/s: unreachable (bound (1 + 1) x 0.01 + 0.01).
    v = check.check(q + np.array([0.3, 0.0]), qd, 5 * DT, 5 * DT)
    assert v.implausible and "j0 moved" in v.reason
    # Velocity jump of 5 rad/s in 10 ms with a_max 100: bound 1 + 0.5.
    v = check.check(q, qd + np.array([0.0, 5.0]), 5 * DT, 5 * DT)
    assert v.implausible and "j1 velocity jumped" in v.reason
    # A stamp going back, and a repeated stamp with another state.
    v = check.check(q, qd, 3 * DT, 5 * DT)
    assert v.implausible and "before the previous accepted" in v.reason
    v = check.check(q + 0.05, qd, 4 * DT, 5 * DT)
    assert v.implausible and "moved" in v.reason
    # The true next state still passes: the anchor is the last *accepted* state.
    assert check.check(q, qd, 5 * DT, 5 * DT).accepted
    # A duplicate (same stamp, same state) is harmless.
    assert check.check(q, qd, 5 * DT, 5 * DT).accepted


def test_without_an_acceleration_bound_speed_still_bounds_the_jump():
    check = make(state_max_acceleration=(np.inf,), state_max_velocity=(2.0,))
    feed(check, moving(5))
    q, qd = moving(6)[5]
    assert check.check(q + np.array([0.015, 0.0]), qd, 5 * DT, 5 * DT).accepted
    assert check.check(q + np.array([0.015, 0.0]), qd, 5 * DT, 5 * DT).accepted  # repeated
    v = check.check(q + np.array([0.5, 0.0]), qd, 5 * DT, 5 * DT)    # same stamp, moved
    assert v.implausible and "in 0 s" in v.reason
    v = check.check(q + np.array([0.1, 0.0]), qd, 6 * DT, 6 * DT)    # 2 rad/s x 0.01 s
    assert v.implausible and "at most 0.03" in v.reason


def test_teleport_reanchors_without_latching():
    check = make()
    feed(check, moving(10))
    # The simulator resets to another state: 2 rejections, then the run of 3 re-anchors.
    vs = feed(check, [(np.array([-1.0, 2.0]), np.zeros(2))] * 6, t0=0.1, now0=0.1)
    assert [v.accepted for v in vs] == [False, False, True, True, True, True]
    assert vs[0].implausible and vs[1].implausible and not any(v.latch for v in vs)
    assert "re-anchored" in vs[2].reason
    assert check.counters["reanchors"] == 1
    # Two more resets within the latch window: the re-anchored rejections were taken back.
    for k in range(2):
        vs = feed(check, [(np.array([1.0 - k, 0.0]), np.zeros(2))] * 3, t0=0.2 + k * 0.05,
                  now0=0.2 + k * 0.05)
        assert vs[-1].accepted and not any(v.latch for v in vs)
    # A driver restart (stamps from 0 again) re-anchors the same way.
    vs = feed(check, [(np.array([0.0, 0.0]), np.zeros(2))] * 3, t0=0.0, now0=0.4)
    assert vs[-1].accepted and not any(v.latch for v in vs)


def test_gap_in_stamps_is_confirmed_not_counted():
    check = make(state_anchor_timeout=0.5)
    feed(check, moving(5))
    vs = feed(check, [(np.array([2.0, 2.0]), np.zeros(2))] * 3, t0=10.0, now0=10.0)
    assert [v.accepted for v in vs] == [False, False, True]
    assert not any(v.implausible for v in vs)


def test_sustained_stream_latches_after_consecutive_rejections():
    check = make(implausible_latch=5)
    feed(check, moving(5))
    vs = [check.check(np.array([1e6, 0.0]), np.zeros(2), 0.05 + k * 0.025, 1.0 + k * 1.0)
          for k in range(5)]                          # 1 s apart: only "in a row" counts
    assert [v.latch for v in vs] == [False] * 4 + [True]
    assert "5 implausible joint states in a row" in vs[-1].reason


def test_interleaved_hostile_publisher_latches_within_the_window():
    check = make(implausible_latch=5, implausible_window=1.0)
    real = moving(100)
    latched_at = None
    for k, (q, qd) in enumerate(real):
        now = k * DT
        assert check.check(q, qd, now, now).accepted or k < 2
        if k >= 10 and k % 4 == 0:                     # a hostile state at 25 Hz
            v = check.check(np.array([1.0, 1.0]), np.zeros(2), now, now + 0.001)
            assert not v.accepted and v.implausible      # in range but unreachable
            if v.latch and latched_at is None:
                latched_at = k
    assert latched_at == 28                           # the 5th hostile state (12, 16, ... 28)
    # Without the window, interleaving never latches (nor is any hostile state accepted).
    check = make(implausible_latch=5, implausible_window=0.0)
    for k, (q, qd) in enumerate(real):
        check.check(q, qd, k * DT, k * DT)
        if k >= 10 and k % 4 == 0:
            v = check.check(np.array([1.0, 1.0]), np.zeros(2), k * DT, k * DT)
            assert not v.accepted and not v.latch


def test_reset_forgets_the_anchor_and_the_counts():
    check = make()
    feed(check, moving(5))
    for k in range(4):
        check.check(np.array([1e6, 0.0]), np.zeros(2), 0.05, 0.05)
    check.reset()
    assert not check.anchored
    v = check.check(np.array([1e6, 0.0]), np.zeros(2), 0.06, 0.06)
    assert not v.latch                                  # 1 after the reset, not 5


def test_settings_validation():
    with pytest.raises(SettingsError, match="implausible_latch"):
        PlausibilitySettings(implausible_latch=2, state_confirm=3)
    PlausibilitySettings(implausible_latch=0, state_confirm=3)          # 0: never latch
    with pytest.raises(SettingsError, match="state_max_velocity needs 1 or 2"):
        make(state_max_velocity=(1.0, 2.0, 3.0))
    check = make(state_max_velocity=(1.0,))
    feed(check, moving(5, v=(0.5, 0.5)))
    assert check.check(np.array([0.55, -0.45]), np.array([1.5, 0.5]), 0.05, 0.05).implausible


def test_recent_events_window():
    w = RecentEvents(1.0)
    w.add(0.0)
    w.add(0.5, 2)
    assert w.count(0.9) == 3 and w.count(1.2) == 2 and w.count(1.6) == 0
    w.add(2.0, 3)
    w.remove_last(2)
    assert w.count(2.0) == 1
    off = RecentEvents(0.0)
    off.add(0.0, 5)
    assert off.count(0.0) == 0


# ------------------------------------------------------------------ property-based
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
anything = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(anything, min_size=0, max_size=3),
                          st.lists(anything, min_size=0, max_size=3),
                          anything, finite), max_size=30))
def test_check_never_raises_and_accepts_only_bounded_states(stream):
    check = make()
    for q, qd, t, now in stream:
        v = check.check(q, qd, t, now)
        if v.accepted:
            q, qd = np.asarray(q, float), np.asarray(qd, float)
            assert q.shape == (2,) and np.isfinite(q).all() and np.isfinite(qd).all()
            assert (np.abs(q) <= LIMITS[:, 1] + 0.2).all() and (np.abs(qd) <= 100.0).all()
        assert isinstance(v.reason, str)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e308, 1e308), st.floats(-1e308, 1e308)),
                min_size=1, max_size=20),
       st.integers(0, 80))
def test_hostile_values_never_pass_once_anchored(values, start):
    """After a real trajectory, hostile states far from it, interleaved with the real
    ones (a second publisher), never pass -- and the real ones keep passing."""
    check = make(implausible_latch=0)
    real = moving(start + 3 + len(values), v=(0.2, -0.1))
    for k, (q, qd) in enumerate(real[:start + 3]):
        check.check(q, qd, k * DT, k * DT)
    for i, (a, b) in enumerate(values):
        k = start + 3 + i
        hostile = np.array([a, b])
        # Within reach of the truth ((0.2 + a_max dt) dt + tol = 0.086 rad in 5 ms with
        # a_max = 3000 rad/s²) a state cannot be told from a real one; beyond, never passes.
        if np.abs(hostile - real[k - 1][0]).max() > 0.1:
            v = check.check(hostile, np.zeros(2), (k - 0.5) * DT, (k - 0.5) * DT)
            assert not v.accepted and v.implausible
        assert check.check(*real[k], k * DT, k * DT).accepted
