"""Time-varying linear-Gaussian feedback policy: the result of one iLQR/iLQG plan.

At step i = floor((t - t0) / dt) (clamped to [0, T-1]):

    u = clip(k[i] + K[i] (x - xbar[i]) + eps,  u_min, u_max),   eps ~ N(0, cov[i]).

``xbar``/``k`` are the planner's nominal states and controls, ``K`` its feedback gains. The
same policy in the convention of Levine & Abbeel's GPS code (cbfinn/gps
``LinearGaussianPolicy``: u ~ N(K x + k, pol_covar)) has the *offset*
``k_gps = k - K xbar``, precomputed here as :attr:`LinearGaussianPolicy.k_gps`, so that GPS
KL-constrained updates can use (K, k_gps, cov) directly; the deviation form (k, xbar) is kept
because it is what warm-starting and plan hand-over need.

The policy is immutable (arrays are read-only) so a fast control timer can evaluate it while
the planner builds the next one, and swap references atomically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LinearGaussianPolicy", "initial_controller", "imitation_targets"]


def _ro(a, shape, name) -> np.ndarray:
    out = np.array(a, dtype=np.float64, order="C")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class LinearGaussianPolicy:
    """u_t = clip(k[t] + K[t] (x - xbar[t]) (+ noise), u_min, u_max).

    Attributes:
        K: (T, nu, nx) feedback gains.
        k: (T, nu) nominal controls.
        xbar: (T, nx) nominal states the gains act around.
        cov: (T, nu, nu) controller covariance (iLQG/GPS: inverse of Q_uu) or None.
        t0: time of step 0 [s].
        dt: step duration [s].
        u_min, u_max: (nu,) action limits (may be +-inf).
        k_gps: (T, nu) offset in GPS convention, k - K xbar (derived).
    """
    K: np.ndarray
    k: np.ndarray
    xbar: np.ndarray
    cov: np.ndarray | None
    t0: float
    dt: float
    u_min: np.ndarray
    u_max: np.ndarray
    k_gps: np.ndarray = field(init=False, repr=False)
    _chol: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self):
        K = np.asarray(self.K)
        if K.ndim != 3:
            raise ValueError(f"K must have shape (T, nu, nx), got {K.shape}")
        T, nu, nx = K.shape
        if T < 1:
            raise ValueError("policy needs at least one step")
        if not (self.dt > 0 and math.isfinite(self.dt)):
            raise ValueError(f"dt must be positive and finite, got {self.dt}")
        s = object.__setattr__
        s(self, "K", _ro(K, (T, nu, nx), "K"))
        s(self, "k", _ro(self.k, (T, nu), "k"))
        s(self, "xbar", _ro(self.xbar, (T, nx), "xbar"))
        s(self, "u_min", _ro(np.broadcast_to(self.u_min, (nu,)), (nu,), "u_min"))
        s(self, "u_max", _ro(np.broadcast_to(self.u_max, (nu,)), (nu,), "u_max"))
        if np.any(self.u_min > self.u_max):
            raise ValueError("u_min must be <= u_max")
        s(self, "t0", float(self.t0))
        s(self, "dt", float(self.dt))
        # Precomputed so that action() is one matvec, one add and one clip.
        s(self, "k_gps", _ro(self.k - np.einsum("tij,tj->ti", self.K, self.xbar), (T, nu),
                             "k_gps"))
        if self.cov is None:
            s(self, "_chol", None)
        else:
            cov = _ro(self.cov, (T, nu, nu), "cov")
            s(self, "cov", cov)
            s(self, "_chol", _ro(np.linalg.cholesky(cov), (T, nu, nu), "cov"))

    @classmethod
    def from_gps(cls, K: np.ndarray, k_gps: np.ndarray, xbar: np.ndarray,
                 cov: np.ndarray | None, t0: float, dt: float, u_min: np.ndarray,
                 u_max: np.ndarray) -> "LinearGaussianPolicy":
        """The policy u ~ N(K x + k_gps, cov) of the GPS convention, kept in deviation form
        around the nominal states ``xbar`` (T, nx): k = k_gps + K xbar (the inverse of
        :attr:`k_gps`)."""
        K = np.asarray(K)
        return cls(K=K, k=k_gps + np.einsum("tij,tj->ti", K, xbar), xbar=xbar, cov=cov,
                   t0=t0, dt=dt, u_min=u_min, u_max=u_max)

    @property
    def horizon(self) -> int:
        """Number of steps T."""
        return self.K.shape[0]

    @property
    def nx(self) -> int:
        return self.K.shape[2]

    @property
    def nu(self) -> int:
        return self.K.shape[1]

    @property
    def t_end(self) -> float:
        """Time [s] at which the last step ends; later times reuse the last step."""
        return self.t0 + self.horizon * self.dt

    def index(self, t: float) -> int:
        """Step index of time t [s]: floor((t - t0)/dt) clamped to [0, T-1]. A relative
        tolerance of 1e-9 step keeps t = t0 + i*dt on step i despite rounding."""
        i = math.floor((t - self.t0) / self.dt + 1e-9)
        last = self.K.shape[0] - 1
        return 0 if i < 0 else (last if i > last else i)

    def mean(self, x: np.ndarray, t: float) -> np.ndarray:
        """Unclipped mean action K x + k_gps at time t [s] (nu,)."""
        i = self.index(t)
        return self.K[i] @ x + self.k_gps[i]

    def action(self, x: np.ndarray, t: float) -> np.ndarray:
        """Deterministic action (nu,) for state x (nx,) at time t [s], clipped to limits."""
        i = self.index(t)
        # np.dot and two ufuncs: about half the call overhead of @ and np.clip here.
        u = np.dot(self.K[i], x)
        u += self.k_gps[i]
        np.maximum(u, self.u_min, out=u)
        return np.minimum(u, self.u_max, out=u)

    def sample(self, x: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        """Action with exploration noise N(0, cov[i]) added before clipping (nu,).

        Raises:
            ValueError: the policy has no covariance.
        """
        if self._chol is None:
            raise ValueError("this policy has no covariance (cov is None); use action()")
        i = self.index(t)
        u = self.K[i] @ x + self.k_gps[i] + self._chol[i] @ rng.standard_normal(self.nu)
        np.maximum(u, self.u_min, out=u)
        return np.minimum(u, self.u_max, out=u)


def initial_controller(nx: int, nu: int, horizon: int, dt: float, std: float | np.ndarray,
                       u_min: np.ndarray, u_max: np.ndarray, K: np.ndarray | None = None,
                       k: np.ndarray | None = None, xbar: np.ndarray | None = None
                       ) -> LinearGaussianPolicy:
    """u ~ N(k + K (x - xbar), diag(std^2)), the same at every step (default K = 0, k = 0,
    xbar = 0: exploration around zero action) -- a GPS run's initial controller.

    Args:
        K: (nu, nx) gains; k: (nu,) nominal action (the offset in GPS form when xbar is 0);
        xbar: (nx,) state the gains act around; std: scalar or (nu,).
    """
    K = np.zeros((nu, nx)) if K is None else np.asarray(K, dtype=np.float64)
    k = np.zeros(nu) if k is None else np.asarray(k, dtype=np.float64)
    xbar = np.zeros((horizon, nx)) if xbar is None else \
        np.tile(np.asarray(xbar, dtype=np.float64), (horizon, 1))
    var = np.broadcast_to(np.asarray(std, dtype=np.float64) ** 2, (nu,))
    return LinearGaussianPolicy(K=np.tile(K, (horizon, 1, 1)), k=np.tile(k, (horizon, 1)),
                                xbar=xbar, cov=np.tile(np.diag(var), (horizon, 1, 1)), t0=0.0,
                                dt=dt, u_min=u_min, u_max=u_max)


def imitation_targets(policy: LinearGaussianPolicy, X: np.ndarray, u_min: np.ndarray,
                      u_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a global policy imitating ``policy`` is trained on at states X (N, T, nx) of
    steps 0..T-1: the mean actions K[t] x + k_gps[t] clipped to [u_min, u_max], (N, T, nu),
    and the weights, the precisions cov[t]^-1 of those steps, (N, T, nu, nu) (a read-only
    broadcast view).

    Raises:
        ValueError: the policy has no covariance.
    """
    if policy.cov is None:
        raise ValueError("this policy has no covariance (cov is None): no precisions")
    T = X.shape[1]
    mu = np.einsum("tij,ntj->nti", policy.K[:T], X) + policy.k_gps[:T]
    prec = np.linalg.inv(policy.cov[:T])
    return (np.clip(mu, u_min, u_max),
            np.broadcast_to(prec, (X.shape[0],) + prec.shape))
