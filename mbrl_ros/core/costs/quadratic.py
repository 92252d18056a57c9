"""Trajectory costs with analytic first and second derivatives.

Gradient-based planners (iLQR, :mod:`mbrl_ros.core.planners.ilqr`) need the derivatives of
the per-step cost along a whole trajectory at once; sampling planners (CEM, MPPI) evaluate
the same cost on batches of K candidate trajectories held as numpy arrays or torch tensors.
Both are served by one class per cost term so the formula is written once:

* :meth:`Cost.stage` / :meth:`Cost.terminal` and their ``*_derivatives`` work on one
  trajectory in numpy float64;
* :meth:`Cost.stage_batch` / :meth:`Cost.terminal_batch` work on (K, T, ·) batches of numpy
  arrays or torch tensors (same dtype/device as the input), using only operations both
  libraries share.

Conventions: a trajectory of horizon T has states xs (T+1, nx) and actions us (T, nu); the
total cost is ``sum_t stage(xs[t], us[t]) + terminal(xs[T])``. Stage costs are per control
step (not multiplied by dt), so weights are "cost per step".

Costs are immutable: methods that change a parameter (:meth:`QuadraticCost.with_target`)
return a new object, so a planner running in one thread can keep the cost it was given while
another thread sets a new target.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from mbrl_ros.core.types import is_torch

__all__ = ["Cost", "QuadraticCost", "JointLimitBarrier", "SumCost"]

Array = Any  # numpy.ndarray or torch.Tensor




def _frozen(a: Any, shape: tuple[int, ...] | None = None, name: str = "") -> np.ndarray:
    out = np.array(a, dtype=np.float64)
    if shape is not None and out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    out.setflags(write=False)
    return out


class Cost(ABC):
    """A trajectory cost ``sum_t l(x_t, u_t) + l_f(x_T)`` with analytic derivatives.

    Subclasses implement the numpy single-trajectory methods and :meth:`stage_batch` /
    :meth:`terminal_batch` for numpy or torch batches. Costs add: ``c1 + c2`` is a
    :class:`SumCost`.
    """

    def __init__(self, nx: int, nu: int):
        self.nx = int(nx)
        self.nu = int(nu)
        self._torch_cache: dict[tuple, Any] = {}

    # -- single trajectory (numpy float64) -----------------------------------------
    @abstractmethod
    def stage(self, xs: np.ndarray, us: np.ndarray) -> np.ndarray:
        """Per-step cost.

        Args:
            xs: (T, nx) states; us: (T, nu) actions.

        Returns:
            (T,) cost of each step.
        """

    @abstractmethod
    def terminal(self, x: np.ndarray) -> float:
        """Terminal cost of the final state x (nx,)."""

    @abstractmethod
    def stage_derivatives(self, xs: np.ndarray, us: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                     np.ndarray]:
        """Derivatives of :meth:`stage` at every step.

        Returns:
            lx (T, nx), lu (T, nu), lxx (T, nx, nx), luu (T, nu, nu), lux (T, nu, nx). The
            arrays may be read-only broadcast views; copy before writing into them.
        """

    @abstractmethod
    def terminal_derivatives(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient (nx,) and Hessian (nx, nx) of :meth:`terminal` at x (nx,)."""

    # -- batches (numpy or torch) ----------------------------------------------------
    @abstractmethod
    def stage_batch(self, xs: Array, us: Array) -> Array:
        """Summed stage cost of K trajectories.

        Args:
            xs: (K, T, nx) states; us: (K, T, nu) actions; numpy arrays or torch tensors.

        Returns:
            (K,) ``sum_t stage(xs[k, t], us[k, t])``, same library/dtype/device as ``xs``.
        """

    @abstractmethod
    def terminal_batch(self, x: Array) -> Array:
        """Terminal cost of K final states x (K, nx) -> (K,), numpy or torch."""

    # -- helpers -----------------------------------------------------------------------
    def total(self, xs: np.ndarray, us: np.ndarray) -> float:
        """Cost of one trajectory: xs (T+1, nx), us (T, nu) -> scalar."""
        return float(np.sum(self.stage(xs[:-1], us)) + self.terminal(xs[-1]))

    def _const(self, a: np.ndarray, like: Array) -> Array:
        """``a`` as an array usable with ``like`` (cached torch copy on like's device)."""
        if not is_torch(like):
            return a
        key = (id(a), like.dtype, like.device)
        t = self._torch_cache.get(key)
        if t is None:
            import torch
            # A writable copy: the cost's arrays are read-only, which torch warns about.
            t = torch.as_tensor(np.array(a), dtype=like.dtype, device=like.device)
            self._torch_cache[key] = t
        return t

    def __add__(self, other: "Cost") -> "SumCost":
        if not isinstance(other, Cost):
            return NotImplemented
        return SumCost([self, other])


def _quad_batch(d: Array, W: Array) -> Array:
    """0.5 d' W d over the last axis of d (..., n) -> (...)."""
    return 0.5 * ((d @ W) * d).sum(-1)


class QuadraticCost(Cost):
    """``l = 0.5 e' Q e + 0.5 (u - u_ref)' R (u - u_ref)``, ``l_f = 0.5 e' Qf e`` with the
    state error ``e = x - x*``.

    Angles of continuous joints (``periodic`` state indices, e.g. a cart-pole's pole) use the
    chord ``e_i = 2 sin(w_i / 2)`` of the wrapped error ``w_i = x_i - x*_i`` in [-pi, pi)
    instead: ``e_i^2 = 2 (1 - cos(x_i - x*_i))``, so the cost is 2*pi-periodic (a pole upright
    after a full turn costs nothing), equals the quadratic for small errors and, with a
    weight that does not couple a periodic index to others (diagonal Q, as the MPC's), is
    smooth everywhere (a wrapped quadratic error is not: its slope jumps at +-pi, the
    hanging start of a swing-up). Derivatives use the Gauss-Newton Hessian ``J' Q J`` with
    ``J = diag(de/dx)``, ``de_i/dx_i = cos(w_i / 2) >= 0``: positive semi-definite
    everywhere, as DDP needs.

    Args:
        Q: (nx, nx) symmetric PSD state weight per step.
        R: (nu, nu) symmetric PSD action weight per step.
        Qf: (nx, nx) symmetric PSD terminal weight (default: Q).
        x_target: (nx,) target state x* (default zeros).
        u_ref: (nu,) reference action, e.g. gravity compensation (default zeros).
        periodic: state indices whose error wraps (angles of continuous joints).
    """

    def __init__(self, Q: np.ndarray, R: np.ndarray, Qf: np.ndarray | None = None,
                 x_target: np.ndarray | None = None, u_ref: np.ndarray | None = None,
                 periodic: Sequence[int] = ()):
        Q = np.asarray(Q, dtype=np.float64)
        R = np.asarray(R, dtype=np.float64)
        nx, nu = Q.shape[0], R.shape[0]
        super().__init__(nx, nu)
        # Symmetrised so that the Hessian is exactly Q (the form only sees the symmetric part).
        self.Q = _frozen(0.5 * (Q + Q.T), (nx, nx), "Q")
        self.R = _frozen(0.5 * (R + R.T), (nu, nu), "R")
        Qf = self.Q if Qf is None else np.asarray(Qf, dtype=np.float64)
        self.Qf = _frozen(0.5 * (Qf + Qf.T), (nx, nx), "Qf")
        self.x_target = _frozen(np.zeros(nx) if x_target is None else x_target, (nx,),
                                "x_target")
        self.u_ref = _frozen(np.zeros(nu) if u_ref is None else u_ref, (nu,), "u_ref")
        periodic = np.unique(np.asarray(periodic, dtype=np.intp).reshape(-1))
        if np.any(periodic < 0) or np.any(periodic >= nx):
            raise ValueError(f"periodic indices {periodic.tolist()} out of range for nx={nx}")
        self.periodic = periodic
        self._pmask = _frozen(np.isin(np.arange(nx), periodic).astype(np.float64))

    @classmethod
    def diagonal(cls, q: Sequence[float], r: Sequence[float], qf: Sequence[float] | None = None,
                 x_target: np.ndarray | None = None, u_ref: np.ndarray | None = None,
                 periodic: Sequence[int] = ()) -> "QuadraticCost":
        """Diagonal weights: q (nx,), r (nu,), qf (nx,) (default q)."""
        return cls(np.diag(q), np.diag(r), None if qf is None else np.diag(qf), x_target, u_ref,
                   periodic)

    def with_target(self, x_target: np.ndarray) -> "QuadraticCost":
        """A copy with a new target state x_target (nx,)."""
        return QuadraticCost(self.Q, self.R, self.Qf, x_target, self.u_ref, self.periodic)

    def with_reference_action(self, u_ref: np.ndarray) -> "QuadraticCost":
        """A copy with a new reference action u_ref (nu,)."""
        return QuadraticCost(self.Q, self.R, self.Qf, self.x_target, u_ref, self.periodic)

    def _error(self, x):
        """State error e (..., nx) of numpy or torch states (chord on periodic indices)."""
        d = x - self._const(self.x_target, x)
        if not self.periodic.size:
            return d
        m = self._const(self._pmask, x)
        # Blend instead of index assignment: the same code for numpy and torch batches.
        return d + m * (2.0 * _half_sin(_wrap(d)) - d)

    def _error_jacobian(self, x: np.ndarray) -> np.ndarray:
        """de/dx (..., nx): 1, or cos(w/2) on periodic indices (numpy)."""
        w = _wrap(x - self.x_target)
        return 1.0 + self._pmask * (np.cos(0.5 * w) - 1.0)

    def stage(self, xs, us):
        du = us - self.u_ref
        return _quad_batch(self._error(xs), self.Q) + _quad_batch(du, self.R)

    def terminal(self, x):
        e = self._error(np.asarray(x, dtype=np.float64))
        return float(0.5 * e @ self.Qf @ e)

    def stage_derivatives(self, xs, us):
        T = xs.shape[0]
        lu = (us - self.u_ref) @ self.R
        luu = np.broadcast_to(self.R, (T, self.nu, self.nu))
        lux = np.broadcast_to(np.zeros((self.nu, self.nx)), (T, self.nu, self.nx))
        e = self._error(xs)
        if not self.periodic.size:
            return e @ self.Q, lu, np.broadcast_to(self.Q, (T, self.nx, self.nx)), luu, lux
        J = self._error_jacobian(xs)                              # (T, nx)
        lx = (e @ self.Q) * J
        lxx = J[:, :, None] * self.Q[None] * J[:, None, :]        # Gauss-Newton J' Q J
        return lx, lu, lxx, luu, lux

    def terminal_derivatives(self, x):
        x = np.asarray(x, dtype=np.float64)
        e = self._error(x)
        if not self.periodic.size:
            return e @ self.Qf, self.Qf
        J = self._error_jacobian(x)
        return (e @ self.Qf) * J, J[:, None] * self.Qf * J[None, :]

    def stage_batch(self, xs, us):
        du = us - self._const(self.u_ref, us)
        return (_quad_batch(self._error(xs), self._const(self.Q, xs))
                + _quad_batch(du, self._const(self.R, us))).sum(-1)

    def terminal_batch(self, x):
        return _quad_batch(self._error(x), self._const(self.Qf, x))


def _wrap(d: Array) -> Array:
    """Angles wrapped to [-pi, pi), numpy or torch."""
    if is_torch(d):
        return (d + np.pi).remainder(2 * np.pi) - np.pi
    return np.mod(d + np.pi, 2 * np.pi) - np.pi


def _half_sin(d: Array) -> Array:
    """sin(d / 2) for numpy arrays or torch tensors."""
    return (0.5 * d).sin() if is_torch(d) else np.sin(0.5 * d)


class JointLimitBarrier(Cost):
    """Quadratic penalty on joint positions that leave ``[lo + margin, hi - margin]``:
    ``l = 0.5 w sum_j (max(0, q_j - (hi_j - m))^2 + max(0, (lo_j + m) - q_j)^2)``.

    Zero inside the safe band, so it does not bias the optimum away from the limits; its
    gradient is continuous, and its Hessian is w on the joints outside the band, which is
    the Gauss-Newton curvature DDP needs (as Crocoddyl's ActivationModelQuadraticBarrier).
    The same penalty is applied to the terminal state.

    Args:
        lo, hi: (m,) joint position limits [rad or m].
        nx, nu: state and action dimensions.
        indices: (m,) positions of the joints in the state (default 0..m-1).
        margin: distance inside the limits where the penalty starts [rad or m].
        weight: w, cost per squared violation per step.
        terminal_weight: w for the terminal state (default ``weight``).
    """

    def __init__(self, lo: Sequence[float], hi: Sequence[float], nx: int, nu: int,
                 indices: Sequence[int] | None = None, margin: float = 0.0,
                 weight: float = 1e3, terminal_weight: float | None = None):
        super().__init__(nx, nu)
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        m = lo.shape[0]
        idx = np.arange(m) if indices is None else np.asarray(indices, dtype=np.intp)
        if hi.shape != (m,) or idx.shape != (m,):
            raise ValueError(f"lo, hi and indices must have the same length, got {lo.shape}, "
                             f"{hi.shape}, {idx.shape}")
        if np.any(idx < 0) or np.any(idx >= nx):
            raise ValueError(f"indices {idx.tolist()} out of range for nx={nx}")
        if np.any(lo + margin > hi - margin):
            raise ValueError("margin leaves an empty band: lo + margin > hi - margin")
        self.indices = idx
        self.lo = _frozen(lo + margin)
        self.hi = _frozen(hi - margin)
        self.weight = float(weight)
        self.terminal_weight = self.weight if terminal_weight is None else float(terminal_weight)
        # Selection matrix so the batch path needs only matmul (no fancy indexing in torch).
        S = np.zeros((nx, m))
        S[idx, np.arange(m)] = 1.0
        self._S = _frozen(S)

    def _violations(self, q):
        if is_torch(q):
            return ((q - self._const(self.hi, q)).clamp(min=0),
                    (self._const(self.lo, q) - q).clamp(min=0))
        return np.maximum(q - self.hi, 0.0), np.maximum(self.lo - q, 0.0)

    def _penalty(self, q, w):
        up, down = self._violations(q)
        return 0.5 * w * ((up * up).sum(-1) + (down * down).sum(-1))

    def stage(self, xs, us):
        return self._penalty(xs[:, self.indices], self.weight)

    def terminal(self, x):
        return float(self._penalty(np.asarray(x)[self.indices], self.terminal_weight))

    def _derivs(self, q, w):
        up, down = self._violations(q)
        g = w * (up - down)
        h = w * ((up > 0) | (down > 0))
        return g, h

    def stage_derivatives(self, xs, us):
        T = xs.shape[0]
        g, h = self._derivs(xs[:, self.indices], self.weight)
        lx = np.zeros((T, self.nx))
        lx[:, self.indices] = g
        lxx = np.zeros((T, self.nx, self.nx))
        lxx[:, self.indices, self.indices] = h
        zu = np.zeros((T, self.nu))
        return (lx, zu, lxx, np.broadcast_to(np.zeros((self.nu, self.nu)), (T, self.nu, self.nu)),
                np.broadcast_to(np.zeros((self.nu, self.nx)), (T, self.nu, self.nx)))

    def terminal_derivatives(self, x):
        g, h = self._derivs(np.asarray(x)[self.indices], self.terminal_weight)
        lx = np.zeros(self.nx)
        lx[self.indices] = g
        lxx = np.zeros((self.nx, self.nx))
        lxx[self.indices, self.indices] = h
        return lx, lxx

    def stage_batch(self, xs, us):
        return self._penalty(xs @ self._const(self._S, xs), self.weight).sum(-1)

    def terminal_batch(self, x):
        return self._penalty(x @ self._const(self._S, x), self.terminal_weight)


class SumCost(Cost):
    """Sum of cost terms with the same (nx, nu)."""

    def __init__(self, terms: Sequence[Cost]):
        flat: list[Cost] = []
        for c in terms:
            flat.extend(c.terms if isinstance(c, SumCost) else [c])
        if not flat:
            raise ValueError("SumCost needs at least one term")
        nx, nu = flat[0].nx, flat[0].nu
        if any((c.nx, c.nu) != (nx, nu) for c in flat):
            raise ValueError("all cost terms must have the same (nx, nu), got "
                             f"{[(c.nx, c.nu) for c in flat]}")
        super().__init__(nx, nu)
        self.terms: tuple[Cost, ...] = tuple(flat)

    def stage(self, xs, us):
        return sum(c.stage(xs, us) for c in self.terms)

    def terminal(self, x):
        return float(sum(c.terminal(x) for c in self.terms))

    def stage_derivatives(self, xs, us):
        parts = [c.stage_derivatives(xs, us) for c in self.terms]
        # np.add of the first two allocates a fresh writable result (inputs may be views).
        return tuple(np.add(parts[0][i], sum(p[i] for p in parts[1:]))
                     if len(parts) > 1 else np.array(parts[0][i]) for i in range(5))

    def terminal_derivatives(self, x):
        parts = [c.terminal_derivatives(x) for c in self.terms]
        return (sum(p[0] for p in parts), sum(p[1] for p in parts))

    def stage_batch(self, xs, us):
        return sum(c.stage_batch(xs, us) for c in self.terms)

    def terminal_batch(self, x):
        return sum(c.terminal_batch(x) for c in self.terms)
