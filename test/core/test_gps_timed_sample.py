"""Real-time GPS samples (issue 14, a physical arm): cutting one sample of T steps out of a
stream in which the arm ran on -- the commands before the sample (a move) skipped, the
sample's states one control period apart, every command the sample controller's; anything
else is a truncated sample (dropped and redrawn by the node samplers), not data."""
import numpy as np
import pytest

from mbrl_ros.core.algorithms.sampler import TruncatedSample, cut_timed_sample

DT, T, NX, NU = 0.05, 6, 4, 2
rng = np.random.default_rng(0)
K = rng.standard_normal((T, NU, NX))
k = rng.standard_normal((T, NU))


def expected(t, x):
    return K[t] @ x + k[t]


def stream(pre=3, post=2, jitter=0.0):
    """pre move states (answered by other commands), T+1+post sample/hold states."""
    n = pre + T + 1 + post
    states = rng.standard_normal((n, NX))
    stamps = 10.0 + DT * np.arange(n) + jitter * rng.uniform(-1, 1, n)
    commands, answers = [], []
    for i in range(n):
        t = i - pre
        commands.append(expected(t, states[i]) if 0 <= t < T else rng.standard_normal(NU))
        answers.append(i)
    return states, stamps, np.array(commands), answers, pre


def test_the_sample_is_cut_after_the_move_and_checked_step_by_step():
    states, stamps, commands, answers, pre = stream(jitter=0.01)
    X, U = cut_timed_sample(states, stamps, commands, answers, T, DT, expected)
    np.testing.assert_array_equal(X, states[pre:pre + T + 1])
    np.testing.assert_array_equal(U, commands[pre:pre + T])


def test_a_command_that_arrived_after_the_next_state_still_answers_its_state():
    states, stamps, commands, answers, pre = stream()
    answers[pre] = pre + 1                 # step 0's command overtaken by the next state
    X, _ = cut_timed_sample(states, stamps, commands, answers, T, DT, expected)
    np.testing.assert_array_equal(X[0], states[pre])


@pytest.mark.parametrize("fault, match", [
    ("drop_state", "off its control period"),
    ("late_state", "off its control period"),
    ("hold", "command at step 3 is not"),
    ("short", "stream ended"),
    ("never", "no command of the sample's controller"),
])
def test_anything_but_a_whole_sample_is_truncated(fault, match):
    states, stamps, commands, answers, pre = stream()
    if fault == "drop_state":             # state 3 of the sample never arrived
        keep = np.ones(len(states), bool)
        keep[pre + 3] = False
        states, stamps = states[keep], stamps[keep]
        commands = np.delete(commands, pre + 3, axis=0)
        answers = list(range(len(states)))
    elif fault == "late_state":
        stamps[pre + 4] += 0.6 * DT
    elif fault == "hold":
        commands[pre + 3] = 0.0             # a safe hold in the middle of the sample
    elif fault == "short":
        states, stamps = states[:pre + T - 1], stamps[:pre + T - 1]
        commands, answers = commands[:pre + T - 1], answers[:pre + T - 1]
    elif fault == "never":
        commands[pre] += 1.0
    with pytest.raises(TruncatedSample, match=match) as e:
        cut_timed_sample(states, stamps, commands, answers, T, DT, expected)
    assert 0 <= e.value.steps <= T


def test_commands_taken_before_their_states_are_paired_by_the_stamps():
    """A subscriber that fell behind takes one topic's queued messages before the other's
    (seen: eight commands recorded after state 1, then the states): the pairing comes from
    the chain of steps, not from the arrival order."""
    states, stamps, commands, answers, pre = stream()
    answers = [min(i, 1) for i in range(len(commands))]
    X, U = cut_timed_sample(states, stamps, commands, answers, T, DT, expected)
    np.testing.assert_array_equal(X, states[pre:pre + T + 1])
    np.testing.assert_array_equal(U, commands[pre:pre + T])


def test_a_move_command_that_equals_step_0_by_chance_is_not_the_start():
    """Seen on a real-time run: the move's command saturated at the limits equalled the
    sample controller's step 0 (also saturated) at a fast state; the chain from it fails,
    the real start is found after it."""
    states, stamps, commands, answers, pre = stream(pre=6)
    def clipped(t, x):
        return np.clip(expected(t, x), -0.5, 0.5)
    commands = np.array(commands)
    for t in range(T):
        commands[pre + t] = clipped(t, states[pre + t])
    commands[2] = clipped(0, states[2])          # a move command that looks like step 0
    X, U = cut_timed_sample(states, stamps, commands, answers, T, DT, clipped)
    np.testing.assert_array_equal(X, states[pre:pre + T + 1])


def test_entries_the_controller_gives_as_nan_are_not_compared():
    """A joint beyond its position limit: the controller's guard changes its effort, the
    expected command says NaN there (as the lockstep path masks it) and the rest is checked."""
    states, stamps, commands, answers, pre = stream()
    commands[pre + 2, 1] = 123.0                 # the guard acted on joint 1 at step 2

    def masked(t, x):
        u = expected(t, x)
        if t == 2:
            u[1] = np.nan
        return u
    X, U = cut_timed_sample(states, stamps, commands, answers, T, DT, masked)
    np.testing.assert_array_equal(U, commands[pre:pre + T])
    with pytest.raises(TruncatedSample, match="step 2"):
        cut_timed_sample(states, stamps, commands, answers, T, DT, expected)
