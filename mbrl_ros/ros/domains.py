"""Claiming a private ROS domain id on this machine, atomically (no rclpy).

A run that composes its nodes in one process (``mbrl-ros demo``, ``mbrl-ros record``) or a
benchmark that starts node processes needs a ROS domain no other run uses, or each takes
the other's joint states and commands. Looking for other nodes on a domain is not enough:
two runs starting at once both see an empty domain (and a busy machine delays discovery
past any listening time). A claim is therefore an exclusive ``flock`` on
``<lock dir>/<domain>.lock``, held for the whole run: the kernel grants it to one open file
at a time -- also to one of two claims in the same process -- and releases it when the
holder closes it or dies, however it dies (no stale locks to clean up).

The lock directory is machine-wide: ``/tmp/mbrl_ros-domains`` (sticky and world-writable,
as /tmp, so that every user's runs see each other), or ``$MBRL_ROS_DOMAIN_LOCKS``.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
from pathlib import Path
from typing import Callable, Iterable

LOCK_DIR_ENV = "MBRL_ROS_DOMAIN_LOCKS"
DEFAULT_LOCK_DIR = "/tmp/mbrl_ros-domains"


def lock_dir() -> Path:
    """The directory of the domain locks (created world-writable and sticky)."""
    path = Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(path, 0o1777)      # the umask narrowed mkdir's mode; other users too
        except PermissionError:         # someone else created it first: theirs to set
            pass
    return path


def _open(path: Path) -> int:
    # Opened read-only (flock needs no write access) and created only if absent: with
    # fs.protected_regular, O_CREAT on another user's file in a sticky directory fails.
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            pass
        try:
            return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:         # created by another claim in between: open it
            continue


class DomainLock:
    """An exclusive lock on one domain id, held until :meth:`release` or process exit."""

    def __init__(self, domain: int, fd: int):
        self.domain = domain
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)          # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "DomainLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"DomainLock({self.domain}, {'held' if self.held else 'released'})"


def try_lock(domain: int) -> DomainLock | None:
    """The lock on ``domain`` if no one holds it now, else None (never waits)."""
    fd = _open(lock_dir() / f"{domain}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return DomainLock(domain, fd)


def claim_domain(candidates: Iterable[int],
                 accept: Callable[[int], bool] | None = None) -> DomainLock:
    """Lock a free domain among ``candidates`` (tried in random order, so that runs spread
    over the range) and keep it if ``accept(domain)`` (e.g. no foreign nodes seen there).

    Raises:
        RuntimeError: every candidate is locked by another run or refused by ``accept``.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no candidate domain ids")
    for domain in random.sample(candidates, len(candidates)):
        lock = try_lock(domain)
        if lock is None:
            continue
        if accept is None or accept(domain):
            return lock
        lock.release()
    raise RuntimeError(f"every private ROS domain in {min(candidates)}..{max(candidates)} "
                       f"is claimed by another run (locks in {lock_dir()}) or has other "
                       "nodes on it")
