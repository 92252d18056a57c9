"""Where GPS samples come from: the :class:`Sampler` seam.

An MDGPS iteration needs, for every condition m, N trajectories of T steps of a given
linear-Gaussian controller (or, to evaluate the global policy, one deterministic rollout).
A :class:`Sampler` draws them; MDGPS does not care *how*:

- :class:`EnvSampler` (the default) steps an in-process
  :class:`~mbrl_ros.core.algorithms.gps.Environment` (``reset(condition)`` /
  ``step(u)``; :class:`~mbrl_ros.core.algorithms.sim_env.MujocoEnv` in ``mbrl-ros gps``,
  the benchmarks and the tests);
- the node sampler (:mod:`mbrl_ros.ros.gps_driver`) runs every sample through the ROS
  nodes: the simulator's ``~/set_state`` reset, the controller node executing the
  condition's controller with the ``lg_controller`` planner, the states and commands read
  back.

Both consume the exploration noise from the same random generator in the same order --
one ``standard_normal(nu)`` per executed step, a discarded sample only the steps it ran --
so the same seed gives the same noise on either path, and, with a deterministic system
(lockstep MuJoCo), the same samples. :func:`noise_for_sample` draws a sample's noise as
one (T, nu) block and gives back what a discarded sample did not use.

A sample that leaves the valid region (``check(x)`` returns a reason) is discarded,
counted and redrawn, at most ``max_discarded`` times per condition, then
:class:`SamplerError`. So is a sample whose episode was cut short or interrupted on the way
(:class:`TruncatedSample`: the node samplers' simulator stalled, a command went missing, the
controller held instead of executing the sample): dropped with a warning and redrawn, its
noise consumed for the steps it ran.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Sampler", "SampleBatch", "SamplerError", "TruncatedSample", "EnvSampler",
           "noise_for_sample", "consume_noise", "first_invalid", "cut_timed_sample"]


class SamplerError(RuntimeError):
    """Samples cannot be drawn (e.g. every redraw of a sample was invalid)."""


class TruncatedSample(RuntimeError):
    """One sample's episode did not run whole (stalled, a state or command missing, commands
    not the sample's controller's): not a sample of the controller. ``steps``: how many of
    its steps ran (the noise they used is consumed)."""

    def __init__(self, message: str, steps: int = 0):
        super().__init__(message)
        self.steps = max(0, int(steps))


@dataclass
class SampleBatch:
    """n samples of one condition.

    Attributes:
        X: (n, T+1, nx) states; U: (n, T, nu) applied (clipped) actions.
        discarded: invalid samples drawn and thrown away on the way.
        reasons: why each was discarded.
        lost: system time those discarded samples ran [s].
    """
    X: np.ndarray
    U: np.ndarray
    discarded: int = 0
    reasons: list[str] = field(default_factory=list)
    lost: float = 0.0


@runtime_checkable
class Sampler(Protocol):
    """Draws the samples of one condition.

    ``controller`` has ``sample(x, t, rng)`` (noisy: a
    :class:`~mbrl_ros.core.policies.linear_gaussian.LinearGaussianPolicy`) or
    ``action(x, t)`` (deterministic: a bound global policy); ``rng`` is the generator the
    exploration noise comes from (consumed as documented in the module docstring).
    """

    def sample(self, condition: int, controller, n: int, horizon: int,
               rng: np.random.Generator, noisy: bool = True) -> SampleBatch:
        ...


def noise_for_sample(rng: np.random.Generator, horizon: int, nu: int
                     ) -> tuple[np.ndarray, dict]:
    """A sample's exploration noise (T, nu) -- the same numbers T calls of
    ``rng.standard_normal(nu)`` give -- and the generator state before it (for
    :func:`consume_noise` when the sample is cut short)."""
    before = rng.bit_generator.state
    return rng.standard_normal((horizon, nu)), before


def consume_noise(rng: np.random.Generator, before: dict, steps: int, nu: int) -> None:
    """Put ``rng`` where it would be had the sample drawn only ``steps`` steps of noise
    (a discarded sample: the in-process sampler stops drawing at its first invalid
    state)."""
    rng.bit_generator.state = before
    if steps > 0:
        rng.standard_normal((steps, nu))


def first_invalid(check: Callable[[np.ndarray], str | None] | None, X: np.ndarray
                  ) -> tuple[int, str] | None:
    """(t, reason) of the first invalid state X[t] (t >= 1) of a trajectory X (T+1, nx),
    or None -- what the in-process loop finds step by step."""
    if check is None:
        return None
    for t in range(1, len(X)):
        x = X[t]
        why = check(x) if np.all(np.isfinite(x)) else "non-finite state"
        if why:
            return t, why
    return None


class EnvSampler:
    """Samples by stepping an in-process environment (``reset``/``step``/``check``).

    Args:
        env: the environment (``n_conditions``, ``nx``, ``nu``, ``dt``; ``check`` optional).
        u_min, u_max: (nu,) action limits the actions are clipped to before ``step``.
        max_discarded: invalid samples redrawn per condition and call before giving up.
    """

    def __init__(self, env, u_min: np.ndarray, u_max: np.ndarray, max_discarded: int = 20):
        self.env = env
        self.u_min = np.asarray(u_min, dtype=np.float64)
        self.u_max = np.asarray(u_max, dtype=np.float64)
        self.max_discarded = int(max_discarded)

    def sample(self, condition: int, controller, n: int, horizon: int,
               rng: np.random.Generator, noisy: bool = True) -> SampleBatch:
        env, T, m = self.env, int(horizon), int(condition)
        dt = float(env.dt)
        X = np.empty((n, T + 1, int(env.nx)))
        U = np.empty((n, T, int(env.nu)))
        check = getattr(env, "check", None) if noisy else None
        out = SampleBatch(X, U)
        i = bad = 0
        while i < n:
            x = np.asarray(env.reset(m), dtype=np.float64)
            X[i, 0] = x
            why = None
            for t in range(T):
                u = controller.sample(x, t * dt, rng) if noisy else controller.action(x, t * dt)
                u = np.clip(u, self.u_min, self.u_max)
                U[i, t] = u
                x = np.asarray(env.step(u), dtype=np.float64)
                X[i, t + 1] = x
                if check is not None:
                    why = check(x) if np.all(np.isfinite(x)) else "non-finite state"
                    if why:
                        why = f"condition {m}, step {t + 1}: {why}"
                        break
            if why:                        # discard, count, redraw
                out.lost += (t + 1) * dt   # it did run on the system
                out.discarded += 1
                bad += 1
                out.reasons.append(why)
                if bad > self.max_discarded:
                    raise SamplerError(f"{bad} invalid samples for condition {m} in one "
                                       f"iteration (last: {why}); the controller leaves the "
                                       "valid region -- lower the exploration or the KL step")
                continue
            i += 1
        return out


def sample_all(sampler: Sampler, controllers: Sequence, n: int, horizon: int,
               rng: np.random.Generator, noisy: bool = True) -> list[SampleBatch]:
    """One :class:`SampleBatch` per condition, conditions in order."""
    return [sampler.sample(m, c, n, horizon, rng, noisy) for m, c in enumerate(controllers)]


def cut_timed_sample(states: np.ndarray, stamps: np.ndarray, commands: np.ndarray,
                     answers: Sequence[int], horizon: int, dt: float,
                     expected: Callable[[int, np.ndarray], np.ndarray],
                     atol: float = 1e-9, rtol: float = 1e-9, window: int = 25
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One sample of ``horizon`` steps cut from a real-time stream (an arm that runs on:
    no lockstep, no pause), in which the controller answered every joint state with one
    command.

    The sample's step t is a state stamped ``dt * t`` after step 0's and the t-th command
    after step 0's, which must be the sample controller's command at that state
    (``expected(t, x)``, compared with ``atol``/``rtol``; NaN entries are not compared).
    Each topic arrives in order, but
    which state a command answers is only a hint (``answers``: a subscriber that fell
    behind takes the queued messages of one topic before the other's), so the start is
    the first command that is step 0 at some state from which the whole chain holds --
    the states nearest the hint tried first (a move's command saturated at the limits can
    equal step 0 by chance; the chain tells them apart). Commands before it are the move's or the
    hold's. A stream in which no such chain exists -- a state dropped or late, a safe hold
    or a limit that changed a command, a command missing -- is not a sample of the
    controller: :class:`TruncatedSample`, with the longest chain's reason.

    Args:
        states: (N, nx) states in arrival order; stamps: (N,) their stamps [s].
        commands: (M, nu) commands in arrival order.
        answers: (M,) for each command, the index of the last state received before it.
        window: states tried on either side of that hint.

    Returns:
        X (T+1, nx) states, U (T, nu) commands.
    """
    T = int(horizon)
    states = np.asarray(states, dtype=np.float64)
    stamps = np.asarray(stamps, dtype=np.float64)
    commands = np.asarray(commands, dtype=np.float64)
    n_s, n_c = len(states), len(commands)

    step0: dict[int, np.ndarray] = {}       # expected(0, states[i]), tried for many commands

    def matches(t: int, j: int, i: int) -> bool:
        if t == 0:
            if i not in step0:
                step0[i] = np.asarray(expected(0, states[i]), dtype=np.float64)
            want = step0[i]
        else:
            want = np.asarray(expected(t, states[i]), dtype=np.float64)
        free = ~np.isnan(want)           # NaN: not compared (e.g. a joint past its limit)
        return bool(np.allclose(commands[j][free], want[free], atol=atol, rtol=rtol))

    def chain(i0: int, j0: int) -> tuple[int, str]:
        """Steps the chain from (state i0, command j0) holds for, and why it stops."""
        for t in range(T + 1):
            if i0 + t >= n_s:
                return t, f"the stream ended after {t} of {T} steps (states stopped arriving?)"
            lag = stamps[i0 + t] - stamps[i0] - dt * t
            if abs(lag) > 0.5 * dt:
                return t, (f"state {t} of the sample is {lag:+.3g} s off its control period "
                           f"(a state dropped or late; period {dt:g} s)")
            if t == T:
                break
            if j0 + t >= n_c:
                return t, f"{t} of {T} commands received"
            if t and not matches(t, j0 + t, i0 + t):
                return t, (f"the command at step {t} is not the sample's controller's "
                           f"({np.round(commands[j0 + t], 6).tolist()}; a safe hold, a limit, "
                           "or a command missing?)")
        return T, ""

    best = (-1, f"no command of the sample's controller among the {n_c} received (the "
            "controller did not switch to it?)")
    for j in range(n_c):
        hint = min(max(int(answers[j]), 0), n_s - 1)
        near = range(max(hint - window, 0), min(hint + window + 1, n_s))
        starts = [i for i in sorted(near, key=lambda i: (abs(i - hint), i))
                  if matches(0, j, i)]
        for i in starts:
            steps, why = chain(i, j)
            if steps == T:
                return states[i:i + T + 1].copy(), commands[j:j + T].copy()
            if steps > best[0]:
                best = (steps, why)
        # no whole chain from this command: a command of the move that equals step 0 by
        # chance (both saturated at the limits), or a broken sample; try the later ones
    raise TruncatedSample(best[1], max(best[0], 0))
