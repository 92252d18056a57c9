"""Process entry shared by every node: init, spin, clean shutdown on SIGINT/SIGTERM.

rclpy's own signal handling would tear the context down while callbacks may still hold
data (the logger's open bag). Instead we take SIGINT/SIGTERM ourselves, stop spinning,
let the node drain and finish (``node.finish()``), then shut down, so a signal never
loses data. An invalid parameter makes the node exit with status 2 and one clear line.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,
                             SingleThreadedExecutor)
from rclpy.signals import SignalHandlerOptions

from mbrl_ros.core.settings import SettingsError
from mbrl_ros.core.threads import limit_threads


def run_node(factory: Callable[[], "rclpy.node.Node"], args=None, threads: int = 2) -> None:
    """Create the node, spin it until SIGINT/SIGTERM or context shutdown, then finish it."""
    argv = sys.argv if args is None else args
    limit_threads()
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    node = None
    code = 0
    try:
        node = factory()
    except (SettingsError, ValueError, FileNotFoundError, InvalidParameterValueException,
            InvalidParameterTypeException) as e:
        print(f"[ERROR] {factory.__name__}: invalid configuration: {e}", file=sys.stderr,
              flush=True)
        code = 2
    if node is not None:
        executor = (SingleThreadedExecutor() if threads == 1
                    else MultiThreadedExecutor(num_threads=threads))
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception as e:         # a callback raised: still close bags, zero efforts
            print(f"[ERROR] {type(node).__name__}: {e!r}; shutting down", file=sys.stderr,
                  flush=True)
            code = 1
        finish = getattr(node, "finish", None)
        if finish is not None:
            finish(executor)
        # Let callbacks already handed to a MultiThreadedExecutor's thread pool finish
        # first: each triggers the executor's guard condition, which executor.shutdown()
        # destroys without waiting for them (rclpy 9), and a late one then dies with
        # "cannot use Destroyable because destruction was requested", printed at exit as
        # "The following exception was never retrieved".
        pool = getattr(executor, "_executor", None)
        if pool is not None:
            pool.shutdown(wait=True)
        # Stop the executor (and wait for running callbacks) before destroying the node,
        # so no callback touches a node being destroyed.
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
    # Finished: a further SIGINT must not kill the exit. Under `ros2 launch` a Ctrl-C
    # reaches every node twice (the terminal's, then launch's), and Python restores the
    # default handlers while the interpreter finalizes: the second one killed the node
    # (exit -2, "process has died" for every node). An ignored SIGINT stays ignored.
    # SIGTERM keeps its default there: it is launch's escalation for a node that does not end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rclpy.try_shutdown()
    if code:
        sys.exit(code)
