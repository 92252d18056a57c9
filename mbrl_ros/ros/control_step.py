"""The controller node's control step and what runs it (:class:`ControlStep`, part of
:class:`mbrl_ros.ros.controller.Controller`).

One control step asks the :class:`~mbrl_ros.core.control.actuator.Actuator` for the
command (policy through the safety filter, or a safe hold) and publishes it. It runs on
every joint state (``control_mode: on_state``), or at ``control_rate`` on a control thread
of its own (``control_loop: thread``: absolute deadlines of the monotonic clock, the last
0.3 ms by yielding, SCHED_FIFO if permitted, a short GIL switch interval) or on an rclpy
timer (``executor``; always so with ``use_sim_time``). A watchdog holds on stale states;
leaving ramps the effort to zero within the rate limit.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
from rclpy.duration import Duration
from rclpy.timer import TimerInfo

from mbrl_ros.ros.conversions import command_msg

__all__ = ["ControlStep"]


class ControlStep:
    """Control step, control thread, watchdog and release of the controller node (uses
    its ``settings``, ``safety_settings``, ``actuator``, ``safety``, ``cmd_pub``,
    counters and timing buffers)."""

    def _on_control_timer(self, info: TimerInfo) -> None:
        """The control timer: note how late this call started against its schedule."""
        late = self.get_clock().now().nanoseconds - info.expected_call_time.nanoseconds
        if self.active:
            self._late.append(late * 1e-9)
        self._control_tick()

    # ------------------------------------------------------------ control thread
    def _choose_control_clock(self) -> str:
        """What runs the control step: 'on_state', 'thread' or 'executor' (+ why).

        A control thread sleeps on the monotonic clock; with use_sim_time the control
        period is simulated time, which only the executor timer follows (it waits for
        /clock), so sim time keeps the executor timer."""
        s = self.settings
        if s.control_mode != "timer":
            return "on_state"
        if s.control_loop == "executor":
            return "executor"
        if self.get_parameter("use_sim_time").value:
            self.get_logger().info("use_sim_time: the control step runs on the executor "
                                   "timer (it follows /clock), not on a control thread")
            return "executor (use_sim_time)"
        return "thread"

    def _start_control_thread(self) -> None:
        if self._control_clock != "thread" or self._control_thread is not None:
            return
        if self.settings.gil_switch_interval > 0:   # process-wide: restored on stop
            self._saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self.settings.gil_switch_interval,
                                      self._saved_switch_interval))
        self._control_stop.clear()
        self._control_thread = threading.Thread(target=self._control_loop,
                                                name="mbrl_control", daemon=True)
        self._control_thread.start()

    def _stop_control_thread(self) -> None:
        self._control_stop.set()
        thread, self._control_thread = self._control_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        if self._saved_switch_interval is not None:
            sys.setswitchinterval(self._saved_switch_interval)
            self._saved_switch_interval = None

    # The last stretch before a deadline (at most a tenth of the period) is waited by
    # yielding, not sleeping: a sleep wakes up to ~0.1 ms late (timer slack, wake-up).
    _SPIN_S = 0.0003

    def _control_loop(self) -> None:
        """The control thread: a control step at every deadline k / control_rate (monotonic
        clock), as long as the node is active. When a step overruns the next deadline,
        that step runs at once (late) and any further deadlines passed are skipped, never
        made up in a burst (as rcl timers do); control_overruns counts the deadlines a step
        overran."""
        self._control_sched = self._raise_priority()
        _set_thread_name(b"mbrl_control")
        period = 1.0 / self.settings.control_rate
        spin = min(self._SPIN_S, 0.1 * period)
        stop = self._control_stop
        deadline = time.monotonic() + period
        while not stop.is_set():
            wait = deadline - time.monotonic() - spin
            if wait > 0 and stop.wait(wait):
                break
            while time.monotonic() < deadline:
                os.sched_yield()                   # releases the GIL
            if stop.is_set():
                break
            start = time.monotonic()
            if self.active:
                self._late.append(start - deadline)
            try:
                self._control_tick()
            except Exception as e:       # the loop must outlive a failing publish
                self.get_logger().error(f"control step raised {e!r}",
                                        throttle_duration_sec=1.0)
            deadline += period
            behind = time.monotonic() - deadline
            if behind > 0:                          # next deadline passed: skip the rest
                missed = int(behind // period)
                deadline += missed * period
                self.counters["control_overruns"] += missed + 1

    def _raise_priority(self) -> str:
        """Ask for SCHED_FIFO for the calling thread (Linux applies it per thread);
        without the permission, stay at normal priority and say so."""
        prio = self.settings.control_priority
        if prio <= 0 or not hasattr(os, "SCHED_FIFO"):
            return "SCHED_OTHER"
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
        except OSError as e:
            return f"SCHED_OTHER (SCHED_FIFO {prio} refused: {e.strerror})"
        return f"SCHED_FIFO {prio}"

    def _control_tick(self) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if self._last_cmd_wall is not None:
            period = now - self._last_cmd_wall
            self._periods.append(period)
            if self.settings.control_mode == "timer" and \
                    period > 1.5 / self.settings.control_rate:
                self.counters["deadline_misses"] += 1
        self._last_cmd_wall = now
        step = self.actuator.step(now, self._step_dt())
        if step.latched:
            self.get_logger().error(f"{self.actuator.fault}: safe hold until ~/clear_error")
        self._send(step.command)

    def _step_dt(self) -> float:
        """Time the rate limit may spread a change over: the robot time between the last
        two states (on_state; capped at one control period) or the control period."""
        nominal = 1.0 / self.settings.control_rate
        state_dt = self.actuator.state_dt
        if self.settings.control_mode == "on_state" and state_dt > 0:
            return min(state_dt, nominal)
        return nominal

    def _watchdog(self) -> None:
        """Stale state: in on_state mode nothing else would command the robot."""
        now = time.monotonic()
        if not self.active or self.actuator.latest[0] is None:
            return
        if self.actuator.stale(now):
            self.counters["stale"] += 1
            self.get_logger().warning(f"no joint state for more than "
                                      f"{self.safety_settings.state_timeout:g} s: safe hold",
                                      throttle_duration_sec=2.0)
            if self.settings.control_mode == "on_state":   # timer mode holds in its tick
                # One control period's change at most, like every other command: two
                # consecutive commands never differ by more than max_effort_rate/control_rate.
                self._send(self.actuator.step(now, min(self._watchdog_period,
                                                       1.0 / self.settings.control_rate)).command)

    def _send(self, u: np.ndarray) -> None:
        """Publish a command (the actuator made it finite and safe)."""
        self.counters["commands"] += 1
        self.cmd_pub.publish(command_msg(u))

    @property
    def fault(self) -> str | None:
        """The latched error, or None."""
        return self.actuator.fault if self.actuator is not None else None

    # How long leaving waits for the command subscribers to acknowledge the final zero.
    RELEASE_ACK_TIMEOUT_S = 2.0

    def _release(self) -> None:
        """Stop commanding cleanly: ramp to zero effort within the rate limit (at most
        0.2 s) and end on an explicit zero, because a forward command controller keeps
        applying the last command it received. The caller has stopped everything else that
        commands (control thread, executor), so the zero is the last command sent; it is
        delivered before this returns: a reliable subscriber that has not acknowledged it
        would otherwise lose it when the node exits right after (SIGINT) and the writer is
        gone -- under load the arm then kept its last full effort."""
        if not hasattr(self, "cmd_pub"):
            return
        dt = 1.0 / self.settings.control_rate
        for _ in range(int(0.2 * self.settings.control_rate)):
            if not np.any(self.safety.last):
                break
            self._send(self.actuator.release_step(dt))
            time.sleep(dt)
        self._send(np.zeros_like(self.safety.last))
        self.safety.reset()
        if not self.cmd_pub.wait_for_all_acked(Duration(seconds=self.RELEASE_ACK_TIMEOUT_S)):
            self.get_logger().error(
                f"the final zero effort command was not acknowledged within "
                f"{self.RELEASE_ACK_TIMEOUT_S:g} s by every subscriber of "
                f"{self.cmd_pub.topic_name}: the robot may keep its last command")


def _set_thread_name(name: bytes) -> None:
    """Name the calling OS thread (top -H, ps -L, /proc/<pid>/task/*/comm)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name[:15], 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass


# rclpy passes TimerInfo to a timer callback whose parameter is annotated with the class
# itself; this module's annotations are strings (from __future__ import annotations).
ControlStep._on_control_timer.__annotations__["info"] = TimerInfo
