"""The planning process's side: one :class:`~mbrl_ros.core.control.mpc.MPCController`
serving one parent (:class:`~mbrl_ros.core.control.plan_process.PlanProcess`) over the
socket described in :mod:`mbrl_ros.core.control.plan_wire`.

*Latest wins*: before planning, the worker applies every message that is waiting and
plans only from the newest state (older plan requests are answered ``skipped``). Models
load on a thread of the worker while it keeps planning on the previous model, then are
swapped between two replans. The process exits when the parent closes the socket or dies
(it watches its parent id), and ignores SIGINT/SIGTERM: the parent stops it, so a signal
to the process group never leaves a planner half way through a message. BLAS/OpenMP and
torch use one thread, and the process may run at a lower priority (``nice``).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from multiprocessing.connection import Connection

import numpy as np

from mbrl_ros.core.control.model_source import load_model
from mbrl_ros.core.control.mpc import CostSettings, MPCController
from mbrl_ros.core.control.plan_wire import encode_policy, plain
from mbrl_ros.core.models.base import ModelSpec
from mbrl_ros.core.planners.base import RobotLayout
from mbrl_ros.core.settings import from_mapping

__all__ = ["Worker", "child_main"]


class Worker:
    """The child: one MPCController, messages in, policies out."""

    def __init__(self, conn: Connection, cfg: dict):
        from concurrent.futures import ThreadPoolExecutor

        self.conn, self.cfg = conn, cfg
        self._send_lock = threading.Lock()
        self._mpc_lock = threading.Lock()     # planning vs. a model swap
        self.planners: dict[str, tuple[str, dict]] = dict(cfg["planners"])
        self.mpc = MPCController(self._make_planner, list(cfg["planner_ids"]), cfg["active"],
                                 cfg["horizon"], cfg["effort_limits"], cfg["position_limits"],
                                 from_mapping(CostSettings, cfg["cost"]), cfg["fallback"],
                                 cfg["threshold"], continuous=cfg["continuous"],
                                 robot=None if cfg.get("layout") is None
                                 else RobotLayout(**cfg["layout"]),
                                 control_period=cfg["control_period"],
                                 deadline=cfg.get("deadline"),
                                 effort_scale=cfg["effort_scale"],
                                 effort_rate=cfg.get("effort_rate", 0.0))
        if cfg["target"] is not None:
            self.mpc.set_target(cfg["target"])
        # The model the parent verified can still be refused here (the file changed since,
        # or the planners refuse it): the child then starts without it and says so in its
        # "ready" answer. Failing the start instead would restart the child in a loop.
        self.model_error: str | None = None
        if cfg["model"] is not None:
            m = cfg["model"]
            try:
                model, v = self._load(m["source"], m["version"], m["checksum"], None)
                self.mpc.set_model(model, v)
            except Exception as e:      # noqa: BLE001 -- any refusal is reported, once
                self.model_error = f"{type(e).__name__}: {e}"
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model_load")

    def _make_planner(self, pid: str, nx: int, nu: int, u_min, u_max, dt: float):
        from mbrl_ros.core import registry
        kind, values = self.planners[pid]
        cls = registry.lookup("planner", kind)
        return cls(from_mapping(cls.Settings, values), nx, nu, u_min, u_max, dt)

    def _load(self, source, version, checksum, expect, state=None):
        model, v = load_model(source, robot=self.cfg["robot"],
                              control_period=self.cfg["control_period"],
                              joint_names=tuple(self.cfg["joint_names"]), expect=expect,
                              checksum=checksum, version=version, state=state)
        _torch_one_thread()
        return model, v

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def log(self, level: str, text: str) -> None:
        self.send(("log", level, text))

    def run(self) -> None:
        while True:
            batch = [self.conn.recv()]
            while self.conn.poll(0):           # latest wins: take everything waiting
                batch.append(self.conn.recv())
            plan = None
            for msg in batch:
                if msg[0] == "stop":
                    return
                if msg[0] == "plan":
                    if plan is not None:
                        self.send(("skipped", plan[1]))
                    plan = msg
                else:
                    self._handle(msg)
            if plan is not None:
                # (a plan without the last command -- none known -- plans without it)
                self._plan(*plan[1:5], plan[5] if len(plan) > 5 else None)

    def _plan(self, i: int, x: np.ndarray, t: float, lookahead: float,
              last: tuple[np.ndarray, float] | None) -> None:
        try:
            with self._mpc_lock:
                policy = self.mpc.replan(x, t, lookahead, last)
                stats = plain(dict(self.mpc.stats))
                nominal = self.mpc.nominal_states()
                active = self.mpc.active
            kind, fields = encode_policy(policy)
        except Exception as e:         # the planner's failure is the parent's to report
            self.send(("error", i, f"{type(e).__name__}: {e}"))
            return
        self.send(("policy", i, kind, fields, stats, nominal, active))

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        try:
            with self._mpc_lock:
                if kind == "target":
                    self.mpc.set_target(msg[1])
                elif kind == "select":
                    self.mpc.select(msg[1])
                elif kind == "cost":
                    self.mpc.set_cost_settings(from_mapping(CostSettings, msg[1]))
                elif kind == "fallback":
                    self.mpc.fallback = msg[1]
                elif kind == "threshold":
                    self.mpc.uncertainty_threshold = msg[1]
                elif kind == "effort_scale":
                    self.mpc.set_effort_scale(msg[1])
                elif kind == "effort_rate":
                    self.mpc.set_effort_rate(msg[1])
                elif kind == "planners":
                    self.planners = dict(msg[1])
                    self.mpc.rebuild_planners()
                elif kind == "reset":
                    self.mpc.reset_planners()
                elif kind == "load_model":
                    self._loader.submit(self._load_model, msg[1], msg[2])
                else:
                    raise ValueError(f"unknown message {kind!r}")
        except Exception as e:
            self.log("error", f"planning process: {kind} failed: {type(e).__name__}: {e}")

    def _load_model(self, i: int, m: dict) -> None:
        """On the loader thread: the previous model keeps planning until the swap."""
        try:
            expect = None if m["expect"] is None else ModelSpec.from_json(m["expect"])
            model, v = self._load(m["source"], m["version"], m["checksum"], expect,
                                  m.get("state"))
            with self._mpc_lock:
                self.mpc.set_model(model, v)
            _torch_one_thread()
        except Exception as e:
            self.send(("error", i, f"{type(e).__name__}: {e}"))
            return
        self.send(("model", i, v, model.spec.to_json()))


def _torch_one_thread() -> None:
    torch = sys.modules.get("torch")        # only if a model imported it
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _watch_parent(parent: int) -> None:
    """Exit if the parent died without closing the socket (it is inherited nowhere else,
    but a hung solve would never read the end of file)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def child_main(fd: int) -> None:
    """Entry of the planning process (``python -c``): serve one parent on socket ``fd``."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent stops us (see module doc)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from mbrl_ros.core.threads import limit_threads
    limit_threads(1)
    conn = Connection(fd)
    try:
        msg = conn.recv()
    except EOFError:
        os._exit(0)
    cfg = msg[1]
    if cfg.get("nice", 0) > 0:                       # background work: the control loop first
        try:
            os.nice(int(cfg["nice"]))
        except OSError:
            pass
    threading.Thread(target=_watch_parent, args=(cfg["parent"],), daemon=True,
                     name="watch_parent").start()
    try:
        worker = Worker(conn, cfg)
    except Exception as e:
        conn.send(("error", 0, f"{type(e).__name__}: {e}"))
        conn.close()
        os._exit(1)
    _torch_one_thread()
    torch = sys.modules.get("torch")
    conn.send(("ready", 0, {"model_version": worker.mpc.model_version,
                            "torch_threads": torch.get_num_threads() if torch else None,
                            "model_error": worker.model_error}))
    try:
        worker.run()
    except (EOFError, OSError):
        pass                                  # the parent closed the socket
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
