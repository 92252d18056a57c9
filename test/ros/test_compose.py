"""The in-process system (demo, record) and the benchmarks claim a private domain no other
run uses: atomically (a lock held for the run), not by looking for nodes for a while."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy

from mbrl_ros.ros.compose import _claim_free_domain
from mbrl_ros.ros.domains import LOCK_DIR_ENV, try_lock

BENCH = Path(__file__).resolve().parents[2] / "bench"

# argv: candidates ("71,72"), listen [s], go file (wait for it), ready file (touched first).
# Prints the claimed domain (or "none") and holds the claim until stdin closes.
CLAIMER = r"""
import sys, time
from pathlib import Path
from mbrl_ros.ros.compose import _claim_free_domain
candidates = [int(d) for d in sys.argv[1].split(",")]
go, ready = Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
try:
    context, domain, lock = _claim_free_domain(candidates, listen=float(sys.argv[2]))
    print(domain, flush=True)
except RuntimeError:
    print("none", flush=True)
sys.stdin.read()
"""

# Two real in-process systems, as `mbrl-ros demo` builds them (default lock directory).
SYSTEM = r"""
import sys
from mbrl_ros.ros.compose import InProcessSystem
with InProcessSystem() as system:
    print(system.domain_id, flush=True)
    sys.stdin.read()
"""

# A benchmark's node environment (bench/_common.py), default lock directory.
BENCH_ENV = r"""
import sys
sys.path.insert(0, sys.argv[1])
from _common import ros_env
assert ros_env()["ROS_DOMAIN_ID"] == ros_env()["ROS_DOMAIN_ID"]   # one claim per process
print(ros_env()["ROS_DOMAIN_ID"], flush=True)
sys.stdin.read()
"""


def _env(**extra) -> dict:
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _spawn(code: str, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)


def _line(p: subprocess.Popen, timeout: float = 60.0) -> str:
    """The first stdout line of ``p`` (fails the test if it does not come in time)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise AssertionError(f"no answer from claimer {p.pid} within {timeout} s")
    return p.stdout.readline().strip()


def _end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.timeout(90)
def test_concurrent_claims_in_processes_get_different_domains(tmp_path, monkeypatch):
    """Four processes claim from four domains at the same moment (within a millisecond):
    each gets its own. A listen-based claim hands the same empty domain to several."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    candidates = [71, 72, 73, 74]
    go = tmp_path / "go"
    env = _env()
    procs = [_spawn(CLAIMER, [",".join(map(str, candidates)), "0", str(go),
                              str(tmp_path / f"ready{i}")], env) for i in range(4)]
    try:
        end = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
            assert time.monotonic() < end, "claimers did not start"
            assert all(p.poll() is None for p in procs), "a claimer died"
            time.sleep(0.01)
        go.touch()
        got = [_line(p) for p in procs]
        assert sorted(got) == sorted(map(str, candidates)), got
        # while they hold them, there is nothing left to claim
        with pytest.raises(RuntimeError):
            _claim_free_domain(candidates, listen=0)
    finally:
        _end(procs)


@pytest.mark.timeout(90)
def test_a_held_domain_is_refused_and_freed_when_its_holder_dies(tmp_path, monkeypatch):
    """No nodes on the domain yet (a run between its claim and its first node) and still
    not handed out again; SIGKILL of the holder frees it without any clean-up."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    domain = 75
    go = tmp_path / "go"
    go.touch()
    holder = _spawn(CLAIMER, [str(domain), "0", str(go), str(tmp_path / "ready")], _env())
    try:
        assert _line(holder) == str(domain)
        assert try_lock(domain) is None
        with pytest.raises(RuntimeError, match="claimed by another run"):
            _claim_free_domain([domain], listen=0)
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        context, got, lock = _claim_free_domain([domain], listen=0)
        try:
            assert got == domain and lock.held
        finally:
            rclpy.try_shutdown(context=context)
            lock.release()
        assert not lock.held
    finally:
        _end([holder])


def test_two_claims_in_one_process_get_different_domains(tmp_path, monkeypatch):
    """flock locks belong to the open file, not the process: a demo and a test in one
    interpreter are kept apart too; a released claim is free again."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    first, second = try_lock(76), try_lock(76)
    assert first is not None and second is None
    first.release()
    again = try_lock(76)
    assert again is not None
    again.release()


@pytest.mark.timeout(120)
def test_two_in_process_systems_at_once_claim_different_domains():
    """The user's path: two `mbrl-ros demo`-style systems started together, machine-wide
    lock directory; each holds its domain's lock while it runs."""
    procs = [_spawn(SYSTEM, [], _env()) for _ in range(2)]
    try:
        got = [int(_line(p, timeout=90)) for p in procs]
        assert got[0] != got[1], got
        assert all(51 <= d <= 80 for d in got), got
        for d in got:
            assert try_lock(d) is None, f"domain {d} is not locked by its system"
    finally:
        _end(procs)


@pytest.mark.timeout(60)
def test_benchmarks_hold_their_domain_claim():
    """bench/_common.ros_env claims one domain in 81..101 per benchmark process and holds it
    until the process ends (machine-wide lock directory)."""
    p = _spawn(BENCH_ENV, [str(BENCH)], _env())
    try:
        domain = int(_line(p))
        assert 81 <= domain <= 101
        assert try_lock(domain) is None
    finally:
        _end([p])
    assert p.returncode == 0


def test_claims_a_domain_without_foreign_nodes(monkeypatch, tmp_path):
    """The second guard: a domain with another (non-mbrl_ros) node on it is skipped."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    busy_domain, free_domain = 63, 64
    other = rclpy.Context()
    rclpy.init(context=other, domain_id=busy_domain)
    node = rclpy.create_node("someone_elses_sim", context=other)
    try:
        for _ in range(3):                 # the busy domain is skipped whatever the order
            context, domain, lock = _claim_free_domain([busy_domain, free_domain],
                                                       listen=3.0)
            rclpy.try_shutdown(context=context)
            lock.release()
            assert domain == free_domain
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=other)
