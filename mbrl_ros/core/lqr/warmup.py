"""Load (or, on the first run ever, compile) every LQR kernel once per process, before any
control loop needs it (see :mod:`.jit`)."""
from __future__ import annotations

import threading
import time

import numpy as np

from mbrl_ros.core.lqr.kernels import (boxqp_kernel, prepare_kernel, riccati_kernel,
                                       spd_inverse_kernel)
from mbrl_ros.core.lqr.rollout import (affine_rollout_kernel, kernel_rollout_kernel,
                                       mlp_rollout_kernel)

__all__ = ["KERNELS", "warm_up", "warm_up_seconds"]

KERNELS = (boxqp_kernel, prepare_kernel, riccati_kernel, affine_rollout_kernel,
           spd_inverse_kernel, mlp_rollout_kernel, kernel_rollout_kernel)
_warm_lock = threading.Lock()
_warm_seconds: float | None = None


def _exercise() -> None:
    """Call every kernel once with the argument types the wrappers use."""
    H = np.array([[2.0, 0.5], [0.5, 1.0]])
    g = np.array([1.0, -3.0])
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    x, free, R = np.empty(2), np.empty(2, np.bool_), np.empty((2, 2))
    boxqp_kernel(H, g, lo, hi, np.zeros(2), True, 100, 1e-8, 1e-8, 0.6, 1e-22, 0.1,
                 x, free, R)
    T, nx, nu = 2, 2, 1
    M, N = 1 + nx, 1 + nx + nu
    F = np.zeros((T, M, N))
    F[:, 0, 0] = 1.0
    F[:, 1:, 1:] = 0.5
    L = np.zeros((T, N, N))
    L[:, 1:, 1:] = np.eye(nx + nu)
    FtFu = np.zeros((T, nu, N))
    Vf = np.eye(M)
    prepare_kernel(F[:, 1:, 1:M].copy(), F[:, 1:, M:].copy(), np.zeros((T, nx)),
                   np.zeros((T, nu)), np.eye(nx)[None].repeat(T, 0),
                   np.eye(nu)[None].repeat(T, 0), np.zeros((T, nu, nx)), np.zeros(nx),
                   np.eye(nx), F, L, Vf)
    du = np.ones((T, nu))
    riccati_kernel(F, L, FtFu, Vf, 0.0, True, -du, du, np.empty((T, nu, M)),
                   np.empty((T, nu, N)), np.empty((T, nu, nu)))
    spd_inverse_kernel(np.ones((T, nu, nu)) + np.eye(nu), np.empty((T, nu, nu)))
    affine_rollout_kernel(np.eye(nx), np.ones((nx, nu)), np.zeros(nx), np.ones(nx),
                          np.zeros((3, T, nu)), np.zeros((T, nx)), np.zeros((T, nu, nx)),
                          True, -du, du, np.empty((3, T + 1, nx)))
    E, H = 2, 3
    for act in (0, 1, 2):
        mlp_rollout_kernel(np.zeros(nx), np.zeros(nu), np.ones((E, nx + nu, H)),
                           np.zeros((E, H)), np.ones((E, 1, H, H)), np.zeros((E, 1, H)),
                           np.ones((E, H, nx)), np.zeros(nx), np.zeros((nx + nu, nx)), act,
                           np.ones(nx), np.zeros((3, T, nu)), np.zeros((T, nx)),
                           np.zeros((T, nu, nx)), True, -du, du,
                           np.empty((3, T + 1, nx)))
    Q, n = 2, 3
    for kind in (0, 1, 2):
        kernel_rollout_kernel(np.zeros(nx + nu), np.ones(nx + nu), np.zeros((nx + nu, nx)),
                              np.zeros(nx), np.zeros((1, n, nx + nu)), np.ones((Q, nx + nu)),
                              np.ones((Q, n)), np.ones((Q, nx)), kind, np.ones(nx),
                              np.zeros(nx), np.ones(nx), np.zeros((3, T, nu)),
                              np.zeros((T, nx)), np.zeros((T, nu, nx)), True, -du, du,
                              np.empty((3, T + 1, nx)))


def warm_up() -> float:
    """Load (or compile, on the first run without a cache) every kernel; idempotent and
    thread-safe. Returns the seconds this process spent on it (0 after the first call)."""
    global _warm_seconds
    with _warm_lock:
        if _warm_seconds is not None:
            return 0.0
        tic = time.perf_counter()
        _exercise()
        _warm_seconds = time.perf_counter() - tic
        return _warm_seconds


def warm_up_seconds() -> float | None:
    """Seconds the first :func:`warm_up` of this process took (None before it ran)."""
    return _warm_seconds
