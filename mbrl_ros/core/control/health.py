"""The controller's health in one line: the level and message of its /diagnostics status.

:func:`controller_health` is a pure function of what the controller did since its last
report, so the rule "OK only while it really controls" is unit-tested without DDS:

* ERROR: a latched fault; the model is unusable (``replan_failure_limit`` replans failed in
  a row); the planning worker failed (died, hung, could not start) more than
  ``worker_failure_limit`` times within ``worker_failure_window`` seconds.
* WARN: the control step held (safe hold instead of the policy's command) for any reason
  other than having no target, in any step since the last report; no control step at all
  since then (no joint states); no model yet.
* OK: controlling, inactive, or waiting for a target.

:class:`RecentEvents` counts events in a sliding time window (worker failures here,
implausible joint states in :mod:`mbrl_ros.core.control.plausibility`).
"""
from __future__ import annotations

from collections import deque
from typing import Mapping


# The levels of diagnostic_msgs/DiagnosticStatus (bytes 0, 1, 2), so the node passes them on.
OK, WARN, ERROR = 0, 1, 2


class RecentEvents:
    """Times of events within the last ``window`` seconds (any monotonic clock).

    Args:
        window: length of the window [s]; 0 or less: nothing is kept (count is 0).
    """

    def __init__(self, window: float):
        self.window = float(window)
        self._times: deque[float] = deque()

    def add(self, now: float, n: int = 1) -> None:
        """Record ``n`` events at time ``now`` [s]."""
        if self.window > 0:
            self._times.extend([now] * max(0, int(n)))
        self._expire(now)

    def remove_last(self, n: int) -> None:
        """Forget the ``n`` newest events (they turned out to be legitimate)."""
        for _ in range(min(max(0, int(n)), len(self._times))):
            self._times.pop()

    def count(self, now: float) -> int:
        """Events within (now - window, now]."""
        self._expire(now)
        return len(self._times)

    def clear(self) -> None:
        self._times.clear()

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()


def controller_health(**status) -> tuple[int, str]:
    """Level (OK/WARN/ERROR) and one-line message of the controller's status (the
    arguments of :func:`_health`; a reason with line breaks is joined into one line)."""
    level, message = _health(**status)
    return level, " ".join(message.split())


def _health(*, active: bool, fault: str | None, model_ready: bool,
                      has_target: bool, holds: Mapping[str, int], steps: int,
                      replan_failures_in_row: int, last_replan_error: str,
                      worker_failures: int, replan_failure_limit: int,
                      worker_failure_limit: int, worker_failure_window: float,
                      exploring: bool = False) -> tuple[int, str]:
    """Level and message of the controller's status.

    Args:
        active: the node is active (commanding).
        fault: the latched fault, or None.
        model_ready: a model is loaded (and a target set).
        has_target: a target is set.
        exploring: without a model, a model-free planner explores (no hold).
        holds: control steps that held since the last report, by hold reason.
        steps: control steps since the last report.
        replan_failures_in_row: replans that failed since the last successful one.
        last_replan_error: the last replan failure's text ('' if none).
        worker_failures: planning-worker failures within ``worker_failure_window`` [s].
        replan_failure_limit: failed replans in a row that make the model unusable.
        worker_failure_limit: worker failures in the window tolerated (more: ERROR).
    """
    if fault:
        return ERROR, f"latched: {fault}"
    if not active:
        return OK, "inactive"
    if worker_failures > worker_failure_limit:
        return ERROR, (f"planning worker failed {worker_failures} times in "
                       f"{worker_failure_window:g} s: holding")
    if replan_failures_in_row >= replan_failure_limit:
        return ERROR, (f"model unusable: {replan_failures_in_row} replans failed in a row"
                       + (f" ({last_replan_error})" if last_replan_error else ""))
    if not has_target:
        return OK, "waiting for a target"
    if not model_ready and not exploring:
        return WARN, "holding: no model"
    if steps <= 0:
        return WARN, "no control step since the last report: no joint states"
    held = {reason: n for reason, n in holds.items() if n > 0}
    if held:
        reason = max(held, key=held.get)
        total = sum(held.values())
        return WARN, f"holding: {reason} ({total} of {max(steps, total)} control steps)"
    return OK, "controlling" if model_ready else "exploring: no model yet"
