"""``mbrl-ros bringup``: start a bring-up plan without the ROS 2 launch framework.

Starts the processes of :func:`mbrl_ros.bringup.plan` with the same command lines the
launch files give them, each in its own process group; drives lifecycle transitions
through each node's ``change_state`` service; forwards SIGINT/SIGTERM to the process
groups. Exit status: 0 after a requested stop (Ctrl-C, SIGTERM); 1 when a node exits on
its own (unless it respawns) or a lifecycle transition fails, naming the node; 2 for
invalid arguments. A plan's job (the GPS trainer) ends the run when it exits: 0 when it
succeeded (the other nodes are then stopped), else 1 naming it. One line per node start,
transition and stop; the nodes' own output goes to the terminal as it does under
``ros2 launch``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mbrl_ros.bringup import (RESPAWN_DELAY, Plan, Process, executable_path, parse_assignments,
                              plan, share_dir)

TRANSITION_TIMEOUT = 60.0     # s for a node to offer change_state and answer a transition
STOP_TIMEOUT = 10.0           # s for the nodes to exit after the signal, then SIGKILL


class NodeFailure(RuntimeError):
    """A node exited or refused a lifecycle transition; the message names it."""


def say(text: str) -> None:
    print(f"[bringup] {text}", flush=True)


@dataclass
class Child:
    process: Process
    command: list[str]
    popen: subprocess.Popen | None = None
    restart_at: float | None = None       # respawn pending (monotonic time)

    def start(self) -> None:
        self.popen = subprocess.Popen(self.command, start_new_session=True)
        self.restart_at = None
        say(f"started {self.process.full_name} ({self.process.executable}, pid "
            f"{self.popen.pid})")

    def exit_message(self) -> str:
        return (f"{self.process.full_name} ({self.process.executable}) exited with code "
                f"{self.popen.returncode}")

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass


class Lifecycle:
    """A small rclpy client for the nodes' ``change_state`` services."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        self._rclpy = rclpy
        self.context = rclpy.Context()
        # The runner handles SIGINT/SIGTERM itself (forwarding them to the nodes).
        rclpy.init(args=[], context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"mbrl_bringup_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def transition(self, child: Child, transition: str, alive, stopping) -> None:
        """Request ``transition`` of ``child``; raise :class:`NodeFailure` if it is refused,
        the node exits meanwhile or does not answer within TRANSITION_TIMEOUT."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState
        name = child.process.full_name
        end = time.monotonic() + TRANSITION_TIMEOUT
        ask = dict(end=end, alive=alive, stopping=stopping, child=child, what=transition)
        # get_state first, re-asked until answered: a request sent while the graph still
        # lists the service of a process that just died (respawn) reaches nobody, and a
        # change_state must not be sent twice.
        state = self._ask(GetState, f"{name}/get_state", GetState.Request(), retry=1.0, **ask)
        if state is None:
            return                                   # stopping
        goal = {"configure": "inactive", "activate": "active"}[transition]
        if state.current_state.label != goal:
            request = ChangeState.Request()
            request.transition.id = {"configure": Transition.TRANSITION_CONFIGURE,
                                     "activate": Transition.TRANSITION_ACTIVATE}[transition]
            result = self._ask(ChangeState, f"{name}/change_state", request, retry=None, **ask)
            if result is None:
                return
            if not result.success:
                raise NodeFailure(f"{name}: {transition} failed (see its log above)")
        say(f"{name}: {transition}d")

    def _ask(self, srv_type, service: str, request, *, retry, end, alive, stopping, child,
             what):
        """Call ``service``; re-send after ``retry`` s without an answer (None: never).
        Returns the response, or None when stopping."""
        client = self.node.create_client(srv_type, service)
        try:
            future, sent = None, 0.0
            while time.monotonic() < end:
                if stopping():
                    return None
                if not alive():
                    raise NodeFailure(child.exit_message())
                now = time.monotonic()
                if client.service_is_ready() and (
                        future is None or retry is not None and now - sent > retry):
                    if future is not None:
                        client.remove_pending_request(future)
                    future, sent = client.call_async(request), now
                self.executor.spin_once(timeout_sec=0.05)
                if future is not None and future.done():
                    return future.result()
            raise NodeFailure(f"{child.process.full_name}: no answer to {what} within "
                              f"{TRANSITION_TIMEOUT:g} s")
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)


class Runner:
    def __init__(self, the_plan: Plan, workdir: str):
        self.plan = the_plan
        self.children = []
        for p in the_plan.processes:
            overrides = Path(workdir) / f"{p.name}.yaml"
            overrides.write_text(p.overrides_yaml())
            self.children.append(Child(p, [executable_path(p.executable), "--ros-args",
                                           *p.ros_arguments(str(overrides))]))
        self.stop_signal: int | None = None
        self.finished = False                 # the plan's job exited successfully
        self.lifecycle: Lifecycle | None = None

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            say(f"{signal.Signals(signum).name}: stopping")

    def _transitions(self, child: Child) -> None:
        if not child.process.transitions:
            return
        if self.lifecycle is None:
            self.lifecycle = Lifecycle()
        for t in child.process.transitions:
            self.lifecycle.transition(child, t, alive=lambda: child.popen.poll() is None,
                                      stopping=lambda: self.stop_signal is not None)

    def _check(self) -> None:
        """Respawn or fail on children that exited."""
        now = time.monotonic()
        for child in self.children:
            code = child.popen.poll()
            if code is None or self.stop_signal is not None:
                continue
            if child.process.job and code == 0:
                say(f"{child.process.full_name} ({child.process.executable}) finished")
                self.finished = True
                return
            if not child.process.respawn:
                raise NodeFailure(child.exit_message())
            if child.restart_at is None:
                say(f"{child.exit_message()}; restarting in {RESPAWN_DELAY:g} s")
                child.restart_at = now + RESPAWN_DELAY
            elif now >= child.restart_at:
                child.start()
                self._transitions(child)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            for child in self.children:
                if self.stop_signal is None:
                    child.start()
            for child in self.children:
                if self.stop_signal is None:
                    self._transitions(child)
            while self.stop_signal is None and not self.finished:
                self._check()
                time.sleep(0.1)
        except NodeFailure as e:
            say(f"error: {e}; shutting down")
            code = 1
        finally:
            if not self._stop(self.stop_signal or signal.SIGINT):
                code = 1
            if self.lifecycle is not None:
                self.lifecycle.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return code

    def _stop(self, sig: int) -> bool:
        """Signal the running nodes and wait; False if one had to be killed."""
        clean = True
        running = [c for c in self.children if c.popen is not None and c.popen.poll() is None]
        for child in reversed(running):   # the controller first, the simulator last
            child.signal(sig)
        end = time.monotonic() + STOP_TIMEOUT
        for child in reversed(running):
            try:
                child.popen.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.process.full_name} did not stop within {STOP_TIMEOUT:g} s: killed")
                child.signal(signal.SIGKILL)
                child.popen.wait()
                clean = False
            say(f"stopped {child.process.full_name} (exit {child.popen.returncode})")
        return clean


def run(kind: str, assignments: list[str], dry_run: bool = False) -> int:
    """``mbrl-ros bringup KIND name:=value ...``; returns the exit status."""
    the_plan = plan(kind, parse_assignments(assignments), share_dir())
    if dry_run:
        print(the_plan.describe())
        return 0
    with tempfile.TemporaryDirectory(prefix="mbrl_bringup_") as workdir:
        return Runner(the_plan, workdir).run()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
