"""The input/output pipeline of the learned dynamics models, written once.

A learned model (linear, gp, ensemble) does not learn x_{t+1} = f(x_t, u_t) directly:

1. **Input features** ``z = features(x, u)`` (:class:`InputFeatures`):
   ``[x, u]``, with the angle of every continuous joint replaced by its sine and cosine
   (PILCO, Deisenroth & Rasmussen, ICML 2011; PETS, Chua et al., NeurIPS 2018).
2. **Delta targets** ``d = x_{t+1} - x_t``: a model that predicts no change keeps the
   state, and the ridge/prior shrinks towards "keep the state", not towards zero.
3. **Normalisation** of the inputs and of the targets
   (:class:`Normalizer`, fitted on the training rows), so one
   hyper-parameter (a ridge weight, a lengthscale, a learning rate) means the same for
   joints in rad and efforts in N·m.
4. **Affine prior** ``d_n ~ z_n W + c`` (:class:`AffinePrior`), fitted by ridge
   regression in normalised units: the linear model is this map alone; the GP and the
   ensemble learn the residual from it (explicit basis functions, Rasmussen & Williams,
   "Gaussian Processes for Machine Learning", 2006, sec. 2.7), so far from the data they
   fall back to the affine model instead of to "no change".

:class:`DeltaPipeline` holds 1-3 and converts back: next-state means and variances in state
units, and Jacobians with respect to the normalised inputs into ``fx``, ``fu`` (chain rule
through both normalisers and the sin/cos features, plus the identity of the delta).

Shapes: x (B, nx) [rad, m, rad/s, m/s], u (B, nu) [N·m, N], z (B, n_in) with
n_in = nx + |periodic| + nu. Every method takes numpy arrays or torch tensors (of any float
dtype and device; the constants are cast once per dtype/device and cached) and answers in
the same kind. Artifacts: :meth:`DeltaPipeline.arrays` gives ``in_mean``, ``in_std``,
``out_mean``, ``out_std`` (the names every learned model's weights file already uses).

Typical use (the GP; the ensemble's fit is the same with its own training rows)::

    pipe = DeltaPipeline.fit(spec, states, actions, next_states, rows=train_idx)
    Z, D = pipe.inputs(states, actions), pipe.targets(states, next_states)
    prior = AffinePrior.fit(Z[train_idx], D[train_idx], ridge=1e-6)
    ... learn D - prior(Z) ...
    x_next = pipe.next_state(x, prior(pipe.inputs(x, u)) + residual_mean)
    fx, fu = pipe.jacobian(J_n + prior.W.T, xs)        # J_n (T, nx, n_in), normalised
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mbrl_ros.core.models.base import ModelError, ModelSpec
from mbrl_ros.core.types import is_torch

__all__ = ["AffinePrior", "DeltaPipeline", "InputFeatures", "Normalizer"]


class Normalizer:
    """Affine standardisation z = (v - mean) / std fitted on data; std floored so constant
    columns (e.g. an unactuated joint's zero effort) do not blow up."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)

    @classmethod
    def fit(cls, v: np.ndarray, floor: float = 1e-6) -> "Normalizer":
        v = np.asarray(v, dtype=np.float64)
        return cls(v.mean(axis=0), np.maximum(v.std(axis=0), floor))

    def __call__(self, v):
        return (v - self.mean) / self.std

    def inverse(self, z):
        return z * self.std + self.mean

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_mean": self.mean, f"{prefix}_std": self.std}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "Normalizer":
        return cls(arrays[f"{prefix}_mean"], arrays[f"{prefix}_std"])


class InputFeatures:
    """The inputs a learned model sees: ``z = [x', cos(x_P), u]`` where ``x'`` is x with the
    periodic angles ``x_P`` (:attr:`ModelSpec.periodic`) replaced by their sines, so
    z (..., nx + |P| + nu) is the same for angles a full turn apart and the effect of gravity
    (sin, cos of the angle) is within reach of an affine map (the PILCO and PETS cart-pole
    input encodings). Without periodic states ``z = [x, u]``. numpy or torch inputs.
    """

    def __init__(self, spec: ModelSpec):
        self.nx, self.nu = spec.nx, spec.nu
        self.periodic = np.asarray(spec.periodic, dtype=np.intp)
        self.n_in = self.nx + self.periodic.size + self.nu
        mask = np.zeros(self.nx)
        mask[self.periodic] = 1.0
        self._mask = mask
        self._torch: dict = {}

    def __call__(self, x, u):
        if not self.periodic.size:
            return (_torch_cat([x, u]) if is_torch(x) else np.concatenate([x, u], axis=-1))
        p = self.periodic
        if is_torch(x):
            key = (x.dtype, x.device)
            if key not in self._torch:
                import torch
                self._torch[key] = (torch.as_tensor(self._mask, dtype=x.dtype, device=x.device),
                                    torch.as_tensor(p, device=x.device))
            m, pt = self._torch[key]
            xp = x.index_select(-1, pt)
            return _torch_cat([x + m * (x.sin() - x), xp.cos(), u])
        xs = x + self._mask * (np.sin(x) - x)
        return np.concatenate([xs, np.cos(x[..., p]), u], axis=-1)

    def chain(self, dfdz: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Jacobians w.r.t. x and u from one w.r.t. z: dfdz (T, m, n_in), x (T, nx) ->
        (T, m, nx), (T, m, nu) (numpy)."""
        nx, k = self.nx, self.periodic.size
        dfdx = dfdz[..., :nx].copy()
        if k:
            p = self.periodic
            # d sin/dx = cos x on the periodic columns, plus d cos/dx = -sin x
            dfdx[..., p] = (dfdz[..., p] * np.cos(x[:, None, p])
                            - dfdz[..., nx:nx + k] * np.sin(x[:, None, p]))
        return dfdx, dfdz[..., nx + k:]


def _torch_cat(parts):
    import torch
    return torch.cat(parts, dim=-1)


class _Consts:
    """Named float64 numpy constants and their torch copies, cached per (dtype, device)."""

    def __init__(self, **arrays: np.ndarray):
        self.np = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        self._torch: dict = {}

    def like(self, v) -> dict:
        if not is_torch(v):
            return self.np
        key = (v.dtype, v.device)
        if key not in self._torch:
            import torch
            self._torch[key] = {k: torch.as_tensor(a, dtype=v.dtype, device=v.device)
                                for k, a in self.np.items()}
        return self._torch[key]


class DeltaPipeline:
    """Input features, input normalisation and normalised delta targets of a model of
    ``spec``, and their inverses (see the module docstring).

    Attributes:
        features: :class:`InputFeatures` ([x, u] with sin/cos of the periodic angles, or
            plain [x, u] for a pipeline built with ``periodic=False``).
        in_norm: :class:`Normalizer` of the features, (n_in,) mean and std.
        out_norm: :class:`Normalizer` of the state change, (nx,) mean and std.
    """

    def __init__(self, features: InputFeatures, in_norm: Normalizer, out_norm: Normalizer):
        if in_norm.mean.shape != (features.n_in,) or out_norm.mean.shape != (features.nx,):
            raise ModelError(f"pipeline: normalisers of {in_norm.mean.shape} inputs and "
                             f"{out_norm.mean.shape} outputs do not fit {features.n_in} "
                             f"features and nx={features.nx}")
        self.features, self.in_norm, self.out_norm = features, in_norm, out_norm
        self._c = _Consts(in_mean=in_norm.mean, in_std=in_norm.std,
                          out_mean=out_norm.mean, out_std=out_norm.std)

    @staticmethod
    def make_features(spec: ModelSpec, periodic: bool = True) -> InputFeatures:
        """The features of ``spec``; ``periodic=False`` keeps the angles as they are
        (z = [x, u], for a model that must stay affine in x)."""
        return InputFeatures(spec if periodic else dataclasses.replace(spec, periodic=()))

    @classmethod
    def fit(cls, spec: ModelSpec, states: np.ndarray, actions: np.ndarray,
            next_states: np.ndarray, rows: np.ndarray | None = None,
            periodic: bool = True) -> "DeltaPipeline":
        """Fit both normalisers on the training ``rows`` (default: all) of N transitions.

        Args:
            spec: the model's spec (dimensions, periodic states).
            states, next_states: (N, nx); actions: (N, nu); numpy float64.
            rows: indices (or a boolean mask) of the training transitions.
            periodic: use the sin/cos features of ``spec.periodic`` (see make_features).
        """
        features = cls.make_features(spec, periodic)
        z = features(states, actions)
        d = next_states - states
        if rows is not None:
            z, d = z[rows], d[rows]
        return cls(features, Normalizer.fit(z), Normalizer.fit(d))

    # -- forward -------------------------------------------------------------------------
    def inputs(self, x, u):
        """Normalised model inputs (..., n_in) of states x (..., nx) and actions u (..., nu)."""
        c = self._c.like(x)
        return (self.features(x, u) - c["in_mean"]) / c["in_std"]

    def targets(self, x, x_next):
        """Normalised state changes (..., nx) of x -> x_next."""
        c = self._c.like(x)
        return ((x_next - x) - c["out_mean"]) / c["out_std"]

    # -- back to state units ---------------------------------------------------------------
    def next_state(self, x, d):
        """Next state (..., nx) from the state x and a normalised state change d (..., nx)."""
        c = self._c.like(d)
        return x + d * c["out_std"] + c["out_mean"]

    def delta(self, d):
        """State change in state units from a normalised one, (..., nx)."""
        c = self._c.like(d)
        return d * c["out_std"] + c["out_mean"]

    def variance(self, var):
        """Variance of the next state (state units squared) from a variance of the
        normalised state change, (..., nx)."""
        return var * self._c.like(var)["out_std"] ** 2

    def jacobian(self, J: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Jacobians of the next state from Jacobians of the normalised state change.

        Args:
            J: (T, nx, n_in) d d_n / d z_n (normalised change w.r.t. normalised inputs).
            xs: (T, nx) states where J was taken (for the sin/cos chain rule).

        Returns:
            fx (T, nx, nx) = I + d delta/dx and fu (T, nx, nu), numpy.
        """
        J = J * self.out_norm.std[None, :, None] / self.in_norm.std[None, None, :]
        Jx, fu = self.features.chain(J, xs)
        return Jx + np.eye(self.features.nx)[None], fu

    def affine(self, prior: "AffinePrior") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x_{t+1} = A x + B u + c`` equal to ``next_state(x, prior(inputs(x, u)))``.

        Only for a pipeline without periodic features (sin/cos are not affine).

        Returns:
            A (nx, nx), B (nx, nu), c (nx,), numpy float64.
        """
        if self.features.periodic.size:
            raise ModelError("pipeline: a model with sin/cos features is not affine in x")
        nx = self.features.nx
        J = (prior.W / self.in_norm.std[:, None] * self.out_norm.std[None, :]).T   # (nx, n_in)
        c = self.out_norm.mean + self.out_norm.std * prior.c - J @ self.in_norm.mean
        return np.eye(nx) + J[:, :nx], J[:, nx:].copy(), c

    # -- artifacts -----------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """``in_mean``, ``in_std`` (n_in,), ``out_mean``, ``out_std`` (nx,)."""
        return {**self.in_norm.arrays("in"), **self.out_norm.arrays("out")}

    @classmethod
    def from_arrays(cls, spec: ModelSpec, arrays, periodic: bool = True) -> "DeltaPipeline":
        """Inverse of :meth:`arrays` (KeyError if one is missing, ModelError on shapes)."""
        return cls(cls.make_features(spec, periodic), Normalizer.from_arrays(arrays, "in"),
                   Normalizer.from_arrays(arrays, "out"))


@dataclass(frozen=True, eq=False)
class AffinePrior:
    """Affine map ``y = z W + c`` of normalised inputs z (..., n_in) to normalised state
    changes y (..., n_out): the prior mean of the learned models and the whole linear model.

    Attributes:
        W: (n_in, n_out) float64 coefficients.
        c: (n_out,) float64 intercept.
    """
    W: np.ndarray
    c: np.ndarray

    def __post_init__(self):
        W = np.asarray(self.W, dtype=np.float64)
        c = np.asarray(self.c, dtype=np.float64)
        if W.ndim != 2 or c.shape != (W.shape[1],):
            raise ModelError(f"affine prior: W {W.shape} and c {c.shape} do not fit")
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "_consts", _Consts(W=W, c=c))

    @classmethod
    def fit(cls, Z: np.ndarray, Y: np.ndarray, ridge: float) -> "AffinePrior":
        """Ridge regression with a free (unpenalised) intercept.

        Minimises |Y - Z W - c|^2 + ridge N |W|^2 over the N rows: with standardised
        inputs the Gram matrix Z^T Z / N has a unit diagonal, so ``ridge`` is relative to
        it. Solved as the augmented least-squares problem [Z - mean; sqrt(ridge N) I] W =
        [Y - mean; 0] (well defined at ridge = 0 with a constant input column, e.g. an
        unactuated joint's effort).

        Args:
            Z: (N, n_in), Y: (N, n_out) float64 (normalised inputs and targets).
            ridge: >= 0.
        """
        Z = np.asarray(Z, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        if Z.ndim != 2 or Y.ndim != 2 or Z.shape[0] != Y.shape[0] or not len(Z):
            raise ModelError(f"affine prior: expected Z (N, n_in) and Y (N, n_out) with "
                             f"N > 0, got {Z.shape} and {Y.shape}")
        if not ridge >= 0:
            raise ModelError(f"affine prior: ridge must be >= 0, got {ridge}")
        N, d = Z.shape
        zm, ym = Z.mean(axis=0), Y.mean(axis=0)
        lam = np.sqrt(ridge * N)
        lhs = np.concatenate([Z - zm, lam * np.eye(d)], axis=0)
        rhs = np.concatenate([Y - ym, np.zeros((d, Y.shape[1]))], axis=0)
        W, *_ = np.linalg.lstsq(lhs, rhs, rcond=None)
        return cls(W, ym - zm @ W)

    @classmethod
    def zero(cls, n_in: int, n_out: int) -> "AffinePrior":
        """The zero map (a zero prior mean)."""
        return cls(np.zeros((n_in, n_out)), np.zeros(n_out))

    def __call__(self, z):
        """(..., n_in) -> (..., n_out), numpy or torch like z."""
        k = self._consts.like(z)
        return z @ k["W"] + k["c"]

    def residual_std(self, Z: np.ndarray, Y: np.ndarray, floor: float = 0.0) -> np.ndarray:
        """(n_out,) standard deviation of Y - prior(Z), at least ``floor``."""
        return np.maximum((np.asarray(Y) - self(np.asarray(Z, dtype=np.float64))).std(axis=0),
                          floor)

    def stacked(self) -> np.ndarray:
        """(n_in + 1, n_out) [W; c] (one array for an artifact)."""
        return np.concatenate([self.W, self.c[None]], axis=0)

    @classmethod
    def from_stacked(cls, beta: np.ndarray) -> "AffinePrior":
        """Inverse of :meth:`stacked`."""
        beta = np.asarray(beta, dtype=np.float64)
        if beta.ndim != 2 or beta.shape[0] < 2:
            raise ModelError(f"affine prior: stacked array must be (n_in + 1, n_out), got "
                             f"{beta.shape}")
        return cls(beta[:-1].copy(), beta[-1].copy())
