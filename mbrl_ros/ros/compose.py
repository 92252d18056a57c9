"""Run several nodes in one process (no launch framework needed): the CLI's record and
demo commands use this.

Simulation runs made by the CLI are fenced off from any robot on the network: they use
their own ROS context on a private domain id with localhost-only discovery, so a
simulated excitation can never reach a real arm's ``/effort_controller/commands``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.parameter import Parameter

from mbrl_ros.ros.data_logger import DataLogger
from mbrl_ros.ros.domains import DomainLock, claim_domain
from mbrl_ros.ros.excitation_node import ExcitationNode
from mbrl_ros.ros.sim_node import SimNode


def _claim_free_domain(candidates: list[int], listen: float = 1.0
                       ) -> tuple[rclpy.Context, int, DomainLock]:
    """A context on a private domain: two demos (or a demo and a record) on one machine
    must not share a domain, or each would take the other's joint states and commands.

    The domain is claimed atomically by a lock held for the run (see
    :mod:`mbrl_ros.ros.domains`: release the returned lock, or exit, to free it); runs that
    do not take such locks (other software, older versions) are kept apart by listening
    for ``listen`` seconds and skipping a domain where any other node shows up (0: no
    listening)."""
    context: rclpy.Context | None = None

    def no_foreign_nodes(domain: int) -> bool:
        nonlocal context
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        if listen <= 0:
            return True
        probe = rclpy.create_node(f"mbrl_domain_probe_{os.getpid()}", context=context)
        end = time.monotonic() + listen
        busy = False
        while not busy and time.monotonic() < end:
            busy = any(name != probe.get_name() for name in probe.get_node_names())
            time.sleep(0.05)
        probe.destroy_node()
        if busy:
            rclpy.try_shutdown(context=context)
        return not busy

    lock = claim_domain(candidates, accept=no_foreign_nodes)
    return context, lock.domain, lock


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT/SIGTERM, where Python handles them, only noted while inside; the yielded
    ``deliver()`` runs the noted signal's own handler (the default SIGINT handler raises
    KeyboardInterrupt) at a point of the caller's choosing. Outside the main thread
    (where handlers cannot be set) nothing is deferred."""
    pending: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: h for sig in (signal.SIGINT, signal.SIGTERM)
               if callable(h := signal.getsignal(sig))}
    for sig in old:
        signal.signal(sig, lambda signum, frame: pending.append(signum))

    def deliver() -> None:
        if pending:
            sig = pending.pop(0)
            pending.clear()
            old[sig](sig, None)
    try:
        yield deliver
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class InProcessSystem:
    """Nodes sharing one private context and executor (single-threaded by default)."""

    def __init__(self, domain_id: int | None = None, threads: int = 1):
        # Read by the middleware at init: keep discovery on this machine.
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        if domain_id is None:
            # 51..80: below 102 (ports outside Linux's ephemeral range) and apart from the
            # ranges the tests (1..50) and benchmarks (81..101) use; never the user's domain.
            current = os.environ.get("ROS_DOMAIN_ID", "0")
            # held until close() (or this process ends): no other run gets this domain
            self.context, self.domain_id, self._domain_lock = _claim_free_domain(
                [d for d in range(51, 81) if str(d) != current])
        else:
            self._domain_lock = None
            self.domain_id = domain_id
            self.context = rclpy.Context()
            rclpy.init(context=self.context, domain_id=self.domain_id)
        # One thread by default: lockstep simulation is sequential anyway, fits run on the
        # fitter's own worker thread, and rclpy's multi-threaded executor's overhead per
        # callback slows lockstep several times (BENCHMARKS.md, "Figures moved out of
        # docstrings (issue 13)").
        self.executor = (SingleThreadedExecutor(context=self.context) if threads == 1 else
                         MultiThreadedExecutor(num_threads=threads, context=self.context))
        self.nodes: list[Any] = []

    def add(self, cls: type, params: dict[str, Any] | None = None):
        overrides = [Parameter(k, value=list(v) if isinstance(v, tuple) else v)
                     for k, v in (params or {}).items()]
        node = cls(context=self.context, parameter_overrides=overrides)
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def spin_until(self, done: Callable[[], bool], timeout: float,
                   tick: Callable[[], None] | None = None) -> bool:
        """Spin until ``done()`` or ``timeout`` wall seconds; ``tick`` runs every pass.

        Ctrl-C (SIGINT, and SIGTERM) raises KeyboardInterrupt between two callbacks, not
        inside one: raised asynchronously it could land in rclpy's C++ bindings while they
        convert a message, which then failed with pybind11's "Unable to convert call
        argument" RuntimeError instead of an interrupt (`mbrl-ros record` exited 2, not 130).
        """
        with _signals_deferred() as deliver:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                self.executor.spin_once(timeout_sec=0.05)
                deliver()
                if tick is not None:
                    tick()
                if done():
                    return True
            return False

    def close(self) -> None:
        for node in reversed(self.nodes):
            finish = getattr(node, "finish", None)
            if finish is not None:
                finish(self.executor)
        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown(context=self.context)
        if self._domain_lock is not None:
            self._domain_lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def record(robot: str, seconds: float, out: Path, *, rate: float = 100.0, episodes: int = 1,
           seed: int = 0, initial_noise: float = 0.05, bag_name: str = "excitation",
           progress: bool = True, timeout_factor: float = 20.0) -> list[Path]:
    """Simulate ``robot`` under the excitation controller in lockstep and record a bag.

    Args:
        robot: shipped model name or MJCF path.
        seconds: simulated interaction time in total, split evenly over ``episodes``.
        out: directory the bag directory is written under.
        rate: control rate [Hz].
        episodes: number of episodes (each starts from the home pose plus noise).
        initial_noise: std of the initial-state noise [rad or m].
        timeout_factor: give up if wall time exceeds ``timeout_factor * seconds + 30``.

    Returns:
        The bag directories written.

    Raises:
        RuntimeError: the nodes did not connect or the run did not finish in time.
    """
    from tqdm import tqdm

    out = Path(out)
    with InProcessSystem() as system:
        sim = system.add(SimNode, {"model": robot, "publish_rate": rate, "lockstep": True,
                                   "seed": seed, "initial_noise": initial_noise,
                                   "diagnostics_rate": 0.0})
        sim.pause()   # nothing may answer a state before we kick the loop exactly once
        system.add(ExcitationNode, {"model": robot, "seed": seed,
                                    "control_period": 1.0 / rate})
        logger = system.add(DataLogger, {"output_dir": str(out), "bag_name": bag_name,
                                         "diagnostics_rate": 0.0})
        connected = system.spin_until(
            lambda: sim.state_pub.get_subscription_count() >= 2
            and sim.command_subscription_count() >= 1 and not logger.pending_topics()
            # the latched episode-0 marker must be in the bag before the first state
            # (a matched subscription is not enough: delivery of history is asynchronous)
            and logger.markers_written >= 1,
            timeout=15.0)
        if not connected:
            raise RuntimeError("simulation, excitation and logger nodes did not connect "
                               "within 15 s (is discovery blocked on localhost?)")
        per_episode = seconds / episodes
        bar = tqdm(total=seconds, disable=not progress, desc=f"record {Path(robot).stem}",
                   leave=False, bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} sim s "
                                           "[{elapsed}<{remaining}]")
        deadline = time.monotonic() + timeout_factor * seconds + 30.0
        for ep in range(episodes):
            start = sim.sim_time()
            if ep > 0:
                # Stop the lockstep chain and let in-flight commands land before the reset,
                # so no command computed for the old episode steps the new one.
                sim.pause()
                system.spin_until(lambda: False, timeout=0.1)
                sim.reset_episode(publish=False)
                sim.resume()
            else:
                sim.resume()   # publishes the first state once: the loop runs from here
            last = [sim.sim_time()]

            # No re-publishing on a stall: reliable DDS on this host delays messages under
            # load but does not lose them, and a second copy of a state would be answered
            # twice, running two lockstep command chains at once.
            def tick():
                t = sim.sim_time()
                if t != last[0]:
                    bar.update(t - last[0])
                    last[0] = t
            ok = system.spin_until(lambda: sim.sim_time() - start >= per_episode - 1e-9,
                                   timeout=max(1.0, deadline - time.monotonic()), tick=tick)
            if not ok:
                bar.close()
                raise RuntimeError(f"recording stalled at {sim.sim_time():.2f} s of "
                                   f"simulated time")
        bar.close()
        sim.pause()
        logger.finish(system.executor)
        paths = list(logger.last_bag_paths)
    return paths
