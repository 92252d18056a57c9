"""The controller's control-step logic (ROS-free): holds, latch, hand-over, health."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbrl_ros.core.control import actuator as A
from mbrl_ros.core.control.actuator import Actuator
from mbrl_ros.core.control.health import ERROR, OK, WARN, controller_health
from mbrl_ros.core.control.plausibility import StatePlausibility, default_limits
from mbrl_ros.core.control.safety import SafetyFilter, SafetySettings

LIMITS = np.array([3.0, 3.0])
POS = np.array([[-2.9671, 2.9671], [-2.7925, 2.7925]])
DT = 0.01


def make(**kw):
    s = SafetySettings(**{"max_effort_rate": 1e6, **kw})
    vmax, amax = default_limits(np.zeros(2, bool), LIMITS, np.full(2, 0.01))
    return Actuator(SafetyFilter(s, LIMITS, POS, np.array([0, 1]), 2),
                    StatePlausibility(s, POS, np.zeros(2, bool), vmax, amax))


class Constant:
    """A policy commanding u on [t0, t_end]."""

    def __init__(self, u, t0=0.0, t_end=np.inf):
        self.u, self.t0, self.t_end = np.asarray(u, float), t0, t_end
        self.calls = []

    def action(self, x, t):
        self.calls.append(np.array(x))
        return self.u


def settle(act, n=3, q=(0.5, -0.5), qd=(0.0, 0.0), t0=0.0):
    for k in range(n):
        act.receive(np.array(q), np.array(qd), t0 + k * DT, t0 + k * DT)
    return t0 + (n - 1) * DT


def test_holds_until_a_state_and_a_plan():
    act = make()
    assert act.step(0.0, DT).hold == A.NO_STATE
    act.receive(np.array([0.5, -0.5]), np.array([1.0, 0.0]), 0.0, 0.0)
    s = act.step(0.0, DT)
    assert s.hold == A.CONFIRMING                     # the first state is not confirmed yet
    assert s.command.tolist() == [0.0, 0.0]           # no accepted state: zero effort
    t = settle(act, 3, qd=(1.0, 0.0))
    s = act.step(t, DT)
    assert s.hold == A.NO_PLAN
    np.testing.assert_allclose(s.command, [-2.0, 0.0])   # damping hold on the velocity
    act.offer(Constant([1.0, -1.0]), ahead=False)
    s = act.step(t, DT)
    assert s.hold is None and s.command.tolist() == [1.0, -1.0]
    assert act.step(t + 0.5, DT).hold == A.STALE        # state_timeout 0.1 s
    assert act.step(t + 0.5, DT).command.tolist() == [0.0, 0.0]


def test_plan_expiry_and_deferred_hand_over():
    act = make()
    t = settle(act)
    first = Constant([1.0, 0.0], t_end=t + 0.05)
    assert not act.offer(first, ahead=True)             # nothing to bridge: used at once
    assert act.step(t, DT).command.tolist() == [1.0, 0.0]
    second = Constant([2.0, 0.0], t0=t + 2 * DT)
    assert act.offer(second, ahead=True)                 # warm: waits for its t0
    assert act.step(t, DT).command.tolist() == [1.0, 0.0]
    for k in range(1, 3):
        act.receive(np.array([0.5, -0.5]), np.zeros(2), t + k * DT, t + k * DT)
    assert act.step(t + 2 * DT, DT).command.tolist() == [2.0, 0.0]
    act.offer(Constant([1.0, 0.0], t_end=t), ahead=False)
    assert act.step(t + 2 * DT, DT).hold == A.PLAN_EXPIRED


def test_implausible_state_holds_never_reaches_the_policy_and_latches():
    act = make(hold_mode="zero")
    t = settle(act)
    policy = Constant([1.0, 1.0])
    act.offer(policy, ahead=False)
    assert act.step(t, DT).hold is None
    calls = len(policy.calls)
    for k in range(1, 5):
        v = act.receive(np.array([1e6, 0.0]), np.array([1e6, 0.0]), t + k * DT, t + k * DT)
        assert v.implausible and not v.latch
        s = act.step(t + k * DT, DT)
        assert s.hold == A.IMPLAUSIBLE and s.command.tolist() == [0.0, 0.0]
    assert len(policy.calls) == calls
    assert act.latest[0][0] == 0.5                       # the accepted state is kept
    # A real state in between: controlling again (and the count keeps the window).
    act.receive(np.array([0.5, -0.5]), np.zeros(2), t + 5 * DT, t + 5 * DT)
    assert act.step(t + 5 * DT, DT).hold is None
    v = act.receive(np.array([1e308, 0.0]), np.zeros(2), t + 6 * DT, t + 6 * DT)
    assert v.latch and act.fault.startswith("implausible joint state")
    assert act.counters["bad_states"] == 5
    act.receive(np.array([0.5, -0.5]), np.zeros(2), t + 7 * DT, t + 7 * DT)
    assert act.step(t + 7 * DT, DT).hold == A.FAULT       # latched: real states do not clear
    assert not act.has_policy
    assert act.clear_fault().startswith("implausible")
    assert act.fault is None and act.step(t + 7 * DT, DT).hold == A.CONFIRMING


def test_nonfinite_state_and_command_latch():
    act = make()
    t = settle(act)
    act.unreadable("NaN in position", nonfinite=True)
    assert act.fault.startswith("non-finite joint state") and act.step(t, DT).hold == A.FAULT
    act.clear_fault()
    t = settle(act, t0=t + DT)
    act.offer(Constant([np.nan, 0.0]), ahead=False)
    s = act.step(t, DT)
    assert s.latched and s.hold == A.FAULT and np.isfinite(s.command).all()
    assert act.fault == "policy produced a non-finite command"
    act.clear_fault()
    t = settle(act, t0=t + DT)

    class Broken:
        t0, t_end = 0.0, np.inf

        def action(self, x, t):
            raise RuntimeError("model exploded")
    act.offer(Broken(), ahead=False)
    s = act.step(t, DT)
    assert s.latched and "model exploded" in act.fault
    # Missing joints (another driver's message) neither latch nor hold.
    act.clear_fault()
    t = settle(act, t0=t + DT)
    act.offer(Constant([0.5, 0.5]), ahead=False)
    act.unreadable("joint state lacks joint(s) shoulder")
    assert act.fault is None and act.step(t, DT).hold is None


def test_reset_starts_over():
    act = make()
    t = settle(act)
    act.offer(Constant([1.0, 1.0]), ahead=False)
    act.step(t, DT)
    act.reset()
    assert act.latest[0] is None and not act.has_policy and act.safety.last.tolist() == [0, 0]
    # The new episode starts elsewhere: confirmed, never counted implausible.
    settle(act, q=(-1.0, 2.0), t0=t + DT)
    assert act.counters["bad_states"] == 0 and act.state_ok


def test_holds_are_counted_by_reason():
    act = make()
    act.step(0.0, DT)
    t = settle(act)
    act.step(t, DT)
    assert act.holds[A.NO_STATE] == 1 and act.holds[A.NO_PLAN] == 1
    assert act.counters["holds"] == 2


# ------------------------------------------------------------------ property-based
anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
event = st.one_of(
    st.tuples(st.just("state"), st.lists(anything, min_size=2, max_size=2),
              st.lists(anything, min_size=2, max_size=2), anything),
    st.tuples(st.just("plan"), st.lists(anything, min_size=2, max_size=2), anything,
              st.booleans()),
    st.tuples(st.just("step"), st.floats(0.0, 0.05)),
    st.tuples(st.just("clear"),), st.tuples(st.just("reset"),))


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=40), st.sampled_from(["damping", "zero"]))
def test_commands_are_always_finite_and_within_limits(events, hold_mode):
    act = make(hold_mode=hold_mode, effort_scale=0.5)
    now = 0.0
    for e in events:
        now += DT
        if e[0] == "state":
            act.receive(e[1], e[2], e[3], now)
        elif e[0] == "plan":
            act.offer(Constant(e[1], t0=0.0, t_end=e[2]), ahead=e[3])
        elif e[0] == "step":
            s = act.step(now, e[1])
            assert s.command.shape == (2,) and np.isfinite(s.command).all()
            assert (np.abs(s.command) <= 0.5 * LIMITS + 1e-12).all()
        elif e[0] == "clear":
            act.clear_fault()
        else:
            act.reset()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e308, 1e308), st.floats(-1e308, 1e308)),
                min_size=1, max_size=10))
def test_policy_only_sees_accepted_states(hostile):
    act = make(implausible_latch=0)
    t = settle(act)
    policy = Constant([0.1, 0.1])
    act.offer(policy, ahead=False)
    for i, (a, b) in enumerate(hostile):
        act.receive(np.array([a, b]), np.zeros(2), t + 0.001, t + 0.001)
        act.step(t + 0.001, DT)
        t += DT
        act.receive(np.array([0.5, -0.5]), np.zeros(2), t, t)
        act.step(t, DT)
    for x in policy.calls:
        np.testing.assert_allclose(x[:2], [0.5, -0.5], atol=0.1)


# ------------------------------------------------------------------ health
def health(**kw):
    args = dict(active=True, fault=None, model_ready=True, has_target=True, holds={},
                steps=50, replan_failures_in_row=0, last_replan_error="", worker_failures=0,
                replan_failure_limit=20, worker_failure_limit=3, worker_failure_window=60.0)
    return controller_health(**{**args, **kw})


def test_health_levels_and_messages():
    assert health() == (OK, "controlling")
    assert health(active=False) == (OK, "inactive")
    assert health(has_target=False, model_ready=False) == (OK, "waiting for a target")
    assert health(model_ready=False) == (WARN, "holding: no model")
    assert health(holds={A.NO_PLAN: 3, A.STALE: 7}) == \
        (WARN, "holding: stale joint state (10 of 50 control steps)")
    assert health(holds={A.NO_PLAN: 0}) == (OK, "controlling")
    assert health(steps=0) == (WARN, "no control step since the last report: no joint states")
    assert health(fault="non-finite joint state") == (ERROR, "latched: non-finite joint state")
    level, msg = health(replan_failures_in_row=20, last_replan_error="NaN in weights",
                        holds={A.PLAN_EXPIRED: 50})
    assert level == ERROR and msg == "model unusable: 20 replans failed in a row " \
                                     "(NaN in weights)"
    assert health(replan_failures_in_row=19)[0] == OK
    level, msg = health(worker_failures=4)
    assert level == ERROR and "planning worker failed 4 times in 60 s" in msg
    assert health(worker_failures=3)[0] == OK
    # One line, always.
    assert health(fault="policy evaluation failed:\n  line 2") == \
        (ERROR, "latched: policy evaluation failed: line 2")
