"""Two network namespaces joined by a veth pair: two "hosts" on one machine, as root.

Each namespace has its own loopback and one end of the veth pair, with a private address
(10.213.0.1/24 and 10.213.0.2/24) that exists only inside it: nothing is added to the
machine's own network namespace (the pair is created there and both ends are moved at
once), and processes started with :meth:`NetnsPair.cmd` can reach the other "host" only
over the pair. :meth:`NetnsPair.close` deletes both namespaces, which deletes the pair.

Where the machine forbids this (no root, no ``ip``, a container without the permission to
create namespaces or veth devices), :func:`netns_pair_or_skip` skips with the reason.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import pytest

SUBNET = "10.213.0"
# What `ip` says when the machine (not the test) refuses: no permission, no veth driver.
_FORBIDDEN = ("Operation not permitted", "Permission denied", "not supported",
              "Unknown device type", "Cannot open network namespace")
_count = itertools.count()


class NetnsUnavailable(RuntimeError):
    """The machine does not let us create network namespaces or veth pairs."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        text = (r.stderr or r.stdout).strip()
        msg = f"`ip {' '.join(args)}` failed: {text}"
        if any(f in text for f in _FORBIDDEN):
            raise NetnsUnavailable(msg)
        raise RuntimeError(msg)
    return r


class NetnsPair:
    """Namespaces ``a`` and ``b`` with addresses ``addr_a`` and ``addr_b`` on a veth pair."""

    def __init__(self):
        # Names unique per process and use (veth names: at most 15 characters).
        tag = f"{os.getpid() % 100000}{next(_count)}"
        self.a, self.b = f"mbrlsh{tag}a", f"mbrlsh{tag}b"
        self.veth_a, self.veth_b = f"mbsh{tag}a", f"mbsh{tag}b"
        self.addr_a, self.addr_b = f"{SUBNET}.1", f"{SUBNET}.2"
        self._made: list[str] = []

    def up(self) -> "NetnsPair":
        try:
            for ns in (self.a, self.b):
                _ip("netns", "del", ns, check=False)          # a stale one of a dead run
                _ip("netns", "add", ns)
                self._made.append(ns)
            _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
            _ip("link", "set", self.veth_a, "netns", self.a)
            _ip("link", "set", self.veth_b, "netns", self.b)
            for ns, dev, addr in ((self.a, self.veth_a, self.addr_a),
                                  (self.b, self.veth_b, self.addr_b)):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    def cmd(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns`` (the same process: ip execs it)."""
        return ["ip", "netns", "exec", ns, *argv]

    def set_link(self, state: str) -> None:
        """Both ends of the pair 'up' or 'down' (the cable pulled)."""
        _ip("-n", self.a, "link", "set", self.veth_a, state)
        _ip("-n", self.b, "link", "set", self.veth_b, state)

    def link_state(self, ns: str, dev: str) -> str:
        return _ip("-n", ns, "-o", "link", "show", dev).stdout

    def close(self) -> None:
        """Delete both namespaces (their ends of the pair go with them); a pair left in
        this namespace by a set-up that failed half-way is deleted too."""
        for ns in self._made:
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        if _ip("link", "show", self.veth_a, check=False).returncode == 0:
            _ip("link", "del", self.veth_a, check=False)

    def exists(self) -> bool:
        names = _ip("netns", "list").stdout.split()
        return self.a in names or self.b in names


def netns_pair_or_skip() -> NetnsPair:
    """A NetnsPair that is up, or pytest.skip with the reason the machine forbids it."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed: cannot create network namespaces")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces and veth pairs needs root "
                    f"(running as uid {os.geteuid()})")
    try:
        return NetnsPair().up()
    except NetnsUnavailable as e:
        pytest.skip(f"this machine forbids network namespaces or veth pairs: {e}")
