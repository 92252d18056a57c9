"""Fixtures for tests that run real nodes over real DDS.

Every test gets its own ROS_DOMAIN_ID and localhost-only discovery, node processes start
in their own process group (ended in teardown, SIGKILL if they do not stop), and the test
talks to them through a probe node in its own rclpy context. Waits are on conditions
(message received, service answered), never fixed sleeps.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"

import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

BIN = Path(sys.executable).parent
START = 90.0  # s: a freshly started process's first message or answer on a loaded machine


@pytest.fixture
def domain_id():
    """A ROS domain no other run uses while the test runs: 1..50 are the tests' (in-process
    CLI runs use 51..80 and benchmarks 81..101, all below 102, outside Linux's ephemeral
    ports), each claimed with an exclusive lock (:mod:`mbrl_ros.ros.domains`) held until
    the test's nodes are gone. A hash of the test's id picked it before: two suites at once
    on one machine (a developer's and CI's) could meet on a domain, and one test's arm2
    simulator then drove another test's controller (seen: "arm moved 3.467 rad")."""
    from mbrl_ros.ros.domains import claim_domain

    lock = claim_domain(range(1, 51))
    try:
        yield lock.domain
    finally:
        lock.release()


@pytest.fixture
def ros_env(domain_id) -> dict:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    return env


class NodeProcess:
    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.cmd, self.log_path = cmd, log
        self._log = open(log, "wb")
        # In the test's own folder: whatever a node writes to relative paths (a fitter's
        # default store_dir 'models', a logger's 'bags') stays out of the checkout.
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=log.parent)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def start_node(ros_env, tmp_path):
    """start_node('sim_node', {'model': 'arm2'}) -> NodeProcess; all stopped at teardown."""
    procs: list[NodeProcess] = []

    def _start(executable: str, params: dict | None = None, params_file_list=(),
               name: str | None = None) -> NodeProcess:
        cmd = [str(BIN / executable), "--ros-args"]
        for f in params_file_list:
            cmd += ["--params-file", str(f)]
        for k, v in (params or {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif v == "":
                v = "''"                  # rcl needs a YAML value for an empty string
            elif isinstance(v, (list, tuple)):
                v = "[" + ",".join(repr(x) if isinstance(x, str) else str(x) for x in v) + "]"
            cmd += ["-p", f"{k}:={v}"]
        p = NodeProcess(cmd, ros_env, tmp_path / f"{name or executable}_{len(procs)}.log")
        procs.append(p)
        return p

    yield _start
    for p in procs:
        p.stop()


class Probe:
    """A test-side node: subscribe, publish, call services, wait on conditions."""

    def __init__(self, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, cond, timeout: float, what: str = "condition", explain=None) -> None:
        """Spin until ``cond()``; on timeout fail naming ``what`` plus ``explain()`` (e.g.
        the processes' output and diagnostics: a timeout in CI must say why)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)
            if cond():
                return
        detail = f"\n{explain()}" if explain is not None else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")

    def spin_until_progressing(self, cond, progress, stall: float, what: str = "condition",
                               limit: float = 3600.0) -> None:
        """Spin until ``cond()``, failing when ``progress()`` (e.g. states received) has not
        changed for ``stall`` s: the guard of a lockstep run, whose pace is the CPU time the
        machine gives it, not a wall-clock budget (``limit`` s bounds it all the same)."""
        end = time.monotonic() + limit
        last, since = progress(), time.monotonic()
        while not cond():
            now = time.monotonic()
            if now - since > stall or now > end:
                raise AssertionError(f"no progress for {now - since:.0f} s (or over {limit:g} "
                                     f"s in all) waiting for {what}")
            self.executor.spin_once(timeout_sec=0.02)
            p = progress()
            if p != last:
                last, since = p, time.monotonic()

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def collect(self, msg_type, topic: str, qos=1000) -> list:
        """Every message received on ``topic``, in order. The reader keeps up to 1000
        messages the probe has not taken yet: with the default depth of 10, a probe starved
        for 0.1 s (a busy machine) lost 100 Hz messages, and consecutive commands in the
        list were no longer consecutive commands of the node (a "rate-limit violation" of
        3 x the per-command bound)."""
        got: list = []
        self.node.create_subscription(msg_type, topic, got.append, qos)
        return got

    def activate(self, node: str = "/controller") -> None:
        """Configure and activate a lifecycle node, as ``mbrl-ros bringup`` does: get_state
        until answered first (a request sent the moment the service shows up in the graph
        may reach nobody), then the two transitions."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        for _ in range(12):
            try:
                self.call(GetState, f"{node}/get_state", timeout=10)
                break
            except AssertionError:
                continue
        for t in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            req = ChangeState.Request()
            req.transition.id = t
            assert self.call(ChangeState, f"{node}/change_state", req, timeout=60).success

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0,
             resend: float | None = None):
        """Call a service; ``timeout`` covers discovery and the answer each (30 s: under two
        CPU hogs beside the suite a node's first answer took over 10 s).

        ``resend`` [s]: send the request again while it is unanswered that long -- only for
        idempotent requests (a parameter set). A server can answer before it has matched
        the client's reply reader; rmw_fastrtps then drops the answer ("failed to send
        response (timeout)" in the node's log: seen once, a model fitter's set_parameters
        at start), and the call would wait for nothing."""
        client = self.node.create_client(srv_type, name)
        self.spin_until(client.service_is_ready, timeout, f"service {name}")
        request = request or srv_type.Request()
        end = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            wait = min(resend, end - time.monotonic()) if resend else end - time.monotonic()
            try:
                self.spin_until(future.done, max(wait, 0.0), f"answer from {name}")
                return future.result()
            except AssertionError:
                if not resend or time.monotonic() >= end:
                    raise
                client.remove_pending_request(future)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def probe(domain_id):
    p = Probe(domain_id)
    yield p
    p.close()


def diagnostics_values(msgs, name: str) -> dict:
    """Key/values of the newest DiagnosticStatus called ``name`` in received arrays."""
    for arr in reversed(msgs):
        for st in arr.status:
            if st.name == name:
                return {kv.key: kv.value for kv in st.values}
    return {}
