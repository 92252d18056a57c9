"""What the controller node publishes besides commands: the plan
(``~/planned_trajectory``, ``~/planned_path``) and ``/diagnostics``
(:class:`ControllerOutputs`, part of :class:`mbrl_ros.ros.controller.Controller`; the
health verdict is :func:`mbrl_ros.core.control.health.controller_health`).
"""
from __future__ import annotations

import sys
import time

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from mbrl_ros.core.control.health import controller_health
from mbrl_ros.ros.conversions import diagnostic_name

__all__ = ["ControllerOutputs"]


class ControllerOutputs:
    """Plan and diagnostics publishing of the controller node (uses its publishers,
    ``mpc``, ``actuator``, ``robot``, counters and timing buffers)."""

    def _publish_plan(self, t0: float) -> None:
        nominal = self.mpc.nominal_states()
        if nominal is None:
            return
        xs, us = nominal
        n = self.robot.n_joints
        dt = self.mpc.spec.dt
        traj = JointTrajectory()
        traj.header.stamp = self.get_clock().now().to_msg()
        traj.joint_names = list(self.robot.joint_names)
        for k in range(len(us)):
            tk = (k + 1) * dt
            pt = JointTrajectoryPoint(positions=xs[k + 1, :n].tolist(),
                                      velocities=xs[k + 1, n:].tolist(),
                                      effort=us[k].tolist())
            pt.time_from_start = Duration(sec=int(tk), nanosec=int((tk % 1) * 1e9))
            traj.points.append(pt)
        self.plan_pub.publish(traj)
        if self.robot.has_ee and self.path_pub.get_subscription_count() > 0:
            marker = Marker(type=Marker.LINE_STRIP, action=Marker.ADD, ns="planned_path", id=0)
            marker.header.frame_id = "world"
            marker.scale.x = 0.005
            marker.color.r, marker.color.g, marker.color.a = 0.1, 0.8, 1.0
            for x in xs:
                p = self.robot.ee_position(x[:n])
                marker.points.append(Point(x=float(p[0]), y=float(p[1]), z=float(p[2])))
            self.path_pub.publish(MarkerArray(markers=[marker]))

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        mpc = self.mpc
        now = time.monotonic()
        if mpc is not None:           # planning-worker failures (none in-process)
            failures = mpc.counters["failures"]
            self._worker_failures.add(now, failures - self._worker_failures_seen)
            self._worker_failures_seen = failures
        # What happened since the last report: holds by reason, commands sent.
        act = self.actuator
        holds, commands = dict(act.holds), self.counters["commands"]
        seen_holds, seen_commands = self._reported
        self._reported = (holds, commands)
        s = self.settings
        level, message = controller_health(
            active=self.active, fault=act.fault,
            model_ready=self.mpc is not None and self.mpc.spec is not None,
            exploring=self.mpc is not None and self.mpc.explorer() is not None,
            has_target=self.mpc is not None and self.mpc.target_q is not None,
            holds={k: n - seen_holds.get(k, 0) for k, n in holds.items()},
            steps=commands - seen_commands,
            replan_failures_in_row=self._replan_failures_in_row,
            last_replan_error=self._last_replan_error,
            worker_failures=self._worker_failures.count(now),
            replan_failure_limit=s.replan_failure_limit,
            worker_failure_limit=s.worker_failure_limit,
            worker_failure_window=s.worker_failure_window)
        st = DiagnosticStatus(name=diagnostic_name(self), level=bytes([level]),
                              message=message)
        periods = np.asarray(self._periods) * 1e3
        dev = np.abs(periods - 1e3 / self.settings.control_rate)
        late = np.asarray(self._late) * 1e3
        # list(deque) copies under the GIL: the planning thread appends concurrently.
        solves = np.asarray(list(self._solve_times)) * 1e3
        latency = list(self._plan_latency)
        vals = dict(self.counters)
        vals.update(act.counters)           # bad_states, holds, nonfinite_blocked
        plausibility = act.plausibility.counters
        vals.update({
            "implausible_states": plausibility["implausible"],
            "reanchors": plausibility["reanchors"],
            "replan_failures_in_row": self._replan_failures_in_row,
            "plan_process_failures_recent": self._worker_failures.count(now)})
        vals.update({
            "planning": "sync" if self.settings.plan_mode == "sync"
            else self.settings.planning,
            "plan_process_pid": (mpc.pid or 0) if mpc else 0,
            "plan_process_starts": mpc.counters["starts"] if mpc else 0,
            "plan_process_failures": mpc.counters["failures"] if mpc else 0,
            # what runs the control step; the control thread's scheduling policy
            "control_loop": self._control_clock,
            "control_sched": self._control_sched if self._control_clock == "thread" else "",
            "gil_switch_interval_ms": f"{sys.getswitchinterval() * 1e3:g}"})
        vals.update({
            "active_planner": self.mpc.active if self.mpc else "",
            # the effort rate the planners plan within (0: none; plan_within_rate)
            "planned_effort_rate": f"{self.mpc.effort_rate:g}" if self.mpc else "",
            "model_version": self.mpc.model_version if self.mpc else 0,
            "solve_ms_median": f"{np.median(solves):.3f}" if solves.size else "",
            "solve_ms_p99": f"{np.percentile(solves, 99):.3f}" if solves.size else "",
            # latency compensation: plan latency (state arrival -> policy in use) and the
            # model steps the last plan was started ahead of its state
            "plan_latency_ms_median": f"{np.median(latency) * 1e3:.3f}" if latency else "",
            "lookahead_steps": self._lookahead_steps,
            "period_ms_median": f"{np.median(periods):.3f}" if periods.size else "",
            "period_ms_p99": f"{np.percentile(periods, 99):.3f}" if periods.size else "",
            # timer mode: |period - 1/control_rate| and step start - its deadline
            "period_dev_ms_median": f"{np.median(dev):.3f}" if dev.size else "",
            "period_dev_ms_p99": f"{np.percentile(dev, 99):.3f}" if dev.size else "",
            "timer_late_ms_median": f"{np.median(late):.3f}" if late.size else "",
            "timer_late_ms_p99": f"{np.percentile(late, 99):.3f}" if late.size else "",
            "fault": self.fault or ""})
        if self.mpc is not None and self.mpc.stats:
            vals["uncertainty"] = f"{self.mpc.stats.get('uncertainty', 0.0):.4g}"
            vals["fallback"] = str(self.mpc.stats.get("fallback", False))
            vals["exploring"] = str(self.mpc.stats.get("exploring", False))
            vals["planned_model_version"] = self.mpc.stats.get("model_version", "")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in vals.items()]
        arr.status = [st]
        self.diag_pub.publish(arr)
