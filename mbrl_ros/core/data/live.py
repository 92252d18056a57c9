"""Live data for :func:`~mbrl_ros.core.data.alignment.align`: episode boundaries from
latched episode markers, and a command stream from the efforts joint states report as
applied (the model fitter's live path; bags go through
:func:`~mbrl_ros.core.data.alignment.bag_to_dataset`).

Nothing here imports ROS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["commands_from_efforts", "live_episode_marks"]


def live_episode_marks(markers: Sequence[tuple[int, int]]) -> list[int]:
    """Episode boundaries of live data from the episode markers received, whichever order
    the latched marker and the first data arrived in.

    A simulator announces each episode start once, on a latched (transient-local) topic. A
    subscriber that joins while an episode runs gets that episode's marker on joining --
    and, over DDS, often *after* the first joint states and commands of the same episode
    (separate readers, no order between topics). Taking every marker's receive time as a
    boundary would then cut the first few transitions off as an 'episode' of their own.
    So: the first marker received is never a boundary (data before it belongs to its
    episode, data after it too), and a marker repeating the previous episode number (the
    latched sample delivered again, e.g. after a re-match) is none either; every later
    marker of a new episode is a boundary at its receive time.

    Args:
        markers: (receive_time_ns, episode_number) in the order received.

    Returns:
        Receive times [ns] of the episode starts among the data, for :func:`align`.
    """
    marks: list[int] = []
    last: int | None = None
    for i, (t_ns, number) in enumerate(markers):
        if i > 0 and int(number) != last:
            marks.append(int(t_ns))
        last = int(number)
    return marks


def commands_from_efforts(states: Sequence[tuple], efforts: Sequence[Sequence[float]],
                          command_names: Sequence[str]) -> list[tuple[int, np.ndarray]]:
    """A command stream made of the efforts the joint states report as *applied*, for
    :func:`align` (the fitter's ``action_source: state_effort``).

    A joint state after a step reports the effort applied during it (the simulator:
    ``qfrc_actuator`` of that step). So the action of x_k -> x_k+1 is state k+1's effort,
    given here as a command received 1 ns after state k: :func:`align` pairs exactly it
    with x_k, whatever the delays between the controller's commands and the robot's steps
    (a command arriving after the step it was meant for is paired with the step it
    was applied in). States without an effort for every command joint give no command
    (their transition is dropped as 'no_command').

    Args:
        states: (log_time_ns, stamp_ns, names, positions, velocities) in arrival order.
        efforts: the effort array of each of those states (same order; may be empty).
        command_names: the command joints, in command order.

    Returns:
        (log_time_ns, values (n_cmd,)) per state that has a successor.
    """
    out: list[tuple[int, np.ndarray]] = []
    for k in range(len(states) - 1):
        names, effort = list(states[k + 1][2]), efforts[k + 1]
        if len(effort) != len(names) or not all(n in names for n in command_names):
            continue
        values = np.array([effort[names.index(n)] for n in command_names], dtype=float)
        out.append((int(states[k][0]) + 1, values))
    return out
