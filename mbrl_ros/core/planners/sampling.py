"""Shared machinery of the sampling-based MPC planners (:mod:`.cem`, :mod:`.mppi`).

Both planners sample N action sequences (N, T, nu), roll each out through the dynamics model
from the current state, score it with the trajectory cost and update a mean plan. What is
shared lives here, written once:

* :func:`colored_noise` -- unit-variance Gaussian noise with power spectral density
  proportional to 1/f^beta along the time axis (white for beta = 0), the sampling noise of
  iCEM (Pinneri et al., "Sample-efficient Cross-Entropy Method for Real-time Planning",
  CoRL 2020), generated with the FFT method of Timmer & Koenig (A&A 1995) exactly as the
  ``colorednoise`` package (``powerlaw_psd_gaussian``) that iCEM uses.
* :class:`RolloutEngine` -- batched open-loop rollouts and their total cost, all in torch.
  Models with a torch ``propagate`` (the PETS ensemble, :mod:`mbrl_ros.core.models.ensemble`)
  are stepped in torch without numpy round trips, with trajectory sampling (Chua et al.,
  "Deep Reinforcement Learning in a Handful of Trials using Probabilistic Dynamics Models",
  NeurIPS 2018): under TS-1 a random elite member at every step, under TS-inf row r keeps
  elite member ``r % E`` for the whole horizon. A model with a whole-horizon ``rollout``
  (the ensemble: rows grouped by member once per rollout, normalisers folded into the
  weights) rolls the batch out in one call; otherwise ``propagate`` is called once per
  step. Any other model is stepped through its numpy ``predict`` with one conversion per
  rollout. The cost is evaluated once per rollout on the whole (N, T, .) batch
  (``Cost.stage_batch`` / ``terminal_batch``), one call instead of T.
* :class:`SamplingPlanner` -- the part of ``optimize`` both planners share: warm start from
  the shifted previous plan (the appended steps hold its final configuration,
  :func:`hold_action`), torch threads, no-grad, the seeded generator, the mean-action
  rollout of the final plan (``xbar`` of the returned
  :class:`~mbrl_ros.core.policies.linear_gaussian.LinearGaussianPolicy`: open loop, K = 0,
  or with ``feedback: lqr`` TV-LQR gains along it from the iLQR Riccati sweep), its cost
  and the model's disagreement along it; with ``refine: newton`` one line-searched
  Gauss-Newton step on the sampled plan first (the same sweep), which removes the
  steady-state offset sampling leaves near the goal.
* :class:`SampleBudget` -- with a deadline from the controller (real-time replanning), the
  number of sampled sequences per replan from the measured solve times.
"""
from __future__ import annotations

import functools
import inspect
import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbrl_ros.core.lqr import BackwardPass, BackwardResult, warm_up
from mbrl_ros.core.planners.base import Planner
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.settings import setting

__all__ = ["DTYPES", "FEEDBACK_MODES", "FILL_MODES", "PROPAGATION_MODES", "REFINE_MODES",
           "STD_UNITS",
           "RolloutEngine", "SampleBudget", "SamplingPlanner", "SamplingSettings", "colored_noise", "hold_action",
           "is_torch_model", "limit_scaled_std"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
FILL_MODES = ("hold", "repeat", "zero")
FEEDBACK_MODES = ("none", "lqr")
REFINE_MODES = ("none", "newton")
# Step sizes of the refinement's line search; 0 keeps the sampled plan.
REFINE_ALPHAS = (1.0, 0.5, 0.25, 0.0)
PROPAGATION_MODES = ("tsinf", "ts1", "expectation")
STD_UNITS = ("limit_fraction", "absolute")
# Modes a model's whole-horizon ``rollout`` serves (see EnsembleModel.rollout).
ROLLOUT_MODES = ("tsinf", "ts1", "expectation")


@dataclass(frozen=True)
class SamplingSettings:
    """Settings every sampling planner has (subclassed by CEM and MPPI settings)."""
    horizon: int = setting(30, "planning horizon", unit="steps", low=1, high=100000)
    noise_beta: float = setting(
        0.0, "exponent of the sampling noise's power spectrum 1/f^beta along time (iCEM "
        "colored noise, Pinneri et al. 2020): 0 white, 1 pink, 2 brown; larger values give "
        "smoother action sequences", low=0.0, high=6.0, dynamic=True)
    propagation: str = setting(
        "ts1", "how models with a torch propagate() (ensembles) step the samples: 'ts1' (PETS "
        "TS-1), 'tsinf' (PETS TS-inf, member = row % E) or 'expectation'; docs/PLANNERS.md",
        choices=PROPAGATION_MODES, dynamic=True)
    n_particles: int = setting(
        1, "particles per sampled action sequence (PETS: 20); a sequence's cost is the mean over "
        "its particles; P multiplies the time per iteration; docs/PLANNERS.md",
        low=1, high=10_000, dynamic=True)
    aleatoric: bool = setting(
        False, "in 'tsinf'/'ts1', add each member's predicted Gaussian noise to the samples "
        "(PETS); ignored by models whose propagate() has no 'sample' argument", dynamic=True)
    nominal_rollout: bool = setting(
        True, "roll the returned plan out with the model's mean for the policy's xbar, cost and "
        "disagreement (one rollout); false: the weighted mean of the last iteration's samples "
        "(free)",
        dynamic=True)
    warm_start_fill: str = setting(
        "hold", "actions appended to the shifted previous plan beyond its horizon: 'hold' (its "
        "final configuration at rest under the model), 'repeat' its last action, or 'zero'; "
        "docs/PLANNERS.md", choices=FILL_MODES,
        dynamic=True)
    feedback: str = setting(
        "none", "gains of the returned policy u = u_t + K_t (x - xbar_t): 'none' (open loop) or "
        "'lqr' (time-varying LQR gains along the plan, as tube MPPI); docs/PLANNERS.md",
        choices=FEEDBACK_MODES,
        dynamic=True)
    refine: str = setting(
        "none", "local refinement of the sampled plan: 'none', or 'newton' (one line-searched "
        "Gauss-Newton/iLQR step on it; removes the steady-state offset); docs/PLANNERS.md",
        choices=REFINE_MODES, dynamic=True)
    adapt_samples: bool = setting(
        True, "with a deadline from the controller (timer mode: 1/plan_rate), sample fewer "
        "sequences per replan when solves run late (none: the configured count); "
        "docs/PLANNERS.md", dynamic=True)
    min_samples: int = setting(
        32, "adapt_samples: the fewest sequences a replan samples, however late it runs",
        low=2, high=1_000_000, dynamic=True)
    deadline_fraction: float = setting(
        0.8, "adapt_samples: the share of the deadline a replan aims to use (the rest is "
        "headroom for the variation of solve times)", low=0.05, high=1.0, dynamic=True)
    seed: int = setting(0, "seed of the planner's torch generator (set again by reset())",
                        low=0)
    threads: int = setting(
        1, "torch intra-op threads while optimizing (0: leave torch's setting); restored "
        "afterwards", low=0, high=256)
    dtype: str = setting("float32", "floating-point type of samples, rollouts and costs "
                         "(torch models step in their own torch_dtype)", choices=tuple(DTYPES))


class SampleBudget:
    """Sampled sequences per replan from measured solve times against a deadline.

    Clock-free (the planner passes the times it measured), so it can be tested with
    injected times. A replan's time is modelled as ``fixed + per_sample * n``: the sampled
    rollouts grow with the number of samples n, the rest (warm start, nominal rollout,
    feedback gains) does not. After a replan that took ``total`` seconds, ``sampled`` of
    them in the n-sample rollouts, the next count is the n that would have fit into
    ``fraction * deadline``: taken at once when it is lower (a late replan is cut back
    in the next one), approached by at most ``growth`` x per replan when it is higher
    (a single quick replan does not restore everything), within [n_min, n_max].

    Args:
        n_max: the configured count (also the start).
        n_min: the floor.
        fraction: share of the deadline to aim for.
        growth: largest factor between consecutive counts when they grow (> 1).
    """

    def __init__(self, n_max: int, n_min: int, fraction: float = 0.8, growth: float = 1.5):
        if n_max < 1 or n_min < 1:
            raise ValueError(f"sample counts must be >= 1, got n_max {n_max}, n_min {n_min}")
        if not (0.0 < fraction <= 1.0) or not growth > 1.0:
            raise ValueError(f"need 0 < fraction <= 1 and growth > 1, got {fraction}, "
                             f"{growth}")
        self.n_max, self.n_min = int(n_max), min(int(n_min), int(n_max))
        self.fraction, self.growth = float(fraction), float(growth)
        self.n = self.n_max

    def configure(self, n_max: int, n_min: int, fraction: float) -> None:
        """New limits (settings changed at run time); the count is kept within them."""
        self.n_max, self.n_min = int(n_max), min(int(n_min), int(n_max))
        self.fraction = float(fraction)
        self.n = min(max(self.n, self.n_min), self.n_max)

    def update(self, n: int, total: float, sampled: float, deadline: float) -> int:
        """Record a replan of ``n`` samples that took ``total`` seconds, ``sampled`` of them
        in the sampled rollouts, against ``deadline`` seconds; returns the next count.
        Times that are not finite or not positive leave the count as it is."""
        if not (n > 0 and math.isfinite(total) and math.isfinite(sampled) and total > 0
                and sampled > 0 and deadline > 0):
            return self.n
        per_sample = sampled / n
        fixed = max(total - sampled, 0.0)
        fits = (self.fraction * deadline - fixed) / per_sample
        if fits < n:
            target = fits
        else:
            target = min(fits, n * self.growth)
        self.n = int(min(max(math.floor(target), self.n_min), self.n_max))
        return self.n


def colored_noise(n: int, T: int, nu: int, beta: float, generator: torch.Generator | None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise, unit variance per element, power spectrum ~ 1/f^beta along time.

    Each of the n * nu sequences of length T is independent. beta = 0 (or T < 2) is white
    noise. As ``colorednoise.powerlaw_psd_gaussian`` (the noise iCEM samples, Pinneri et
    al. 2020), random Fourier coefficients are scaled by f^(-beta/2) with the lowest
    frequency cut at 1/T and transformed back; unlike it, the result is divided by its
    exact standard deviation *including* the zero-frequency term, so the variance is 1
    (colorednoise's is about 1.3 for beta = 2 and T = 30) and a planner's noise_sigma means
    what it says.

    Args:
        n: number of sequences (samples); T: steps; nu: action dimension.
        beta: spectral exponent >= 0.
        generator: torch generator (None: torch's global one).
        dtype: floating-point type of the result.

    Returns:
        (n, T, nu) tensor.
    """
    if beta == 0.0 or T < 2:
        return torch.randn((n, T, nu), generator=generator, dtype=dtype)
    f = torch.fft.rfftfreq(T, dtype=torch.float64)
    f[0] = f[1]   # f[1] = 1/T: the spectrum is flat below the lowest resolvable frequency
    scale = f ** (-beta / 2.0)
    # Variance of irfft's output: the real DC (and, for even T, Nyquist) coefficient of
    # variance 2 s^2 contributes 2 s^2 / T^2, every other frequency 4 s^2 / T^2.
    power = 4.0 * scale ** 2
    power[0] = 2.0 * scale[0] ** 2
    if T % 2 == 0:
        power[-1] = 2.0 * scale[-1] ** 2
    sigma = math.sqrt(float(power.sum())) / T
    scale = scale.to(dtype)
    nf = f.shape[0]
    re = torch.randn((n, nu, nf), generator=generator, dtype=dtype) * scale
    im = torch.randn((n, nu, nf), generator=generator, dtype=dtype) * scale
    # DC (and Nyquist for even T) components of a real signal are real: their imaginary
    # part is dropped and the real part scaled by sqrt(2) to keep their power.
    im[..., 0] = 0.0
    re[..., 0] *= math.sqrt(2.0)
    if T % 2 == 0:
        im[..., -1] = 0.0
        re[..., -1] *= math.sqrt(2.0)
    y = torch.fft.irfft(torch.complex(re, im), n=T, dim=-1) / sigma
    return y.transpose(1, 2).contiguous()


def is_torch_model(model: Any) -> bool:
    """True if the model steps torch tensors (``propagate`` and ``torch_dtype``)."""
    return callable(getattr(model, "propagate", None)) and hasattr(model, "torch_dtype")


def limit_scaled_std(values: tuple[float, ...], units: str, u_min: np.ndarray,
                     u_max: np.ndarray, name: str) -> np.ndarray:
    """Per-action standard deviation (nu,) from a setting.

    Args:
        values: one value for every action, or one per action (nu,).
        units: 'limit_fraction' (times half the action range (u_max - u_min) / 2, the
            effort limit for symmetric limits) or 'absolute' (action units).
        u_min, u_max: (nu,) action limits.
        name: setting name for error messages.

    Raises:
        ValueError: wrong length, non-positive values, or 'limit_fraction' with infinite
            limits.
    """
    nu = u_min.shape[0]
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size not in (1, nu):
        raise ValueError(f"{name} needs 1 or {nu} values, got {v.size}")
    if np.any(v <= 0) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be positive and finite, got {v.tolist()}")
    v = np.broadcast_to(v, (nu,)).copy()
    if units == "absolute":
        return v
    half = 0.5 * (u_max - u_min)
    if not np.all(np.isfinite(half)) or np.any(half <= 0):
        raise ValueError(f"{name} in units 'limit_fraction' needs finite, non-empty action "
                         f"limits (got u_min {u_min.tolist()}, u_max {u_max.tolist()}); use "
                         "units 'absolute'")
    return v * half


def hold_action(model: Any, x: np.ndarray, u: np.ndarray, u_min: np.ndarray,
                u_max: np.ndarray) -> np.ndarray | None:
    """The action that holds the configuration of x = [q, qd] at rest under the model.

    One secant (Gauss-Newton) step from u on the next velocities of [q, 0]: with
    qd'(u) = B_v u + c estimated from one batched ``predict`` of nu + 1 rows (u, and u
    with each action moved by a tenth of its half range, or by 1 with infinite limits),
    the least-squares solution of qd' = 0 (the minimum-norm one for underactuated
    systems), clipped into the limits. Exact for models affine in the action (rigid
    bodies: gravity and bias torques); a finite step rather than a derivative keeps
    float32 networks' rounding out of B_v. Cost: one predict call, or for torch models one
    ``propagate(..., 'expectation')`` (a 5 x 4x200 ensemble, nx = 14: ~0.5 ms; its full
    ``linearize`` ~2 ms).

    Args:
        model: a DynamicsModel (``predict``), not time-varying.
        x: (nx,) state [q, qd], nx even; u: (nu,) starting action.
        u_min, u_max: (nu,) action limits.

    Returns:
        (nu,) action, or None if the model is time-varying, the state is not [q, qd]
        (odd nx) or not finite, or the prediction is not finite.
    """
    nx, nu = x.shape[0], u.shape[0]
    if nx % 2 or getattr(model, "time_varying", False) or not np.isfinite(x).all():
        return None
    n = nx // 2
    half = 0.5 * (np.asarray(u_max, dtype=np.float64) - np.asarray(u_min, dtype=np.float64))
    h = np.where(np.isfinite(half) & (half > 0), 0.1 * half, 1.0)
    X = np.repeat(np.asarray(x, dtype=np.float64)[None], nu + 1, axis=0)
    X[:, n:] = 0.0
    U = np.repeat(np.asarray(u, dtype=np.float64)[None], nu + 1, axis=0)
    U[1:] += np.diag(h)
    if is_torch_model(model):     # the mean without predict's variance and conversions
        dt = model.torch_dtype
        with torch.no_grad():
            V = model.propagate(torch.as_tensor(X, dtype=dt), torch.as_tensor(U, dtype=dt),
                                "expectation").to(torch.float64).numpy()[:, n:]
    else:
        V = np.asarray(model.predict(X, U)[0], dtype=np.float64)[:, n:]  # (nu+1, n)
    if not np.isfinite(V).all():
        return None
    B = ((V[1:] - V[0]) / h[:, None]).T                                    # (n, nu)
    du = np.linalg.lstsq(B, -V[0], rcond=None)[0]
    out = np.clip(u + du, u_min, u_max)
    return out if np.isfinite(out).all() else None


def _has_rollout(model: Any) -> bool:
    """True if the torch model rolls whole horizons out itself (``rollout``, as
    :meth:`mbrl_ros.core.models.ensemble.EnsembleModel.rollout`)."""
    return callable(getattr(model, "rollout", None))


@functools.lru_cache(maxsize=64)
def _takes(cls: type, method: str, parameter: str) -> bool:
    """True if ``cls.method`` has a parameter ``parameter`` (cached per class: signature
    inspection costs ~0.2 ms, a noticeable share of a 30 ms replan)."""
    try:
        return parameter in inspect.signature(getattr(cls, method)).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _rollout_disagrees(model: Any) -> bool:
    """True if the model's ``rollout`` can return its ``uncertainty`` along the states."""
    return _takes(type(model), "rollout", "disagreement")


def _accepts_sample(model: Any) -> bool:
    return _takes(type(model), "propagate", "sample")


def _member_count(model: Any, x0: torch.Tensor, u: torch.Tensor) -> int:
    """Number E of members a torch model's TS-inf indices range over."""
    n = getattr(model, "n_elite", None)
    if isinstance(n, int) and n > 0:
        return n
    # Only propagate/member_means are promised: ask the model once.
    return int(model.member_means(x0[None], u[None]).shape[0])


class RolloutEngine:
    """Batched open-loop rollouts of action sequences and their total costs.

    Buffers are kept between calls (one per shape/dtype), so the tensors returned by
    :meth:`run` are only valid until the next call with the same shapes.

    Args:
        nx, nu: state and action dimensions.
        dtype: torch dtype of the returned costs.
    """

    def __init__(self, nx: int, nu: int, dtype: torch.dtype):
        self.nx, self.nu, self.dtype = int(nx), int(nu), dtype
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._members: dict[tuple[int, int], torch.Tensor] = {}
        self._sample_arg: dict[type, bool] = {}
        self.model_calls = 0
        self.rows = 0
        self.mean_disagreement: np.ndarray | None = None

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        key = (shape, dtype)
        b = self._buffers.get(key)
        if b is None:
            if len(self._buffers) > 8:   # horizons/populations changed: drop stale buffers
                self._buffers.clear()
            b = self._buffers[key] = torch.empty(shape, dtype=dtype)
        return b

    def member_index(self, n: int, E: int) -> torch.Tensor:
        """(n,) long tensor r % E: row r keeps member r % E over the horizon (TS-inf)."""
        key = (n, E)
        idx = self._members.get(key)
        if idx is None:
            if len(self._members) > 8:
                self._members.clear()
            idx = self._members[key] = torch.arange(n) % E
        return idx

    def run(self, model: Any, cost: Any, x0: np.ndarray, U: torch.Tensor, mode: str,
            generator: torch.Generator | None, aleatoric: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll out N action sequences from x0 and return their total costs.

        Args:
            model: a DynamicsModel; torch models (``propagate``, and ``rollout`` if they
                have it) are stepped with ``mode`` ('tsinf': row r uses member r % E),
                others with ``predict`` (mean).
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost`.
            x0: (nx,) initial state.
            U: (N, T, nu) actions.
            mode: 'tsinf', 'ts1' or 'expectation' (torch models only).
            generator: torch generator for member draws and model noise.
            aleatoric: pass ``sample=aleatoric`` to ``propagate`` if it takes it.

        Returns:
            J (N,) total cost, ``+inf`` where the rollout or its cost is not finite, in
            ``self.dtype``; xs (T+1, N', nx) the states (time-major, a reused buffer; N' >= N,
            rows from N on are padding).
        """
        N, T, _ = U.shape
        if is_torch_model(model):
            return self._run_torch(model, cost, x0, U, mode, generator, aleatoric)
        Un = U.detach().to(torch.float64).numpy()
        Ut = np.ascontiguousarray(Un.transpose(1, 0, 2))          # (T, N, nu)
        xs = np.empty((T + 1, N, self.nx))
        xs[0] = x0
        tv = bool(getattr(model, "time_varying", False))
        predict = model.predict
        # Rollouts use only the mean: a model that can skip its variance says so.
        mean_only = None if tv else getattr(model, "predict_mean", None)
        with np.errstate(invalid="ignore", over="ignore"):
            for t in range(T):
                if mean_only is not None:
                    xs[t + 1] = mean_only(xs[t], Ut[t])
                else:
                    xs[t + 1] = predict(xs[t], Ut[t], t)[0] if tv else predict(xs[t], Ut[t])[0]
            J = np.asarray(cost.stage_batch(xs[:T].transpose(1, 0, 2), Un)
                           + cost.terminal_batch(xs[T]), dtype=np.float64)
        self.model_calls += T
        self.rows = N
        J = torch.from_numpy(J).to(self.dtype)
        return self._finite(J), torch.from_numpy(xs)

    def _run_torch(self, model, cost, x0, U, mode, generator, aleatoric):
        N, T, _ = U.shape
        mdtype = model.torch_dtype
        x0t = torch.as_tensor(x0, dtype=mdtype)
        kwargs: dict[str, Any] = {}
        cls = type(model)
        if cls not in self._sample_arg:
            self._sample_arg[cls] = _accepts_sample(model)
        member = None
        n = N
        if mode != "expectation":
            if self._sample_arg[cls]:
                kwargs["sample"] = bool(aleatoric)
            E = _member_count(model, x0t, U[0, 0].to(mdtype))
            # Pad to a multiple of E so every member gets the same number of rows: the
            # ensemble then runs one reshaped batch instead of a padded scatter/gather.
            n = -(-N // E) * E
            if mode == "tsinf":
                member = self.member_index(n, E)
        if n != N:
            U = torch.cat([U, U[:n - N]], dim=0)
        U = U.to(mdtype)
        xs = self._buffer((T + 1, n, self.nx), mdtype)
        if mode in ROLLOUT_MODES and _has_rollout(model):
            # The whole horizon in one call: no per-step regrouping (see EnsembleModel.rollout).
            model.rollout(x0t, U, mode, generator, out=xs, **kwargs)
        else:
            # Time-major copy so every step reads a contiguous (n, nu) block.
            Ut = U.transpose(0, 1).contiguous()
            xs[0] = x0t
            propagate = model.propagate
            x = xs[0].expand(n, self.nx)
            for t in range(T):
                x = propagate(x, Ut[t], mode, member, generator, **kwargs)
                xs[t + 1] = x
        self.model_calls += T
        self.rows = n
        J = cost.stage_batch(xs[:T, :N].transpose(0, 1), U[:N]) + cost.terminal_batch(xs[T, :N])
        return self._finite(J.to(self.dtype)), xs

    @staticmethod
    def _finite(J: torch.Tensor) -> torch.Tensor:
        # NaN/inf states give NaN/inf costs; both become +inf so they are never selected.
        return torch.where(torch.isfinite(J), J, torch.full_like(J, math.inf))

    def mean_rollout(self, model: Any, x0: np.ndarray, us: np.ndarray) -> np.ndarray:
        """Rollout of one action sequence with the model's mean prediction
        ('expectation' for torch models, ``predict`` otherwise).

        Args:
            x0: (nx,) initial state; us: (T, nu) actions.

        Returns:
            xs (T+1, nx) float64. If the model's ``rollout`` also returns its
            ``uncertainty`` along the way, :attr:`mean_disagreement` holds it ((T,)
            float64), else None.
        """
        T = us.shape[0]
        xs = np.empty((T + 1, self.nx))
        xs[0] = x0
        self.mean_disagreement = None
        if is_torch_model(model):
            mdtype = model.torch_dtype
            ut = torch.as_tensor(us, dtype=mdtype)
            out = self._buffer((T + 1, 1, self.nx), mdtype)
            x0t = torch.as_tensor(x0, dtype=mdtype)
            if _has_rollout(model):
                unc = self._buffer((T, 1), mdtype) if _rollout_disagrees(model) else None
                model.rollout(x0t, ut[None], "expectation", out=out,
                              **({} if unc is None else {"disagreement": unc}))
                if unc is not None:
                    self.mean_disagreement = unc[:, 0].to(torch.float64).numpy().copy()
            else:
                out[0, 0] = x0t
                x = out[0]
                for t in range(T):
                    x = model.propagate(x, ut[t:t + 1], "expectation")
                    out[t + 1] = x
            xs[:] = out[:, 0].to(torch.float64).numpy()
        else:
            tv = bool(getattr(model, "time_varying", False))
            # The mean only: a model that can skip its variance says so (the GP: the
            # variance is most of a one-row prediction).
            mean_only = None if tv else getattr(model, "predict_mean", None)
            with np.errstate(invalid="ignore", over="ignore"):
                for t in range(T):
                    if mean_only is not None:
                        xs[t + 1] = np.asarray(mean_only(xs[t][None], us[t][None]))[0]
                    else:
                        xs[t + 1] = (model.predict(xs[t], us[t], t)[0][0] if tv
                                     else model.predict(xs[t], us[t])[0][0])
        self.model_calls += T
        return xs


class SamplingPlanner(Planner):
    """Base of the sampling planners: subclasses implement :meth:`_improve`.

    ``optimize`` takes the previous plan shifted by the elapsed time (or the zero action
    clipped into the limits), lets the subclass improve it with batched rollouts, rolls the
    result out with the model's mean prediction and returns it as a
    :class:`LinearGaussianPolicy` (``xbar`` = the mean rollout, no covariance; K = 0, or the
    TV-LQR gains along it with ``feedback: lqr``).

    ``stats`` after ``optimize`` (subclasses add their own): cost (of the returned plan
    under the mean rollout, or of the sample-average states without ``nominal_rollout``),
    warm_start_shift (steps), warm_start_fill (the mode used for the appended steps),
    model_calls, rows_per_call, with ``feedback: lqr`` feedback ('lqr', or 'none' if the
    linearisation was not finite or the sweep failed) and time_feedback_s,
    solve_time_s, time_rollout_s (sample rollouts), time_nominal_s (mean rollout and
    disagreement) [s], status, and when the model has ``uncertainty`` (numpy, e.g. the
    ensemble's normalised member variance) or ``member_means`` (torch; then the variance
    of the member means averaged over state dimensions, state units squared):
    uncertainty_source, uncertainty_first, uncertainty_mean, uncertainty_max -- the
    disagreement along the returned plan at its first step, on average and at its worst.
    :attr:`plan_uncertainty` holds the (T,) values and :attr:`initial_actions` the (T, nu)
    actions the last optimisation started from.
    """

    Settings = SamplingSettings

    def __init__(self, settings: Any, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float):
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        self.dtype = DTYPES[self.settings.dtype]
        self._engine = RolloutEngine(self.nx, self.nu, self.dtype)
        self._lo = torch.as_tensor(self.u_min, dtype=self.dtype)
        self._hi = torch.as_tensor(self.u_max, dtype=self.dtype)
        warm_up()   # the compiled Riccati sweep (feedback: lqr, refine: newton), not in a loop

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        super().reset(horizon, initial_actions)
        # Re-seeded so that a reset planner repeats its plans exactly.
        self._generator = torch.Generator().manual_seed(int(self.settings.seed))
        self.plan_uncertainty: np.ndarray | None = None
        self.initial_actions: np.ndarray | None = None
        self._fill: np.ndarray | None = None
        self._bp: BackwardPass | None = None
        self._budget: SampleBudget | None = None
        self._n = self._configured_samples()

    def _configured_samples(self) -> int:
        """The configured number of sampled sequences per iteration (MPPI ``samples``, CEM
        ``population``)."""
        return int(self.settings.samples)

    def _sample_count(self) -> int:
        """Sequences to sample in this replan: the configured count, or with a deadline
        and ``adapt_samples`` the :class:`SampleBudget`'s."""
        s = self.settings
        n_max = self._configured_samples()
        if self.deadline is None or not s.adapt_samples:
            return n_max
        if self._budget is None:
            self._budget = SampleBudget(n_max, int(s.min_samples), float(s.deadline_fraction))
        else:
            self._budget.configure(n_max, int(s.min_samples), float(s.deadline_fraction))
        return self._budget.n

    def _appended(self, shift: int) -> int:
        """Number of steps appended at the end when the plan is shifted by ``shift``
        (:func:`~mbrl_ros.core.planners.base.shift_trajectory` keeps one row)."""
        return min(shift, self.horizon - 1)

    def _tail_fill(self, model: Any, shift: int) -> tuple[np.ndarray | None, str]:
        """The action (nu,) for the steps appended to the shifted plan (None: repeat the
        last one, as the shift does) and the ``warm_start_fill`` mode actually used."""
        mode = self.settings.warm_start_fill
        if shift <= 0 or self._us is None or mode == "repeat":
            return None, "repeat"
        if mode == "zero":
            return self.clip(np.zeros(self.nu)), mode
        if self._xs is None:          # warm-started from other actions: no final state
            return None, "repeat"
        with np.errstate(invalid="ignore", over="ignore"):
            u = hold_action(model, self._xs[-1], self._us[-1], self.u_min, self.u_max)
        return (None, "repeat") if u is None else (u, mode)

    def _clamp(self, U: torch.Tensor) -> torch.Tensor:
        return torch.clamp(U, self._lo, self._hi)

    def _noise(self, n: int, T: int) -> torch.Tensor:
        return colored_noise(n, T, self.nu, float(self.settings.noise_beta), self._generator,
                             self.dtype)

    def _evaluate(self, model: Any, cost: Any, x0: np.ndarray, U: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Total cost (N,) of the rollouts of U (N, T, nu) (+inf if not finite) and their
        states (T+1, N', nx) (a buffer reused by the next call; rows N.. are padding)."""
        s = self.settings
        return self._engine.run(model, cost, x0, U, s.propagation, self._generator,
                                s.aleatoric)

    @abstractmethod
    def _improve(self, x0: np.ndarray, U: torch.Tensor, model: Any, cost: Any
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Improve the plan U (T, nu) (clipped) from x0 (nx,).

        Returns:
            The new plan (T, nu) and the planner's own stats, including 'any_finite'
            (bool: some sampled rollout had a finite cost), 'states' ((T+1, nx) tensor, the
            sample-average state estimate used when ``nominal_rollout`` is false, or None)
            and optionally 'status'.
        """

    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any
                 ) -> LinearGaussianPolicy:
        """Improve the plan from x0 (nx,) at time t0 [s] and return it as a policy.

        Args:
            x0: (nx,) current state.
            t0: current time [s] (step 0 of the returned policy).
            model: a DynamicsModel at step ``dt``; torch models (``propagate``) are rolled
                out in torch, others through ``predict``.
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost` with torch batch support.

        Returns:
            A :class:`LinearGaussianPolicy` over the new plan (K = 0 unless ``feedback`` is
            'lqr' and the nominal rollout is finite).

        Raises:
            ValueError: x0 is not finite, or every sampled rollout (or its cost) was
                non-finite, so the model is unusable from this state.
        """
        s = self.settings
        t_start = time.perf_counter()
        x0 = np.asarray(x0, dtype=np.float64).reshape(self.nx)
        if not np.all(np.isfinite(x0)):
            raise ValueError(f"{self.name}: x0 must be finite, got {x0.tolist()}")
        us0, shift = self._initial_actions(t0)
        self._shift = shift
        self._fill, fill_mode = self._tail_fill(model, shift)
        if self._fill is not None:
            us0[us0.shape[0] - self._appended(shift):] = self._fill
        self.initial_actions = us0.copy()
        threads = torch.get_num_threads()
        if s.threads > 0 and s.threads != threads:
            torch.set_num_threads(s.threads)
        engine = self._engine
        engine.model_calls = 0
        # The subclasses' _improve samples self._n sequences per iteration.
        self._n = self._sample_count()
        try:
            with torch.no_grad():
                tic = time.perf_counter()
                U, stats = self._improve(x0, torch.as_tensor(us0, dtype=self.dtype), model,
                                         cost)
                toc = time.perf_counter()
                if not stats.pop("any_finite"):
                    raise ValueError(
                        f"{self.name}: every sampled rollout from x0 = {x0.tolist()} (or its "
                        "cost) is non-finite; the model is unusable from this state")
                us = np.clip(U.to(torch.float64).numpy(), self.u_min, self.u_max)
                states = stats.pop("states", None)
                if s.refine == "newton":
                    ric = time.perf_counter()
                    us, alpha = self._refine(model, cost, x0, us)
                    if alpha != 0.0:
                        states = None      # the sample average belongs to the old plan
                    stats.update(refine_alpha=alpha,
                                 time_refine_s=time.perf_counter() - ric)
                if s.nominal_rollout or states is None:
                    xs = engine.mean_rollout(model, x0, us)
                    unc = engine.mean_disagreement
                else:
                    xs = states.to(torch.float64).numpy().copy()
                    xs[0] = x0
                    unc = None
                if unc is not None and np.all(np.isfinite(xs[:self.horizon])):
                    source = "uncertainty"     # model.uncertainty, from the mean rollout
                else:
                    unc, source = self._disagreement(model, xs, us)
                tac = time.perf_counter()
        finally:
            if s.threads > 0 and s.threads != threads:
                torch.set_num_threads(threads)
        with np.errstate(invalid="ignore", over="ignore"):
            J = float(cost.total(xs, us))
        status = stats.pop("status", "ok")
        xbar = xs[:self.horizon]
        if not np.all(np.isfinite(xs)):
            # The mean model diverges along the plan (samples did not): keep the actions;
            # xbar does not enter the actions (K = 0) but must be finite for the policy.
            status = "nominal_rollout_nonfinite"
            J = math.inf
            xbar = _hold_last_finite(xbar)
        self._xs, self._us, self._t_nominal = xs, us, float(t0)
        self.plan_uncertainty = unc
        self.stats = dict(stats, cost=J if math.isfinite(J) else math.inf,
                          warm_start_shift=shift, warm_start_fill=fill_mode,
                          model_calls=engine.model_calls,
                          rows_per_call=engine.rows, status=status,
                          time_rollout_s=toc - tic, time_nominal_s=tac - toc)
        if unc is not None:
            self.stats.update(uncertainty_source=source, uncertainty_first=float(unc[0]),
                              uncertainty_mean=float(np.mean(unc)),
                              uncertainty_max=float(np.max(unc)))
        K = np.zeros((self.horizon, self.nu, self.nx))
        if s.feedback == "lqr" and status == "ok":
            tic = time.perf_counter()
            gains = self._feedback_gains(model, cost, xs, us)
            self.stats.update(time_feedback_s=time.perf_counter() - tic,
                              feedback="lqr" if gains is not None else "none")
            if gains is not None:
                K = gains
        self.stats["solve_time_s"] = time.perf_counter() - t_start
        self.stats["samples"] = self._n
        if self._budget is not None and self.deadline is not None and s.adapt_samples:
            self.stats["samples_next"] = self._budget.update(
                self._n, self.stats["solve_time_s"], toc - tic, self.deadline)
        return LinearGaussianPolicy(K=K, k=us, xbar=xbar, cov=None, t0=t0, dt=self.dt,
                                    u_min=self.u_min, u_max=self.u_max)

    def _sweep(self, model: Any, cost: Any, xs: np.ndarray, us: np.ndarray
               ) -> tuple[BackwardResult, Any] | None:
        """The box-limited Riccati sweep along the plan (xs (T+1, nx), us (T, nu)) and the
        linearisation it used, or None if the linearisation is not finite or no
        regularisation up to 1e6 makes the sweep positive definite."""
        T = self.horizon
        with np.errstate(invalid="ignore", over="ignore"):
            lin = model.linearize(xs[:T], us)
            if not (np.isfinite(lin.fx).all() and np.isfinite(lin.fu).all()):
                return None
            lx, lu, lxx, luu, lux = cost.stage_derivatives(xs[:T], us)
            lfx, lfxx = cost.terminal_derivatives(xs[T])
        if self._bp is None or self._bp.T != T:
            self._bp = BackwardPass(T, self.nx, self.nu)
        self._bp.prepare(lin.fx, lin.fu, lx, lu, lxx, luu, lux, lfx, lfxx)
        mu = 0.0
        while mu <= 1e6:
            res = self._bp.run(mu, self.u_min - us, self.u_max - us)
            if isinstance(res, BackwardResult):
                ok = np.isfinite(res.K).all() and np.isfinite(res.k).all()
                return (res, lin) if ok else None
            mu = max(1e-6, 10.0 * mu)
        return None

    def _refine(self, model: Any, cost: Any, x0: np.ndarray, us: np.ndarray
                ) -> tuple[np.ndarray, float]:
        """One line-searched Gauss-Newton step on the plan us (T, nu) from x0 (``refine:
        newton``). Returns the new plan and the step size taken (0: the plan unchanged --
        also when the mean rollout or the linearisation is not finite)."""
        T = self.horizon
        xs = self._engine.mean_rollout(model, x0, us)
        if not np.isfinite(xs).all():
            return us, 0.0
        try:
            sweep = self._sweep(model, cost, xs, us)
        except (NotImplementedError, TypeError):     # a model without a linearisation
            return us, 0.0
        if sweep is None:
            return us, 0.0
        res, lin = sweep
        # The step as an open-loop action sequence: du_t = k_t + K_t dx_t with dx
        # propagated through the linearisation, so that it can be rolled out in a batch.
        du = np.empty_like(us)
        dx = np.zeros(self.nx)
        for t in range(T):
            du[t] = res.k[t] + res.K[t] @ dx
            dx = lin.fx[t] @ dx + lin.fu[t] @ du[t]
        if not np.isfinite(du).all():
            return us, 0.0
        alphas = np.asarray(REFINE_ALPHAS)
        cand = np.clip(us[None] + alphas[:, None, None] * du[None], self.u_min, self.u_max)
        rows = self._engine.rows             # stats: the rows of the sampled rollouts
        J, _ = self._engine.run(model, cost, x0, torch.as_tensor(cand, dtype=self.dtype),
                                "expectation", self._generator)
        self._engine.rows = rows
        i = int(torch.argmin(J))
        if not math.isfinite(float(J[i])):
            return us, 0.0
        return cand[i], float(alphas[i])

    def _feedback_gains(self, model: Any, cost: Any, xs: np.ndarray, us: np.ndarray
                        ) -> np.ndarray | None:
        """TV-LQR gains (T, nu, nx) along the plan (xs (T+1, nx), us (T, nu)), or None if
        the linearisation is not finite or no regularisation up to 1e6 makes the sweep
        positive definite."""
        sweep = self._sweep(model, cost, xs, us)
        return None if sweep is None else sweep[0].K

    def _disagreement(self, model: Any, xs: np.ndarray, us: np.ndarray
                      ) -> tuple[np.ndarray | None, str]:
        """Model disagreement (T,) along the plan, and where it came from."""
        T = us.shape[0]
        if not np.all(np.isfinite(xs[:T])):
            return None, ""
        if callable(getattr(model, "uncertainty", None)):
            return np.asarray(model.uncertainty(xs[:T], us), dtype=np.float64).reshape(T), \
                "uncertainty"
        if callable(getattr(model, "member_means", None)) and hasattr(model, "torch_dtype"):
            dt = model.torch_dtype
            m = model.member_means(torch.as_tensor(xs[:T], dtype=dt),
                                   torch.as_tensor(us, dtype=dt))          # (E, T, nx)
            return m.var(dim=0, unbiased=False).mean(dim=-1).to(torch.float64).numpy(), \
                "member_means"
        return None, ""


def _hold_last_finite(xs: np.ndarray) -> np.ndarray:
    """Rows of xs (T, nx) from the first non-finite one on replaced by the last finite row
    (the first row is x0, always finite)."""
    out = xs.copy()
    bad = ~np.all(np.isfinite(out), axis=1)
    first = int(np.argmax(bad))
    out[first:] = out[first - 1] if first > 0 else 0.0
    return out
