"""Batched open-loop rollouts of sampled action sequences and their total cost, all in torch.

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

:func:`hold_action` (the warm start's appended steps) asks the model the same way.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import numpy as np
import torch

__all__ = ["ROLLOUT_MODES", "RolloutEngine", "hold_action", "is_torch_model"]

# Modes a model's whole-horizon ``rollout`` serves (see EnsembleModel.rollout).
ROLLOUT_MODES = ("tsinf", "ts1", "expectation")


def is_torch_model(model: Any) -> bool:
    """True if the model steps torch tensors (``propagate`` and ``torch_dtype``)."""
    return callable(getattr(model, "propagate", None)) and hasattr(model, "torch_dtype")


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
    ``propagate(..., 'expectation')``, a fraction of a full ``linearize`` (figures:
    BENCHMARKS.md, "Figures moved out of docstrings (issue 13)").

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
    inspection is a noticeable share of a sampling replan; BENCHMARKS.md, "Figures moved
    out of docstrings (issue 13)")."""
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
