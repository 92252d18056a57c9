"""The wire between a controller and its planning process: messages, policies, the
parent's end of the socket.

One socket pair carries ``multiprocessing.connection`` messages, tuples of plain values
and numpy arrays (nothing that needs a class of ours to unpickle):

=====================================  ==================================================
parent -> child                        child -> parent
=====================================  ==================================================
``("init", config)`` (first)           ``("ready", 0, info)`` or ``("error", 0, text)``
``("plan", id, x, t, lookahead,       ``("policy", id, kind, fields, stats, nominal,
last)`` (last: (u, t_u) or None)       active)``, ``("error", id, text)`` or
                                       ``("skipped", id)`` (a newer plan came in)
``("load_model", id, source)``         ``("model", id, version, spec)`` / ``("error", ...)``
``("target", q)``, ``("select", id)``, ``("log", level, text)`` if one of these fails
``("cost", dict)``, ``("fallback",
id)``, ``("threshold", v)``,
``("effort_scale", v)``, ``("effort_rate",
v)``, ``("planners",
{id: (kind, dict)})``, ``("reset",)``
``("stop",)``                          (exits)
=====================================  ==================================================

Policies cross as their constructor's arrays (:class:`LinearGaussianPolicy`, the GPS
:class:`NeuralPolicy`), rebuilt read-only in the parent (:func:`encode_policy`,
:func:`decode_policy`). :class:`ChildHandle` starts the child (a fresh interpreter running
:func:`mbrl_ros.core.control.plan_worker.child_main`) and is the parent's end of the
socket. BLAS/OpenMP use one thread in the child.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np

__all__ = ["ChildHandle", "PlanProcessError", "PlanError", "encode_policy", "decode_policy",
           "plain", "settings_dict"]

_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class PlanProcessError(RuntimeError):
    """The planning process exited, hung, was stopped, or could not start."""


class PlanError(RuntimeError):
    """The planner in the child failed on this replan (the process itself is fine)."""


def _policy_types() -> dict[str, type]:
    from mbrl_ros.core.policies.neural import NeuralPolicy
    from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
    return {"linear_gaussian": LinearGaussianPolicy, "neural": NeuralPolicy}


def encode_policy(policy: Any) -> tuple[str, dict[str, Any]]:
    """(kind, constructor fields) of a policy: arrays and numbers, no pickled classes.

    Raises:
        TypeError: a policy type that cannot cross the process boundary.
    """
    for kind, cls in _policy_types().items():
        if type(policy) is cls:
            return kind, {f.name: getattr(policy, f.name)
                          for f in dataclasses.fields(cls) if f.init}
    raise TypeError(f"a {type(policy).__name__} policy cannot be sent from the planning "
                    "process (known: LinearGaussianPolicy, NeuralPolicy); use planning: "
                    "thread")


def decode_policy(kind: str, fields: dict[str, Any]) -> Any:
    return _policy_types()[kind](**fields)


def plain(v: Any) -> Any:
    """Stats values as plain Python/numpy data (nothing that needs a class to unpickle)."""
    if isinstance(v, (bool, int, float, str, type(None), np.ndarray)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return type(v)(plain(x) for x in v)
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return str(v)


def settings_dict(settings: Any) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


class ChildHandle:
    """One child process and the parent's end of its socket; a reader thread resolves
    the futures of requests and notices the end of file when the child exits."""

    def __init__(self, init: dict, on_log: Callable[[str, str], None],
                 on_lost: Callable[["ChildHandle", str], None]):
        ours, theirs = socket.socketpair()
        try:
            fd = theirs.fileno()
            # The parent stops the worker; a terminal's Ctrl-C reaching the child while it
            # still imports printed a KeyboardInterrupt traceback (seen with two CPU hogs):
            # SIGINT is ignored from the first line.
            boot = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                    "import sys; from mbrl_ros.core.control.plan_worker import child_main; "
                    "child_main(int(sys.argv[1]))")
            self.proc = subprocess.Popen([sys.executable, "-c", boot, str(fd)], pass_fds=(fd,),
                                         env={**os.environ, **_THREAD_ENV},
                                         stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self._on_log, self._on_lost = on_log, on_lost
        self._lock = threading.Lock()          # pending requests, lost
        self._send_lock = threading.Lock()     # one writer at a time on the socket
        self._ids = itertools.count(1)
        self.ready: Future = Future()
        self._pending: dict[int, Future] = {0: self.ready}
        self.lost: str | None = None
        self._stopping = False
        # the model source the child starts with, and whether the parent has seen its
        # answer about it (a refused model is reported once, not on every replan)
        self.model_source = init.get("model")
        self.model_checked = False
        self.post(("init", init))
        self._reader = threading.Thread(target=self._read, name="plan_process_reader",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def post(self, msg: tuple) -> None:
        """Send without an answer (lost silently if the child is gone: the next request
        notices, and a restarted child gets the mirrored state)."""
        try:
            with self._send_lock:
                self.conn.send(msg)
        except (OSError, ValueError):
            pass

    def request(self, kind: str, *args) -> Future:
        f: Future = Future()
        with self._lock:
            if self.lost is not None:
                f.set_exception(PlanProcessError(self.lost))
                return f
            i = next(self._ids)
            self._pending[i] = f
        try:
            with self._send_lock:
                self.conn.send((kind, i, *args))
        except (OSError, ValueError) as e:
            self._fail(f"planning process unreachable: {e}")
        return f

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                if msg[0] == "log":
                    self._on_log(msg[1], msg[2])
                    continue
                with self._lock:
                    f = self._pending.pop(msg[1], None)
                if f is not None and not f.done():
                    f.set_result(msg)
        except (EOFError, OSError):
            pass
        except Exception as e:           # an unreadable message: treat the child as lost
            self._on_log("error", f"planning process sent an unreadable message: {e!r}")
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        self._fail(f"planning process exited (code {code})")

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self.lost is not None:
                return
            self.lost = reason
            pending, self._pending = list(self._pending.values()), {}
        for f in pending:
            if not f.done():
                f.set_exception(PlanProcessError(reason))
        if not self._stopping:
            self._on_lost(self, reason)

    def kill(self, reason: str) -> None:
        """A hung child: SIGKILL, then the failure is reported as a loss."""
        try:
            self.proc.kill()
        except OSError:
            pass
        self._fail(reason)
        self._finish(5.0)

    def stop(self, timeout: float = 0.2) -> None:
        """Ask the child to exit; SIGKILL if it has not within ``timeout`` s (it holds
        nothing worth waiting for: a deactivating controller should not wait on a solve)."""
        self._stopping = True
        self.post(("stop",))
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._fail("planning process stopped")
        self._finish(5.0)

    def _finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=timeout)
        if not self._reader.is_alive():
            self.conn.close()
