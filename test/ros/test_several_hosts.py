"""Several hosts on a real network path (README "Several hosts"): two network namespaces
joined by a veth pair stand for the robot's computer (A: sim_node + controller) and a
workstation (B: model_fitter). No shared file system is used: the fitter fits on a bag
recorded in B beforehand, serves the packed artifact (``serve_artifact``), and the
controller receives it over DDS across the pair (``artifact_topic``), unpacks it into its
own cache and drives the arm to the target. Then the cable is pulled: the controller keeps
its model, latches no fault and keeps the arm at the target, also after DDS in A has
dropped the fitter (participant lease expired).

Discovery: ``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` (multicast discovery over the pair),
as the README says for several hosts. Every address used (10.213.0.1/.2 and the DDS
multicast group on the pair) exists only inside the two namespaces, which the test
deletes. Needs root (skipped with the reason where the machine forbids namespaces).
"""
from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, NodeProcess
from mbrl_ros.core import store
from netns_util import netns_pair_or_skip

pytestmark = pytest.mark.timeout(570)     # the waits' 510 s, and the stop
TARGET = [0.5, -0.5]
CTRL, FITTER = "mbrl_ros/controller", "mbrl_ros/model_fitter"
PROBE = Path(__file__).with_name("netns_probe.py")


class Observed:
    """The JSON lines of netns_probe.py (run in namespace A), read as they arrive."""

    def __init__(self, proc: NodeProcess, watched: list[NodeProcess]):
        self.proc, self.watched = proc, watched
        self.states: list[dict] = []
        self.diags: list[dict] = []
        self._offset = 0

    def poll(self) -> None:
        with open(self.proc.log_path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1               # whole lines only
        self._offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            if not line.startswith("{"):
                continue                           # ROS log lines of the probe
            obj = json.loads(line)
            if obj["kind"] == "state":
                self.states.append(obj)
            elif obj["kind"] == "diag":
                self.diags.append(obj)

    def wait(self, cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.poll()
            if cond():
                return
            for p in self.watched:
                if p.proc.poll() is not None:
                    pytest.fail(f"{p.log_path.name} exited with {p.proc.returncode} while "
                                f"waiting for {what}:\n{p.output()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; logs:\n"
                             + "\n".join(f"--- {p.log_path.name}\n{p.output()[-2000:]}"
                                         for p in self.watched))

    def diag(self, name: str, after: float = 0.0) -> list[dict]:
        return [d for d in self.diags if d["name"] == name and d["t"] > after]

    def latest(self, name: str) -> dict:
        got = self.diag(name)
        return got[-1]["values"] if got else {}


@pytest.fixture
def two_hosts(domain_id, tmp_path):
    """(net, start): start('a'|'b', argv, name) runs argv inside that namespace with the
    several-hosts environment; every process is ended (its group) before the namespaces
    are deleted."""
    net = netns_pair_or_skip()
    env = dict(os.environ)
    env.pop("ROS_STATIC_PEERS", None)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET",
               PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    procs: list[NodeProcess] = []

    def start(host: str, argv: list[str], name: str) -> NodeProcess:
        ns = {"a": net.a, "b": net.b}[host]
        p = NodeProcess(net.cmd(ns, [str(a) for a in argv]), env, tmp_path / f"{name}.log")
        procs.append(p)
        return p

    try:
        yield net, start
    finally:
        for p in reversed(procs):
            p.stop()
        net.close()
    assert not net.exists()


def node(executable: str, params: dict, tmp_path: Path) -> list:
    f = tmp_path / f"{executable}.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return [BIN / executable, "--ros-args", "--params-file", f]


def off_target(state: dict) -> float:
    return float(np.max(np.abs(np.array(state["position"]) - TARGET)))


def test_model_crosses_the_link_and_the_controller_survives_losing_it(two_hosts, tmp_path,
                                                                       ros_env):
    net, start = two_hosts
    # The workstation's data: a bag recorded in B beforehand (lockstep, localhost only).
    bags = tmp_path / "workstation_bags"
    r = subprocess.run(net.cmd(net.b, [str(BIN / "mbrl-ros"), "record", "--robot", "arm2",
                                       "--seconds", "20", "--episodes", "5", "--out",
                                       str(bags), "--no-progress"]),
                       env=ros_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    (bag,) = [d for d in bags.iterdir() if d.is_dir()]

    store_dir, cache = tmp_path / "workstation_models", tmp_path / "robot_cache"
    fitter = start("b", node("model_fitter", {
        "model": "linear", "robot": "arm2", "bags": [str(bag)], "live": False,
        "fit_on_start": True, "serve_artifact": True, "store_dir": str(store_dir),
        "diagnostics_rate": 2.0}, tmp_path), "fitter")
    sim = start("a", node("sim_node", {"model": "arm2", "publish_rate": 100.0}, tmp_path),
                "sim")
    ctrl = start("a", node("controller", {
        "robot": "arm2", "model": "", "autostart": True,
        "artifact_topic": "model_fitter/artifact", "artifact_cache": str(cache),
        "target_joint_positions": TARGET, "plan_rate": 20.0, "horizon": 25,
        "diagnostics_rate": 5.0}, tmp_path), "controller")
    probe = start("a", [sys.executable, PROBE, "200"], "probe_a")
    probe_b = start("b", [sys.executable, PROBE, "200"], "probe_b")
    obs = Observed(probe, [fitter, sim, ctrl, probe, probe_b])
    obs_b = Observed(probe_b, [])

    # 1. The model crosses: the controller in A runs on v1, unpacked from the artifact the
    #    fitter in B served, into its own cache (the fitter's store is another folder).
    obs.wait(lambda: obs.latest(CTRL).get("model_version") == "1", 120,
             "the controller in A using model v1 served from B")
    # the fitter reports at 2 Hz: its /diagnostics may trail the model by a moment
    obs.wait(lambda: obs.diag(FITTER), 60, "the fitter's /diagnostics from B in A")
    obs_b.wait(lambda: obs_b.diag(CTRL), 60, "the controller's /diagnostics from A in B")
    assert store.versions(store_dir, "linear") == [1]
    assert store.versions(cache, "linear") == [1]
    served, received = store_dir / "linear" / "v0001", cache / "linear" / "v0001"
    files = sorted(p.name for p in served.iterdir())
    assert files and sorted(p.name for p in received.iterdir()) == files
    assert filecmp.cmpfiles(served, received, files, shallow=False)[0] == files
    # ... and the arm reaches the target on it and stays there (the last second).
    obs.wait(lambda: len(obs.states) >= 10 and all(
        s["position"] is not None and off_target(s) < 0.05 for s in obs.states[-10:]),
        60, "the arm settled at the target")

    # 2. The cable is pulled mid-run.
    obs.poll()
    before = obs.latest(CTRL)
    assert before["fault"] == "" and obs.states[-1]["artifact_publishers"] == 1
    commands_before = obs.states[-1]["commands"]
    t_down = time.monotonic()
    net.set_link("down")
    down_wall = time.time()              # the nodes' clock (system time): sent after this
    assert "state DOWN" in net.link_state(net.a, net.veth_a)
    # Wait until DDS in A has dropped the fitter (its participant's lease expired: 20 s in
    # Fast DDS), then watch a little longer.
    obs.wait(lambda: any(s["t"] > t_down and s["artifact_publishers"] == 0
                         for s in obs.states), 60, "DDS in A to drop the unreachable fitter")
    t_gone = next(s["t"] for s in obs.states if s["t"] > t_down
                  and s["artifact_publishers"] == 0)
    obs.wait(lambda: obs.states[-1]["t"] > t_gone + 3.0 and obs.diag(CTRL, t_gone + 3.0),
             30, "the controller watched after the fitter was dropped")

    # The link really carried the fitter's traffic: nothing B sent after the cable was
    # pulled arrives in A (no other path between the namespaces).
    late = [d for d in obs.diag(FITTER) if d["stamp"] > down_wall]
    assert not late, f"the fitter's /diagnostics reached A with the link down: {late[0]}"
    obs_b.poll()                         # ... while the fitter kept publishing them in B
    assert len([d for d in obs_b.diag(FITTER) if d["stamp"] > down_wall]) >= 10
    assert not [d for d in obs_b.diag(CTRL) if d["stamp"] > down_wall]
    # The controller keeps its last model and stays safe: no model change or reject, no
    # fault, no ERROR, commands keep flowing, the arm stays at the target.
    after = obs.diag(CTRL, t_down)
    assert len(after) >= 10
    for d in after:
        v = d["values"]
        assert (v["model_version"], v["model_loads"], v["model_rejects"], v["fault"]) == \
            (before["model_version"], before["model_loads"], before["model_rejects"], ""), d
        assert d["level"] < 2, d
    states_after = [s for s in obs.states if s["t"] > t_down]
    assert obs.states[-1]["commands"] - commands_before > 500       # ~100 per second
    worst = max(off_target(s) for s in states_after)
    assert worst < 0.05, f"the arm left the target by {worst:.3f} rad after the link went down"
    for p in (fitter, sim, ctrl):
        assert p.proc.poll() is None, p.output()[-3000:]
