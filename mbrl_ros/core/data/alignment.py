"""Turn joint-state / effort-command streams into (x_t, u_t, x_{t+1}) transitions.

Semantics (zero-order hold, causal)
-----------------------------------
Timelines. Every message has a *log time* (when the logger received it, ns). JointState also has a
header *stamp* (robot / simulation time). Commands (Float64MultiArray) have no header, so only log
time orders states and commands. ``dt`` of a transition is the stamp difference (robot time, which
differs from log time in fast-forward simulation); for an interval whose stamps are zero or not
increasing, dt falls back to the log-time difference (counted in the notes).

States. Sorted by log time. The state vector is ``[positions of joint_names..., velocities...]``
with joints picked BY NAME (messages may list joints in any order, or extra joints). Dropped states:
  duplicate_state   same header stamp AND same names/positions/velocities as the previous state
                    (a re-published sample; it is removed before pairing, so it does not break
                    continuity). A state with the previous stamp but other values is kept: a
                    simulator's clock does not advance at a reset, so an episode's first state
                    shares the stamp of the last one,
  missing_joint     one of joint_names is absent,
  missing_position / missing_velocity   empty position / velocity array,
  malformed_state   position/velocity length differs from the name count,
  nonfinite_state   NaN/inf in a used position or velocity.
Consecutive distinct states k, k+1 form a *candidate transition* over the log-time window
[t_k, t_{k+1}). No transition spans a dropped state: the candidates on either side of it are lost and
counted under the state's reason.

Actions. The action of candidate (x_k -> x_{k+1}) is the LAST command logged in [t_k, t_{k+1}) (a
command logged exactly at t_{k+1} belongs to the next window). If there is none, the latest earlier
command is held (zero-order hold) provided its age at t_{k+1} is <= ``max_command_age``; otherwise the
candidate is lost ('stale_command', or 'no_command' if no command came before at all). Commands with
NaN/inf ('nonfinite_command') or a length different from the expected one ('wrong_command_length';
expected = len(command_names) if given, else the most common length) are dropped and are never
applied; conservatively, they also invalidate the previously held command: if the latest command
event before t_{k+1} is such an invalid command, the applied effort is unknown and the candidate is
lost under that command's reason.

Episodes. A new episode starts at every episode marker (log time of a message on the episode topic)
and at every gap (an interval whose dt exceeds ``gap_factor`` x the median dt); the candidate whose
window contains the marker ('episode_boundary') or the gap ('gap') is lost. With
``split_on_drop=True`` every lost candidate also starts a new episode (so each episode is a contiguous
chain with next_states[i] == states[i+1]). Episode ids are 0..E-1 in time order.

Command length. The commands' length must be the robot's number of command joints:
``len(command_names)`` when given (``mbrl-ros dataset --robot``), else inferred from the states:
the number of state joints if any command has that length, else (an under-actuated robot such as
the cart-pole) the most common length that is at most the number of state joints. If no command at
all has a valid length, :func:`align` raises ValueError naming both counts (a 3-value command
stream for a 2-joint arm is the wrong topic or the wrong robot, not a 3-action dataset).

Clock steps. Log times come from the logging computer's wall clock, which can step (NTP, a manual
change). When the inputs carry their recording order (``seq``, as :func:`bag_to_dataset` passes
it), a state whose log time is more than ``clock_step_tolerance`` before an earlier state's (in
recording order) marks a step backwards: the recording is split there and each part is aligned on
its own, so no transition pairs states from either side of the step (without this, sorting by log
time interleaves both sides and pairs states ~1 s apart). The candidate spanning each step is lost
as 'clock_step'; commands logged out of order across a step are dropped ('clock_step_command'); a
new episode starts after each step; the report carries a warning.

Accounting (AlignmentReport): ``dropped`` counts dropped items per reason (states for state reasons,
commands for command reasons, candidates for gap / episode_boundary / stale_command / no_command /
bad_dt); ``lost_transitions`` assigns every candidate that did not become a transition exactly one
reason (precedence: left state, right state, episode_boundary, gap, bad_dt, command), so
``n_transitions + sum(lost_transitions.values()) == n_candidates`` where
``n_candidates = n_states - dropped['duplicate_state'] - 1``.

Nothing here imports ROS.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..types import TransitionBatch
from .bag import BagReadReport, read_bag
from .live import commands_from_efforts, live_episode_marks  # noqa: F401 - their old import path

__all__ = ["AlignmentConfig", "AlignmentReport", "align", "bag_to_dataset", "messages_to_streams"]

CLOCK_STEP = "clock_step"
STATE_REASONS = (
    "duplicate_state", "missing_joint", "missing_position", "missing_velocity", "malformed_state",
    "nonfinite_state",
)
COMMAND_REASONS = ("nonfinite_command", "wrong_command_length", "clock_step_command")
INTERVAL_REASONS = ("episode_boundary", "gap", "bad_dt", "no_command", "stale_command", CLOCK_STEP)


@dataclass(frozen=True)
class AlignmentConfig:
    state_topic: str = "/joint_states"
    command_topic: str = "/effort_controller/commands"
    episode_topic: str = "/data_logger/episode"
    joint_names: tuple[str, ...] | None = None  # state joints, in this order (default: first JointState's order)
    command_names: tuple[str, ...] | None = None  # command columns (default: joint names if lengths match, else u0..)
    max_command_age: float = 0.5  # s; a held command older than this at t_{k+1} -> 'stale_command'
    gap_factor: float = 3.0  # interval dt > gap_factor x median dt -> gap (<= 0 disables)
    split_on_drop: bool = False  # also start a new episode after every lost candidate transition
    clock_step_tolerance: float = 0.001  # s; log time going back more than this in recording order = clock step

    def __post_init__(self) -> None:
        for name in ("joint_names", "command_names"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str):
                    raise ValueError(f"AlignmentConfig.{name} must be a sequence of names, not a string")
                value = tuple(str(v) for v in value)
                if len(set(value)) != len(value):
                    raise ValueError(f"AlignmentConfig.{name} has duplicates: {value}")
                object.__setattr__(self, name, value)
        if self.max_command_age < 0:
            raise ValueError("AlignmentConfig.max_command_age must be >= 0")
        if not self.clock_step_tolerance >= 0:
            raise ValueError("AlignmentConfig.clock_step_tolerance must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("joint_names", "command_names"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


@dataclass
class AlignmentReport:
    n_states: int = 0
    n_commands: int = 0
    n_transitions: int = 0
    n_episodes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> dropped items (see module doc)
    notes: list[str] = field(default_factory=list)
    lost_transitions: dict[str, int] = field(default_factory=dict)  # reason -> candidates lost
    n_candidates: int = 0  # consecutive distinct states (n_states - duplicates - 1)
    n_markers: int = 0
    n_held: int = 0  # transitions whose action is a held (zero-order hold) command
    warnings: list[str] = field(default_factory=list)  # data problems a user must see (also in the table)

    def table(self) -> str:
        """A readable summary table."""
        lines = [
            f"alignment: {self.n_states} states, {self.n_commands} commands, {self.n_markers} episode markers"
            f" -> {self.n_transitions} transitions in {self.n_episodes} episodes"
            f" ({self.n_held} with a held command)",
        ]
        reasons = [r for r in (*STATE_REASONS, *COMMAND_REASONS, *INTERVAL_REASONS)
                   if self.dropped.get(r) or self.lost_transitions.get(r)]
        reasons += sorted((set(self.dropped) | set(self.lost_transitions)) - set(reasons))
        if reasons:
            w = max(len(r) for r in reasons + ["reason"])
            lines.append(f"  {'reason':<{w}}  {'dropped':>8}  {'unit':<11}  {'transitions lost':>16}")
            for r in reasons:
                unit = "states" if r in STATE_REASONS else "commands" if r in COMMAND_REASONS else "transitions"
                lost = self.lost_transitions.get(r, 0)
                lines.append(f"  {r:<{w}}  {self.dropped.get(r, 0):>8}  {unit:<11}  {lost if r != 'duplicate_state' else '-':>16}")
        total_lost = sum(self.lost_transitions.values())
        lines.append(
            f"  candidate transitions (consecutive distinct states): {self.n_candidates}"
            f" = {self.n_transitions} kept + {total_lost} lost"
        )
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ---------------------------------------------------------------------------------- helpers
def _state_row(names: Sequence[str], pos: Any, vel: Any, joint_names: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    if any(j not in index for j in joint_names):
        return None, "missing_joint"
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    vel = np.asarray(vel, dtype=np.float64).reshape(-1)
    if pos.size == 0:
        return None, "missing_position"
    if vel.size == 0:
        return None, "missing_velocity"
    if pos.size != len(names) or vel.size != len(names):
        return None, "malformed_state"
    sel = [index[j] for j in joint_names]
    x = np.concatenate([pos[sel], vel[sel]])
    if not np.all(np.isfinite(x)):
        return None, "nonfinite_state"
    return x, None


def _state_names(joint_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{j}/position" for j in joint_names) + tuple(f"{j}/velocity" for j in joint_names)


# ---------------------------------------------------------------------------------- align
def _describe_lengths(lengths: Counter) -> str:
    if len(lengths) == 1:
        (n, c), = lengths.items()
        return f"{n} values (all {c} commands)"
    return "lengths " + ", ".join(f"{n} ({c} commands)" for n, c in sorted(lengths.items()))


def _resolve_names(
    states: Sequence[tuple], commands: Sequence[tuple], config: AlignmentConfig
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(state joint names, command names) for these streams; ValueError if no command has a length
    the robot can take (see 'Command length' in the module docstring)."""
    joint_names = config.joint_names
    if joint_names is None:
        first = min((s for s in states if len(s[2])), key=lambda s: int(s[0]), default=None)
        joint_names = tuple(str(n) for n in first[2]) if first is not None else ()
        if len(set(joint_names)) != len(joint_names):
            raise ValueError(f"align: duplicate joint names in the first JointState: {joint_names}")
    nj = len(joint_names)
    lengths = Counter(int(np.size(c[1])) for c in commands)
    if config.command_names is not None:
        command_names = config.command_names
        if lengths and not lengths[len(command_names)]:
            raise ValueError(
                f"{config.command_topic}: the commands have {_describe_lengths(lengths)} but the robot has "
                f"{len(command_names)} command joints {list(command_names)}; wrong topic or wrong robot?")
        return joint_names, command_names
    if not lengths:
        nu = nj
    elif nj and lengths[nj]:
        nu = nj
    else:
        valid = {n: c for n, c in lengths.items() if 1 <= n <= nj} if nj else dict(lengths)
        if not valid:
            raise ValueError(
                f"{config.command_topic}: the commands have {_describe_lengths(lengths)} but the states have "
                f"{nj} joints {list(joint_names)}, so the robot has at most {nj} command joints; wrong topic, "
                "or give the robot (--robot) to name its command joints")
        nu = max(sorted(valid), key=lambda n: valid[n])
    return joint_names, (tuple(joint_names) if nu == nj else tuple(f"u{i}" for i in range(nu)))


def _clock_segments(states: Sequence[tuple], tolerance_ns: int) -> tuple[list[int], float]:
    """Recording-order positions (seq) where a new clock segment starts, and the largest step (s)."""
    starts: list[int] = []
    biggest = 0.0
    run_max: int | None = None
    for st in sorted(states, key=lambda s: s[5]):
        t = int(st[0])
        if run_max is not None and t < run_max - tolerance_ns:
            starts.append(st[5])
            biggest = max(biggest, (run_max - t) / 1e9)
            run_max = t
        else:
            run_max = t if run_max is None else max(run_max, t)
    return starts, biggest


def align(
    states: Sequence[tuple],
    commands: Sequence[tuple],
    episode_marks: Sequence[Any],
    config: AlignmentConfig = AlignmentConfig(),
) -> tuple[TransitionBatch, AlignmentReport]:
    """Pair states and commands into transitions (see the module docstring for the exact rules).

    states: (log_time_ns, stamp_ns, names, positions, velocities[, seq]); commands:
    (log_time_ns, values[, seq]); episode_marks: log_time_ns or (log_time_ns, seq). ``seq`` is the
    recording order (any increasing integers); given for every item, clock steps backwards are
    detected. Without it the inputs need not be sorted.
    Raises ValueError if the command length never fits the robot (see 'Command length').
    """
    joint_names, command_names = _resolve_names(states, commands, config)
    cfg = dataclasses.replace(config, joint_names=joint_names, command_names=command_names)
    has_seq = bool(states) and all(len(s) > 5 for s in states) and all(len(c) > 2 for c in commands) \
        and all(isinstance(m, tuple) for m in episode_marks)
    mark_t = [int(m[0]) if isinstance(m, tuple) else int(m) for m in episode_marks]
    starts, biggest = _clock_segments(states, int(config.clock_step_tolerance * 1e9)) if has_seq else ([], 0.0)
    if not starts:
        batch, rep = _align_segment([s[:5] for s in states], [c[:2] for c in commands], mark_t, cfg)
        return _finish(batch.replace(meta={**batch.meta, "alignment": config.to_dict()}), rep, config, joint_names)

    # ---- split at the clock steps; commands/markers belong to the part they were recorded in
    def part(seq: int) -> int:
        return int(np.searchsorted(starts, seq, side="right"))

    n_parts = len(starts) + 1
    p_states: list[list] = [[] for _ in range(n_parts)]
    p_cmds: list[list] = [[] for _ in range(n_parts)]
    p_marks: list[list] = [[] for _ in range(n_parts)]
    for s in states:
        p_states[part(s[5])].append(s[:5])
    stale_cmds = 0
    run_max: dict[int, int] = {}
    for c in sorted(commands, key=lambda c: c[2]):
        k, t = part(c[2]), int(c[0])
        if k in run_max and t < run_max[k] - config.clock_step_tolerance * 1e9:
            stale_cmds += 1  # logged after the step but recorded before the next state: other clock
            continue
        run_max[k] = max(run_max.get(k, t), t)
        p_cmds[k].append(c[:2])
    for m in episode_marks:
        p_marks[part(m[1])].append(int(m[0]))
    results = [_align_segment(p_states[k], p_cmds[k], p_marks[k], cfg) for k in range(n_parts)]

    rep = AlignmentReport(n_states=len(states), n_commands=len(commands), n_markers=len(episode_marks))
    dropped: Counter = Counter()
    lost: Counter = Counter()
    for _, r in results:
        dropped.update(r.dropped)
        lost.update(r.lost_transitions)
        rep.n_candidates += r.n_candidates
        rep.n_held += r.n_held
        rep.notes += [n for n in r.notes if n not in rep.notes]
    n_steps = n_parts - 1
    rep.n_candidates += n_steps
    dropped[CLOCK_STEP] += n_steps
    lost[CLOCK_STEP] += n_steps
    if stale_cmds:
        dropped["clock_step_command"] += stale_cmds
    rep.dropped = {r: int(n) for r, n in dropped.items() if n}
    rep.lost_transitions = {r: int(n) for r, n in lost.items() if n}
    rep.warnings.append(
        f"log time stepped back {n_steps} time(s) (up to {biggest:.3g} s) while recording (a wall-clock step): "
        f"the recording was split there; {n_steps} transition(s) spanning the step(s) and {stale_cmds} "
        "command(s) logged across them dropped")
    batch = TransitionBatch.concat([b for b, _ in results], renumber_episodes=True)
    largest = max(results, key=lambda br: br[1].n_candidates)[0]
    meta = {**largest.meta, "alignment": config.to_dict(), "clock_steps": n_steps,
            "dt_source": "/".join(sorted({b.meta["dt_source"] for b, _ in results}))}
    batch = batch.replace(meta=meta)
    rep.n_transitions = len(batch)
    rep.n_episodes = int(len(np.unique(batch.episode))) if len(batch) else 0
    assert rep.n_transitions + sum(lost.values()) == rep.n_candidates
    return _finish(batch, rep, config, joint_names)


def _finish(batch: TransitionBatch, rep: AlignmentReport, config: AlignmentConfig,
            joint_names: tuple[str, ...]) -> tuple[TransitionBatch, AlignmentReport]:
    missing = rep.dropped.get("missing_joint")
    if config.joint_names is None and missing:
        rep.notes.append(f"joint_names taken from the first JointState {list(joint_names)}; {missing} states "
                         "lack some of them - set AlignmentConfig.joint_names")
    return batch, rep


def _align_segment(
    states: Sequence[tuple[int, int, Sequence[str], Any, Any]],
    commands: Sequence[tuple[int, Any]],
    episode_marks: Sequence[int],
    config: AlignmentConfig,
) -> tuple[TransitionBatch, AlignmentReport]:
    """:func:`align` for one stretch of monotonic log time; ``config`` names the joints and commands."""
    rep = AlignmentReport(n_states=len(states), n_commands=len(commands), n_markers=len(episode_marks))
    dropped: Counter = Counter()
    lost: Counter = Counter()

    # ---- states
    order = sorted(range(len(states)), key=lambda i: int(states[i][0]))
    joint_names = config.joint_names
    assert joint_names is not None and config.command_names is not None
    nj = len(joint_names)
    s_t: list[int] = []
    s_stamp: list[int] = []
    s_x: list[np.ndarray] = []
    s_reason: list[str | None] = []
    prev_key: tuple | None = None
    nan_row = np.full(2 * nj, np.nan)
    for i in order:
        log_t, stamp, names, pos, vel = states[i]
        stamp = int(stamp)
        key = (stamp, tuple(names), tuple(np.asarray(pos, dtype=float).tolist()),
               tuple(np.asarray(vel, dtype=float).tolist()))
        if stamp != 0 and key == prev_key:
            dropped["duplicate_state"] += 1
            continue
        prev_key = key
        x, reason = _state_row(names, pos, vel, joint_names) if nj else (None, "missing_joint")
        if reason:
            dropped[reason] += 1
        s_t.append(int(log_t))
        s_stamp.append(stamp)
        s_x.append(x if x is not None else nan_row)
        s_reason.append(reason)
    m = len(s_t)
    t = np.asarray(s_t, dtype=np.int64)
    stamp_arr = np.asarray(s_stamp, dtype=np.int64)
    X = np.vstack(s_x) if m else np.zeros((0, 2 * nj))

    # ---- commands
    c_order = sorted(range(len(commands)), key=lambda i: int(commands[i][0]))
    c_vals = [np.asarray(commands[i][1], dtype=np.float64).reshape(-1) for i in c_order]
    command_names = config.command_names
    nu = len(command_names)
    ct = np.asarray([int(commands[i][0]) for i in c_order], dtype=np.int64)
    U = np.full((len(c_vals), nu), np.nan)
    c_reason: list[str | None] = []
    for r, v in enumerate(c_vals):
        if v.size != nu:
            c_reason.append("wrong_command_length")
        elif not np.all(np.isfinite(v)):
            c_reason.append("nonfinite_command")
        else:
            U[r] = v
            c_reason.append(None)
        if c_reason[-1]:
            dropped[c_reason[-1]] += 1

    marks = np.sort(np.asarray([int(x) for x in episode_marks], dtype=np.int64))

    # ---- candidate intervals
    n_cand = max(m - 1, 0)
    rep.n_candidates = n_cand
    log_dt = np.diff(t).astype(np.float64) / 1e9
    stamp_dt = np.diff(stamp_arr).astype(np.float64) / 1e9
    # A simulator's clock starts at 0, so only the later stamp of an interval must be set;
    # unstamped messages (all 0) give stamp_dt == 0 and fall back to log time.
    stamp_ok = (stamp_arr[1:] > 0) & (stamp_dt > 0) if m else np.zeros(0, bool)
    dt = np.where(stamp_ok, stamp_dt, log_dt)
    n_fallback = int(n_cand - np.count_nonzero(stamp_ok))
    if n_cand and n_fallback == n_cand:
        dt_source = "log_time"
        rep.notes.append("header stamps are unset or not increasing: dt taken from log time for all intervals")
    elif n_fallback:
        dt_source = "mixed"
        rep.notes.append(
            f"{n_fallback} of {n_cand} intervals have unset or non-increasing header stamps: dt from log time there"
        )
    else:
        dt_source = "header_stamp"

    positive = dt[dt > 0]
    median_dt = float(np.median(positive)) if positive.size else 0.0
    if config.gap_factor and config.gap_factor > 0 and median_dt > 0:
        is_gap = dt > config.gap_factor * median_dt
    else:
        is_gap = np.zeros(n_cand, dtype=bool)
    if n_cand:
        k_lo = np.searchsorted(marks, t[:-1], side="left")
        k_hi = np.searchsorted(marks, t[1:], side="left")
        has_mark = k_hi > k_lo
        # command event (valid or not) last logged before t_{k+1}
        j_last = np.searchsorted(ct, t[1:], side="left") - 1
    else:
        has_mark = np.zeros(0, dtype=bool)
        j_last = np.zeros(0, dtype=np.int64)
    n_marks_inside = int(np.count_nonzero(has_mark))
    if len(marks) and m and n_marks_inside < len(marks):
        outside = int(np.count_nonzero((marks < t[0]) | (marks >= t[-1])))
        if outside:
            rep.notes.append(f"{outside} episode markers lie outside the state time range (ignored)")

    keep_k: list[int] = []
    keep_j: list[int] = []
    keep_ep: list[int] = []
    episode = 0
    for k in range(n_cand):
        reason: str | None = s_reason[k] or s_reason[k + 1]
        if reason is None and has_mark[k]:
            reason = "episode_boundary"
            dropped[reason] += 1
        if reason is None and is_gap[k]:
            reason = "gap"
            dropped[reason] += 1
        if reason is None and not dt[k] > 0:
            reason = "bad_dt"
            dropped[reason] += 1
        j = int(j_last[k])
        if reason is None:
            if j < 0:
                reason = "no_command"
                dropped[reason] += 1
            elif c_reason[j] is not None:
                reason = c_reason[j]
            elif ct[j] < t[k]:
                if (t[k + 1] - ct[j]) / 1e9 > config.max_command_age:
                    reason = "stale_command"
                    dropped[reason] += 1
                else:
                    rep.n_held += 1
        if has_mark[k] or is_gap[k]:
            episode += 1  # the new episode starts at state k+1
        if reason is not None:
            lost[reason] += 1
            if config.split_on_drop and not (has_mark[k] or is_gap[k]):
                episode += 1
            continue
        keep_k.append(k)
        keep_j.append(j)
        keep_ep.append(episode)

    kk = np.asarray(keep_k, dtype=np.int64)
    jj = np.asarray(keep_j, dtype=np.int64)
    ep_raw = np.asarray(keep_ep, dtype=np.int64)
    _, ep = np.unique(ep_raw, return_inverse=True) if ep_raw.size else (None, ep_raw)
    ep = np.asarray(ep, dtype=np.int64).reshape(-1)

    rep.n_transitions = int(kk.size)
    rep.n_episodes = int(len(np.unique(ep))) if ep.size else 0
    rep.dropped = {r: int(n) for r, n in dropped.items() if n}
    rep.lost_transitions = {r: int(n) for r, n in lost.items() if n}
    if nj == 0:
        rep.notes.append("no joint names (no JointState with names and no config.joint_names): no transitions")
    if median_dt > 0:
        rep.notes.append(f"median state interval {median_dt * 1e3:.3g} ms ({dt_source})")
    assert rep.n_transitions + sum(lost.values()) == n_cand

    meta = {
        "joint_names": list(joint_names),
        "command_names": list(command_names),
        "dt_source": dt_source,
        "median_dt": median_dt,
        "time": "absolute log time of x_t, seconds since the UNIX epoch",
        "alignment": config.to_dict(),
    }
    batch = TransitionBatch(
        states=X[kk] if kk.size else np.zeros((0, 2 * nj)),
        actions=U[jj] if kk.size else np.zeros((0, nu)),
        next_states=X[kk + 1] if kk.size else np.zeros((0, 2 * nj)),
        dt=dt[kk] if kk.size else np.zeros(0),
        time=t[kk] / 1e9 if kk.size else np.zeros(0),
        episode=ep,
        state_names=_state_names(joint_names),
        action_names=tuple(command_names),
        meta=meta,
    )
    return batch, rep


# ---------------------------------------------------------------------------------- bags
def messages_to_streams(messages: Sequence[Any], config: AlignmentConfig = AlignmentConfig()) -> tuple[list, list, list]:
    """Split BagMessages into the (states, commands, episode_marks) inputs of :func:`align`, each
    with the message's recording order (``BagMessage.seq``) so clock steps are detected."""
    states: list = []
    commands: list = []
    marks: list = []
    for bm in messages:
        if bm.topic == config.state_topic:
            msg = bm.msg
            if not all(hasattr(msg, a) for a in ("header", "name", "position", "velocity")):
                raise ValueError(f"{config.state_topic}: expected sensor_msgs/msg/JointState messages, got {bm.msgtype}")
            stamp = msg.header.stamp
            states.append((bm.log_time_ns, int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), list(msg.name),
                           msg.position, msg.velocity, bm.seq))
        elif bm.topic == config.command_topic:
            if not hasattr(bm.msg, "data"):
                raise ValueError(f"{config.command_topic}: expected std_msgs/msg/Float64MultiArray, got {bm.msgtype}")
            commands.append((bm.log_time_ns, bm.msg.data, bm.seq))
        elif bm.topic == config.episode_topic:
            marks.append((bm.log_time_ns, bm.seq))
    return states, commands, marks


def bag_to_dataset(paths: Any, config: AlignmentConfig = AlignmentConfig()) -> tuple[TransitionBatch, AlignmentReport, BagReadReport]:
    """Read bags (see :func:`read_bag`) and align them. A damaged bag contributes what was readable;
    its damage is in the BagReadReport, repeated in the alignment warnings and in ``batch.meta``
    (``bags_complete``; ``bag_damage``: one dict per damaged place: file, offset, what, messages_lost).
    Raises BagError (unreadable bags) or ValueError (commands that never fit the robot)."""
    topics = [config.state_topic, config.command_topic, config.episode_topic]
    messages, bag_report = read_bag(paths, topics=topics)
    states, commands, marks = messages_to_streams(messages, config)
    batch, rep = align(states, commands, marks, config)
    for d in bag_report.damage:
        rep.warnings.append(f"bag damage: {d}")
    if not states:
        rep.notes.append(f"no messages on {config.state_topic} (available topics: {sorted(bag_report.topics)})")
    meta = dict(batch.meta)
    meta.update(source_bags=list(bag_report.paths), bags_complete=bag_report.complete, bag_damage=[d.to_dict() for d in bag_report.damage])
    return batch.replace(meta=meta), rep, bag_report
