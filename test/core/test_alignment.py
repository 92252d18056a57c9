"""Alignment of joint states and effort commands into transitions (synthetic streams, known timing)."""

import numpy as np
import pytest

from mbrl_ros.core.data import AlignmentConfig, BagWriter, align, bag_to_dataset, default_typestore

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # log time origin (ns since epoch)
S0 = 50 * 1_000_000_000  # header stamp origin (sim time, ns)
JOINTS = ("shoulder", "elbow", "wrist")


def synthetic(n=100, period_ms=10.0, cmd_delay_ms=2.0, stamp_period_ms=None, seed=0):
    """100 Hz stream with p_{k+1} = p_k + u_k and v_{k+1} = u_k; command u_k logged cmd_delay after state k.

    Log times have a deterministic sub-ms jitter. Returns (states, commands, u, x) where x[k] is the
    true state vector [p..., v...] of state k.
    """
    rng = np.random.default_rng(seed)
    nj = len(JOINTS)
    u = rng.normal(size=(n, nj))
    p = np.zeros((n, nj))
    v = np.zeros((n, nj))
    p[0] = rng.normal(size=nj)
    for k in range(n - 1):
        p[k + 1] = p[k] + u[k]
        v[k + 1] = u[k]
    stamp_period = period_ms if stamp_period_ms is None else stamp_period_ms
    states, commands = [], []
    for k in range(n):
        t = T0 + int(k * period_ms * MS) + int(rng.integers(0, 300_000))  # 0..0.3 ms jitter
        stamp = S0 + int(round(k * stamp_period * MS))
        states.append((t, stamp, list(JOINTS), p[k].copy(), v[k].copy()))
        commands.append((t + int(cmd_delay_ms * MS), u[k].copy()))
    x = np.hstack([p, v])
    return states, commands, u, x


def check_pairing(batch, u, x, ks):
    np.testing.assert_array_equal(batch.states, x[ks])
    np.testing.assert_array_equal(batch.next_states, x[np.asarray(ks) + 1])
    np.testing.assert_array_equal(batch.actions, u[ks])
    np.testing.assert_allclose(batch.next_states[:, :3] - batch.states[:, :3], batch.actions, atol=1e-12)


def accounting_ok(rep):
    return rep.n_transitions + sum(rep.lost_transitions.values()) == rep.n_candidates


def test_recovers_exact_pairing():
    states, commands, u, x = synthetic()
    batch, rep = align(states, commands, [], AlignmentConfig())
    assert rep.n_transitions == 99 and rep.dropped == {} and rep.n_episodes == 1
    check_pairing(batch, u, x, range(99))
    np.testing.assert_allclose(batch.dt, 0.01)
    np.testing.assert_array_equal(batch.episode, 0)
    np.testing.assert_allclose(batch.time, [s[0] / 1e9 for s in states[:99]])
    assert batch.state_names == tuple(f"{j}/position" for j in JOINTS) + tuple(f"{j}/velocity" for j in JOINTS)
    assert batch.action_names == JOINTS
    assert batch.meta["dt_source"] == "header_stamp"
    assert accounting_ok(rep) and "99 transitions" in rep.table()


def test_pairing_is_not_lagged():
    """A command logged 2 ms BEFORE state k+1 still belongs to the window of state k (causal)."""
    states, commands, u, x = synthetic(cmd_delay_ms=9.5)
    batch, rep = align(states, commands, [], AlignmentConfig())
    # with 9.5 ms delay and up to 0.3 ms state jitter the command still precedes x_{k+1}
    check_pairing(batch, u, x, range(99))


def test_inputs_need_not_be_sorted():
    states, commands, u, x = synthetic(n=30)
    batch, _ = align(states[::-1], commands[::-1], [], AlignmentConfig())
    check_pairing(batch, u, x, range(29))


def test_misordered_joint_names_are_reordered():
    states, commands, u, x = synthetic()
    perm = [2, 0, 1]
    for k in range(1, 100, 3):  # (the first message defines the default joint order)
        t, s, names, p, v = states[k]
        states[k] = (t, s, [names[i] for i in perm] + ["gripper"], np.r_[p[perm], 0.5], np.r_[v[perm], 0.0])
    batch, rep = align(states, commands, [], AlignmentConfig())
    assert rep.n_transitions == 99
    check_pairing(batch, u, x, range(99))
    # explicit joint order -> columns follow it
    order = ("wrist", "shoulder", "elbow")
    b2, _ = align(states, commands, [], AlignmentConfig(joint_names=order))
    assert b2.state_names[:3] == ("wrist/position", "shoulder/position", "elbow/position")
    np.testing.assert_array_equal(b2.states[:, :3], x[:99][:, [2, 0, 1]])
    np.testing.assert_array_equal(b2.states[:, 3:], x[:99][:, [5, 3, 4]])
    # a first message with an extra joint makes it a default joint: the others lack it (noted)
    t, s, names, p, v = states[0]
    states[0] = (t, s, names + ["gripper"], np.r_[p, 0.0], np.r_[v, 0.0])
    b3, rep3 = align(states, commands, [], AlignmentConfig())
    assert rep3.dropped == {"missing_joint": 66} and any("set AlignmentConfig.joint_names" in n for n in rep3.notes)
    b4, rep4 = align(states, commands, [], AlignmentConfig(joint_names=JOINTS))
    assert rep4.n_transitions == 99


def test_nonfinite_states_and_commands_dropped_and_counted():
    states, commands, u, x = synthetic()
    t, s, n, p, v = states[10]
    states[10] = (t, s, n, np.r_[np.nan, p[1:]], v)
    t, s, n, p, v = states[60]
    states[60] = (t, s, n, p, np.r_[v[:2], np.inf])
    commands[30] = (commands[30][0], np.r_[np.nan, 0.0, 0.0])
    batch, rep = align(states, commands, [], AlignmentConfig())
    assert rep.dropped == {"nonfinite_state": 2, "nonfinite_command": 1}
    # each bad state loses the transitions into and out of it; the NaN command its window
    assert rep.lost_transitions == {"nonfinite_state": 4, "nonfinite_command": 1}
    ks = [k for k in range(99) if k not in (9, 10, 59, 60, 30)]
    assert rep.n_transitions == len(ks) == 94
    check_pairing(batch, u, x, ks)
    assert np.all(np.isfinite(batch.states)) and np.all(np.isfinite(batch.actions))
    assert accounting_ok(rep)
    assert rep.n_episodes == 1  # drops alone do not split episodes ...
    b2, rep2 = align(states, commands, [], AlignmentConfig(split_on_drop=True))
    assert rep2.n_episodes == 4  # ... unless asked to: [0..8], [11..29], [31..58], [61..98]
    for ep in b2.episodes():
        np.testing.assert_array_equal(ep.next_states[:-1], ep.states[1:])  # contiguous chains


def test_gap_splits_episodes():
    states, commands, u, x = synthetic()
    keep = [k for k in range(100) if not 50 <= k < 60]  # 100 ms without data
    states2 = [states[k] for k in keep]
    commands2 = [commands[k] for k in keep]
    batch, rep = align(states2, commands2, [], AlignmentConfig())
    assert rep.dropped == {"gap": 1} and rep.lost_transitions == {"gap": 1}
    assert rep.n_episodes == 2
    ks_before = list(range(49))
    ks_after = list(range(60, 99))
    check_pairing(batch, u, x, ks_before + ks_after)
    np.testing.assert_array_equal(batch.episode, [0] * 49 + [1] * 39)
    assert accounting_ok(rep)


def test_zero_order_hold_and_stale_command():
    states, commands, u, x = synthetic()
    del_ = {20} | set(range(40, 100))
    cmds = [c for k, c in enumerate(commands) if k not in del_]
    batch, rep = align(states, cmds, [], AlignmentConfig(max_command_age=0.05))
    # window 20: held command 19 (age ~12 ms). windows 40..43: command 39 held while age <= 50 ms
    # at t_{k+1} (age = (k+1-39)*10 ms - 2 ms +- jitter); windows 44..98 are stale.
    assert rep.n_held == 1 + 4
    assert rep.lost_transitions == {"stale_command": 55} and rep.dropped == {"stale_command": 55}
    ks = [k for k in range(44)]
    np.testing.assert_array_equal(batch.states, x[ks])
    expected_u = u[ks].copy()
    expected_u[20] = u[19]
    expected_u[40:44] = u[39]
    np.testing.assert_array_equal(batch.actions, expected_u)
    assert accounting_ok(rep)


def test_last_command_in_window_wins():
    states, commands, u, x = synthetic(n=20)
    extra = (commands[7][0] + 3 * MS, u[7] * 0 + 42.0)  # a second, later command in window 7
    early = (commands[9][0] - 1 * MS, u[9] * 0 - 7.0)  # an earlier one in window 9 (superseded)
    batch, rep = align(states, commands + [extra, early], [], AlignmentConfig())
    expected = u[:19].copy()
    expected[7] = 42.0
    np.testing.assert_array_equal(batch.actions, expected)


def test_no_command_before_first():
    states, commands, u, x = synthetic(n=20)
    batch, rep = align(states, commands[5:], [], AlignmentConfig())
    assert rep.lost_transitions == {"no_command": 5}
    check_pairing(batch, u, x, range(5, 19))


def test_duplicate_stamps_dropped_without_breaking_continuity():
    states, commands, u, x = synthetic()
    dup = list(states)
    for k in (5, 6, 70):
        t, s, n, p, v = states[k]
        dup.append((t + 1 * MS, s, n, p.copy(), v.copy()))  # re-published 1 ms later, same stamp
    batch, rep = align(dup, commands, [], AlignmentConfig())
    assert rep.dropped == {"duplicate_state": 3} and rep.lost_transitions == {}
    assert rep.n_candidates == 99 and rep.n_transitions == 99
    check_pairing(batch, u, x, range(99))


def test_reset_state_with_the_previous_stamp_is_not_a_duplicate():
    """A simulator's clock stands still at a reset: the new episode's first state has the
    stamp of the old episode's last one but other values, and must be kept."""
    states, commands, u, x = synthetic()
    t, s, n, p, v = states[50]
    reset = (t + 3 * MS, s, n, p + 1.0, v.copy())       # same stamp, new values
    later = [(tt + 6 * MS, ss, nn, pp, vv) for tt, ss, nn, pp, vv in states[51:]]
    cmds = [(tt + 6 * MS, c) if tt > t else (tt, c) for tt, c in commands]
    batch, rep = align(states[:51] + [reset] + later, cmds, [t + 2 * MS], AlignmentConfig())
    assert "duplicate_state" not in rep.dropped
    assert rep.dropped == {"episode_boundary": 1} and rep.n_episodes == 2
    first = batch.episodes()[1]
    np.testing.assert_array_equal(first.states[0], np.concatenate([p + 1.0, v]))


def test_episode_marker_splits():
    states, commands, u, x = synthetic()
    marks = [states[30][0] + 5 * MS, states[75][0]]  # inside window 30, exactly at t_75 (window 75)
    batch, rep = align(states, commands, marks, AlignmentConfig())
    assert rep.dropped == {"episode_boundary": 2} and rep.n_episodes == 3
    ks = [k for k in range(99) if k not in (30, 75)]
    check_pairing(batch, u, x, ks)
    np.testing.assert_array_equal(batch.episode, [0] * 30 + [1] * 44 + [2] * 23)
    assert accounting_ok(rep)


def test_dt_from_stamps_in_fast_forward_and_log_fallback():
    # simulation 10x faster than wall clock: stamps 10 ms apart, log times 1 ms apart
    states, commands, u, x = synthetic(period_ms=1.0, cmd_delay_ms=0.5, stamp_period_ms=10.0)
    batch, rep = align(states, commands, [], AlignmentConfig())
    np.testing.assert_allclose(batch.dt, 0.01)
    check_pairing(batch, u, x, range(99))
    # zero stamps -> dt from log time, noted
    zero = [(t, 0, n, p, v) for (t, s, n, p, v) in states]
    b2, rep2 = align(zero, commands, [], AlignmentConfig())
    assert b2.meta["dt_source"] == "log_time" and any("log time" in s for s in rep2.notes)
    np.testing.assert_allclose(b2.dt, np.diff([s[0] for s in states]) / 1e9)
    assert rep2.n_transitions == 99


def test_missing_joint_velocity_and_wrong_command_length():
    states, commands, u, x = synthetic()
    t, s, n, p, v = states[40]
    states[40] = (t, s, n[:2], p[:2], v[:2])  # 'wrist' missing
    t, s, n, p, v = states[80]
    states[80] = (t, s, n, p, [])  # no velocities
    commands[10] = (commands[10][0], [1.0, 2.0])  # 2 values for 3 joints
    batch, rep = align(states, commands, [], AlignmentConfig())
    assert rep.dropped == {"missing_joint": 1, "missing_velocity": 1, "wrong_command_length": 1}
    assert rep.lost_transitions == {"missing_joint": 2, "missing_velocity": 2, "wrong_command_length": 1}
    table = rep.table()
    for reason in ("missing_joint", "missing_velocity", "wrong_command_length"):
        assert reason in table
    assert accounting_ok(rep)


def test_command_length_that_never_fits_the_robot_is_an_error():
    """Issue 11: 3-value commands for a 2-motor arm must not become a 3-action dataset."""
    states, commands, u, x = synthetic(n=10)
    cmds4 = [(t, np.r_[c, 0.0]) for t, c in commands]  # 4 columns for 3 state joints
    with pytest.raises(ValueError, match=r"4 values \(all 10 commands\).*3 joints"):
        align(states, cmds4, [], AlignmentConfig())
    # the robot's command joints given (mbrl-ros dataset --robot): its count must match
    with pytest.raises(ValueError, match=r"3 values \(all 10 commands\).*2 command joints \['a', 'b'\]"):
        align(states, commands, [], AlignmentConfig(command_names=("a", "b")))
    # some commands of the right length: the others are dropped and counted, not an error
    mixed = commands[:7] + [(t, np.r_[c, 0.0]) for t, c in commands[7:]]
    b, rep = align(states, mixed, [], AlignmentConfig())
    assert b.action_names == JOINTS and rep.dropped["wrong_command_length"] == 3
    # an under-actuated robot (fewer command values than state joints, e.g. the cart-pole) is valid
    one = [(t, c[:1]) for t, c in commands]
    b, rep = align(states, one, [], AlignmentConfig())
    assert b.action_names == ("u0",) and rep.n_transitions == 9
    b, rep = align(states, one, [], AlignmentConfig(command_names=("shoulder",)))
    assert b.action_names == ("shoulder",) and rep.n_transitions == 9


def test_empty_inputs():
    b, rep = align([], [], [], AlignmentConfig())
    assert len(b) == 0 and rep.n_transitions == 0 and rep.n_candidates == 0
    b, rep = align([], [], [], AlignmentConfig(joint_names=("a", "b")))
    assert b.nx == 4 and b.nu == 2


def test_bag_to_dataset_end_to_end(tmp_path):
    ts = default_typestore()
    JS, Header, Time = (ts.types[k] for k in ("sensor_msgs/msg/JointState", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    F64, Layout, U32 = (ts.types[k] for k in ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/MultiArrayLayout", "std_msgs/msg/UInt32"))
    cfg = AlignmentConfig()
    states, commands, u, x = synthetic()
    marker_t = states[50][0] + 3 * MS
    with BagWriter(tmp_path, max_bytes=20_000) as w:
        w.add_topic(cfg.state_topic, "sensor_msgs/msg/JointState")
        w.add_topic(cfg.command_topic, "std_msgs/msg/Float64MultiArray")
        w.add_topic(cfg.episode_topic, "std_msgs/msg/UInt32")
        for (t, s, n, p, v), (tc, c) in zip(states, commands):
            w.write(cfg.state_topic, t, JS(header=Header(stamp=Time(sec=s // 10**9, nanosec=s % 10**9), frame_id=""),
                                           name=n, position=p, velocity=v, effort=np.zeros(0)))
            w.write(cfg.command_topic, tc, F64(layout=Layout(dim=[], data_offset=0), data=c))
            if t == states[50][0]:
                w.write(cfg.episode_topic, marker_t, U32(data=1))
    assert len(w.bag_paths) > 1
    batch, rep, bag_rep = bag_to_dataset(tmp_path, cfg)
    direct, _ = align(states, commands, [marker_t], cfg)
    assert bag_rep.complete and rep.n_transitions == 98 and rep.n_episodes == 2
    for name in ("states", "actions", "next_states", "dt", "time", "episode"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(direct, name))
    assert batch.meta["source_bags"] == [str(p) for p in w.bag_paths]
    assert batch.meta["bags_complete"] is True


def test_config_validation():
    with pytest.raises(ValueError, match="duplicates"):
        AlignmentConfig(joint_names=("a", "a"))
    with pytest.raises(ValueError, match="not a string"):
        AlignmentConfig(joint_names="abc")


def _stepped(n=300, step_at=100, step_ms=1000):
    """synthetic() whose log clock steps back by step_ms at state step_at (stamps unaffected),
    listed in recording order with seq numbers: S0 C0 S1 C1 ... (as a logger writes them)."""
    states, commands, u, x = synthetic(n=n)
    st, cm = [], []
    for k, ((t, s, names, p, v), (tc, c)) in enumerate(zip(states, commands)):
        back = step_ms * MS if k >= step_at else 0
        st.append((t - back, s, names, p, v, 2 * k))
        cm.append((tc - back, c, 2 * k + 1))
    return st, cm, u, x


def test_log_time_stepping_back_never_pairs_across_the_step():
    """Issue 11: a wall-clock step back by 1 s while logging. Sorted by log time the two sides
    interleave (states ~1 s apart paired); with the recording order the step is found, the
    transition spanning it is dropped and counted, and every kept transition is a true one."""
    st, cm, u, x = _stepped()
    batch, rep = align(st, cm, [], AlignmentConfig())
    assert rep.lost_transitions == {"clock_step": 1} and rep.dropped == {"clock_step": 1}
    assert rep.n_transitions == 298 and accounting_ok(rep) and rep.n_episodes == 2
    check_pairing(batch, u, x, [k for k in range(299) if k != 99])
    assert len(rep.warnings) == 1 and "stepped back 1 time" in rep.warnings[0] and "0.99 s" in rep.warnings[0]
    table = rep.table()
    assert "clock_step" in table and "warning: log time stepped back" in table
    assert batch.meta["clock_steps"] == 1
    # Without the recording order (old behaviour) the same data gives wrong pairs: the test can fail.
    bad, _ = align([s[:5] for s in st], [c[:2] for c in cm], [], AlignmentConfig())
    assert not np.allclose(bad.next_states[:, :3] - bad.states[:, :3], bad.actions)


def test_command_logged_across_the_step_is_dropped():
    """A command recorded after the step but before the next state carries the new clock: it must
    not become the action of a transition ~1 s earlier on the old clock."""
    st, cm, u, x = _stepped(n=300, step_at=200, step_ms=995)
    k = 199   # command 199 is logged after the clock stepped back (recorded before state 200)
    cm[k] = (cm[k][0] - 995 * MS, cm[k][1], cm[k][2])   # lands in [t99, t100), after command 99
    batch, rep = align(st, cm, [], AlignmentConfig())
    assert rep.dropped["clock_step_command"] == 1 and accounting_ok(rep)
    assert rep.n_transitions == 298   # 199 + 99; 199 -> 200 spans the step
    check_pairing(batch, u, x, [k for k in range(299) if k != 199])


def test_clock_step_through_a_bag(tmp_path):
    """The recording order survives writing and reading a bag (BagMessage.seq)."""
    ts = default_typestore()
    JS, Header, Time = (ts.types[k] for k in ("sensor_msgs/msg/JointState", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"))
    F64, Layout = (ts.types[k] for k in ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/MultiArrayLayout"))
    cfg = AlignmentConfig()
    st, cm, u, x = _stepped()
    with BagWriter(tmp_path) as w:
        w.add_topic(cfg.state_topic, "sensor_msgs/msg/JointState")
        w.add_topic(cfg.command_topic, "std_msgs/msg/Float64MultiArray")
        for (t, s, n, p, v, _), (tc, c, _) in zip(st, cm):
            w.write(cfg.state_topic, t, JS(header=Header(stamp=Time(sec=s // 10**9, nanosec=s % 10**9), frame_id=""),
                                           name=n, position=p, velocity=v, effort=np.zeros(0)))
            w.write(cfg.command_topic, tc, F64(layout=Layout(dim=[], data_offset=0), data=c))
    batch, rep, bag_rep = bag_to_dataset(tmp_path, cfg)
    assert bag_rep.complete and rep.lost_transitions == {"clock_step": 1} and rep.n_transitions == 298
    check_pairing(batch, u, x, [k for k in range(299) if k != 99])
