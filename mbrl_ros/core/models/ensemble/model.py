"""The ensemble model (registry name ``ensemble``): settings, state, the numpy
prediction interface (:meth:`EnsembleModel.predict`, ``uncertainty``, ``linearize``) and
artifacts; the network, the trainer and the particle propagation are mixins
(:mod:`.network`, :mod:`.trainer`, :mod:`.propagation`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, Linearization, ModelError, ModelSpec,
                                       check_xu)
from mbrl_ros.core.models.ensemble.network import (ACTIVATION_GRADS, ACTIVATIONS, DTYPES,
                                                   MLPDynamics, Network)
from mbrl_ros.core.models.ensemble.propagation import Propagation
from mbrl_ros.core.models.ensemble.trainer import Trainer
from mbrl_ros.core.models.pipeline import DeltaPipeline, InputFeatures, Normalizer
from mbrl_ros.core.settings import setting


@registry.register("model", "ensemble")
class EnsembleModel(Network, Trainer, Propagation, DynamicsModel):
    """Bootstrapped ensemble of Gaussian MLPs (registry name ``ensemble``), PETS.

    After fitting: ``elites`` (n_elite,) int member indices, ``val_mse`` (members,) each
    member's best validation MSE (normalised units), and the normalisers ``in_norm``
    (inputs [x, u]) and ``out_norm`` (state change).
    """

    kind = "ensemble"
    min_transitions = 10

    @dataclass(frozen=True)
    class Settings:
        members: int = setting(5, "ensemble members (bootstrapped networks)", low=1, high=64)
        n_elites: int = setting(5, "members used for prediction: the best by validation MSE "
                                "(capped at members)", low=1, high=64)
        hidden_layers: int = setting(4, "hidden layers per member", low=1, high=16)
        hidden_units: int = setting(200, "units per hidden layer", low=1, high=4096)
        activation: str = setting("silu", "hidden-layer activation", choices=tuple(ACTIVATIONS))
        lr: float = setting(6e-3, "initial Adam learning rate", low=1e-6, high=1.0)
        lr_half_life: int = setting(400, "gradient steps over which the learning rate halves "
                                    "(0: constant): a large rate for fast early progress, "
                                    "a small one to settle", low=0, high=10_000_000)
        lr_min: float = setting(3e-4, "floor of the decayed learning rate", low=0.0, high=1.0)
        weight_decay: float = setting(5e-5, "L2 weight decay on the weights (not biases or "
                                      "log-variance bounds), coupled as in torch.optim.Adam",
                                      low=0.0, high=1.0)
        batch_size: int = setting(256, "largest minibatch size per member; on small data "
                                  "the size is n_train // min_batches, but not below 32 "
                                  "(nor above this), so a pass makes about min_batches "
                                  "gradient steps", low=1, high=1_000_000)
        min_batches: int = setting(16, "minibatches per pass over the training set that "
                                   "the batch size shrinks to give on small data (see "
                                   "batch_size; no effect from min_batches x batch_size "
                                   "training transitions on)", low=1, high=100_000)
        epoch_steps: int = setting(32, "fewest gradient steps per epoch: an epoch makes as many "
                                   "passes over the training set as this takes, so epochs, "
                                   "min_epochs and patience mean similar training at any data "
                                   "size", low=1, high=1_000_000)
        epochs: int = setting(200, "maximum epochs (an epoch is one pass over the "
                              "bootstrapped training set, or several on small data: see "
                              "epoch_steps)", low=1, high=100_000)
        min_epochs: int = setting(20, "epochs before early stopping may end training (the "
                                  "first epochs can stall while the members start to fit "
                                  "what the linear prior misses)", low=1, high=100_000)
        max_seconds: float = setting(0.0, "wall-time budget of the training loop (0: none); "
                                     "the best weights so far are kept", unit="s", low=0.0)
        patience: int = setting(5, "stop after this many epochs without an improvement of "
                                "the members' mean validation MSE", low=1, high=100_000)
        improvement_threshold: float = setting(0.02, "relative decrease of the mean "
                                               "validation MSE below its best that counts as "
                                               "an improvement", low=0.0, high=1.0)
        val_fraction: float = setting(0.1, "share of transitions held out for validation, "
                                      "early stopping and elite selection (0: use the "
                                      "training set)", low=0.0, high=0.5)
        bootstrap: bool = setting(True, "train each member on its own resample (with "
                                  "replacement) of the training set")
        linear_prior: bool = setting(True, "fit a ridge regression of the normalised state "
                                     "change first and let the members learn its residual "
                                     "(much faster convergence on near-linear dynamics)")
        prior_ridge: float = setting(0.0, "ridge weight of the linear prior on standardised "
                                     "inputs (0: chosen by cross-validated 20-step open-loop "
                                     "error; docs/MODELS.md)",
                                     low=0.0, high=1e6)
        val_horizon: int = setting(20, "open-loop steps of block validation: members are "
                                   "early-stopped and ranked on their rollout error over held-out "
                                   "blocks this long (1: random transitions, one-step error); "
                                   "docs/MODELS.md", unit="steps", low=1, high=10_000)
        min_val_blocks: int = setting(10, "fewest held-out blocks for block validation; "
                                      "with fewer, a random share of transitions and the "
                                      "one-step error are used", low=1, high=100_000)
        logvar_penalty: float = setting(0.01, "weight of sum(max_logvar) - sum(min_logvar) "
                                        "in the loss (PETS appendix A.1)", low=0.0, high=10.0)
        max_logvar_init: float = setting(0.5, "initial upper log-variance bound (normalised "
                                         "units)", low=-20.0, high=20.0)
        min_logvar_init: float = setting(-10.0, "initial lower log-variance bound "
                                         "(normalised units)", low=-40.0, high=20.0)
        seed: int = setting(0, "seed of initialisation, bootstrap, validation split and "
                            "shuffling", low=0)
        threads: int = setting(1, "torch intra-op threads while fitting (0: leave torch's "
                               "setting); restored afterwards", low=0, high=256)
        dtype: str = setting("float32", "floating-point type of the network",
                             choices=tuple(DTYPES))
        warm_start: bool = setting(False, "a refit starts from the previous model's weights "
                                   "(same shapes) instead of a random initialisation, so "
                                   "training accumulates over bounded live refits")

        def __post_init__(self):
            if self.min_logvar_init >= self.max_logvar_init:
                raise ValueError(f"min_logvar_init ({self.min_logvar_init}) must be below "
                                 f"max_logvar_init ({self.max_logvar_init})")

    def __init__(self, settings=None, spec: ModelSpec | None = None):
        super().__init__(settings, spec)
        self.torch_dtype: torch.dtype = DTYPES[self.settings.dtype]
        self.device = torch.device("cpu")
        self._act = ACTIVATIONS[self.settings.activation]
        self.weights: list[torch.Tensor] = []     # (M, in, out) per layer
        self.biases: list[torch.Tensor] = []      # (M, 1, out) per layer
        self.max_logvar: torch.Tensor | None = None   # (M, 1, nx)
        self.min_logvar: torch.Tensor | None = None   # (M, 1, nx)
        self.elites = np.zeros(0, dtype=np.int64)
        self.val_mse = np.zeros(0)
        # Features, normalisers and delta targets (models/pipeline.py, shared with linear
        # and gp); features/in_norm/out_norm are its parts, kept as attributes for the
        # torch paths.
        self.pipeline: DeltaPipeline | None = None
        self.features: InputFeatures | None = None
        self.in_norm: Normalizer | None = None
        self.out_norm: Normalizer | None = None
        self._elite_params: tuple | None = None
        # Elite parameters with the normalisers and the linear prior folded in, for
        # rollout(); built on first use after every fit/load.
        self._folded: dict | None = None
        self._folded64: dict | None = None
        # The fold as numpy float64 arrays (mlp_dynamics), built on first use likewise.
        self._mlp: tuple | None = None
        self._mlp32: tuple | None = None       # its float32 copy (the Jacobian's products)
        # Linear prior (numpy float64 A (in, nx), c (nx,), residual std (nx,)) and its
        # torch form used inside the forward pass; None without the prior.
        self.linear: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lin: tuple | None = None
        # (epoch, mean validation MSE over members, train NLL, seconds) of the last fit.
        self.history: list[tuple[int, float, float, float]] = []
        self._t_in_mean = self._t_in_std = self._t_out_mean = self._t_out_std = None
        # Parameters a warm-started fit begins from (see warm_start_from), else None.
        self._warm: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ numpy API
    def _elite_moments(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = torch.as_tensor(self.in_norm(self.features(x, u)), dtype=self.torch_dtype)
        with torch.no_grad():
            mean, logvar = self._forward_elites(z.unsqueeze(0).expand(self.n_elite, -1, -1))
        return mean.numpy().astype(np.float64), logvar.numpy().astype(np.float64)

    def predict(self, x: np.ndarray, u: np.ndarray, t=None) -> tuple[np.ndarray, np.ndarray]:
        """Elite-ensemble moments of the next state.

        Args:
            x: (B, nx) or (nx,) states; u: (B, nu) or (nu,) efforts.

        Returns:
            mean (B, nx): x + mean over elites of the member means (state units);
            var (B, nx): mean of the members' variances (aleatoric) plus the variance of
            the member means (epistemic), state units squared.
        """
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        mean, logvar = self._elite_moments(x, u)
        std = self.out_norm.std
        mu = self.out_norm.mean + std * mean               # (E, B, nx) state change
        var = (np.exp(logvar) * std ** 2).mean(axis=0) + mu.var(axis=0)
        return x + mu.mean(axis=0), var

    def uncertainty(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Epistemic disagreement: variance of the elite means, averaged over dimensions,
        in normalised units (1 = the spread of the training state changes).

        Args:
            x: (B, nx) or (nx,), u: (B, nu) or (nu,).

        Returns:
            (B,) float64 (zeros with a single elite).
        """
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        mean, _ = self._elite_moments(x, u)
        return mean.var(axis=0).mean(axis=1)

    def linearize(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """Jacobian of the predicted mean along a trajectory (all T at once).

        Analytic (one batched reverse pass through the folded network, float64,
        :meth:`_mean_jacobian`) for models without sin/cos inputs; else autograd
        (:meth:`linearize_reference`, which both paths are tested against).

        Args:
            xs: (T, nx), us: (T, nu).

        Returns:
            Linearization: fx (T, nx, nx), fu (T, nx, nu), f0 (T, nx) so that
            ``fx x + fu u + f0`` equals the predicted mean at the knots, and cov
            (T, nx, nx) = diag(predicted variance).
        """
        return self._linearize(xs, us, with_cov=True)

    def linearize_mean(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """:meth:`linearize` without the covariance (``cov`` None), for planners that use
        only fx and fu (iLQR): skips the log-variance head."""
        return self._linearize(xs, us, with_cov=False)

    def _linearize(self, xs, us, with_cov: bool) -> Linearization:
        self._require_fitted()
        xs, us = check_xu(self.spec, xs, us)
        if self.features.periodic.size:
            lin = self.linearize_reference(xs, us)
            return lin if with_cov else Linearization(lin.fx, lin.fu, lin.f0)
        nx = xs.shape[1]
        mean, J = self._mean_jacobian(xs, us)
        fx = J[:, :, :nx] + np.eye(nx)[None]
        fu = J[:, :, nx:]
        var = None
        if with_cov:
            # f0 and cov from predict (the model's own dtype), as linearize_reference
            mean, var = self.predict(xs, us)
        return Linearization.about(fx, fu, xs, us, mean, var)

    def linearize_reference(self, xs: np.ndarray, us: np.ndarray) -> Linearization:
        """:meth:`linearize` by autograd through the torch network (``torch_dtype``), for
        any input features; the reference the analytic path is tested against."""
        self._require_fitted()
        xs, us = check_xu(self.spec, xs, us)
        T, nx = xs.shape
        zn = torch.as_tensor(self.in_norm(self.features(xs, us)), dtype=self.torch_dtype)
        E = self.n_elite
        # One forward/backward for all T knots and all nx outputs: replicate the inputs
        # nx times; replica i only back-propagates output dimension i.
        zr = zn.unsqueeze(0).repeat(nx, 1, 1).requires_grad_(True)      # (nx, T, in)
        with torch.enable_grad():
            mean, _ = self._forward_elites(zr.reshape(1, nx * T, -1).expand(E, -1, -1))
            mbar = mean.mean(dim=0).view(nx, T, nx)
            sel = torch.diagonal(mbar, dim1=0, dim2=2).sum()              # sum_i mbar[i,:,i]
            (grad,) = torch.autograd.grad(sel, zr)
        J = grad.detach().numpy().astype(np.float64).transpose(1, 0, 2)    # (T, nx, in)
        # Chain rule through the normalisers and the sin/cos features, plus the identity
        # of the delta (the shared pipeline).
        fx, fu = self.pipeline.jacobian(J, xs)
        mean_next, var = self.predict(xs, us)
        return Linearization.about(fx, fu, xs, us, mean_next, var)

    def mlp_dynamics(self) -> MLPDynamics | None:
        """The elite members' mean as plain float64 arrays (the fold of
        :meth:`~.propagation.Propagation._fold64`): next state
        ``x + c + zc @ lin + sum_e act(...act(zc @ W0[e] + b0[e])... ) @ WL[e]`` with
        ``zc = [x - x_mean, u - u_mean]`` (``WL`` already divided by the number of elites).
        For compiled closed-loop rollouts (the iLQR planner) and :meth:`_mean_jacobian`.
        None with sin/cos input features (not affine in the first layer)."""
        self._require_fitted()
        if self.features.periodic.size:
            return None
        if self._mlp is None:
            f = self._fold64()
            H, nx = f["H"], self.spec.nx
            E = f["first_w"].shape[0]
            def a(t):
                return np.ascontiguousarray(t.detach().numpy(), dtype=np.float64)
            hidden = f["hidden"]
            Wh = (a(torch.stack([W for W, _ in hidden], dim=1)) if hidden
                  else np.zeros((E, 0, H, H)))
            bh = (a(torch.stack([b[:, 0] for _, b in hidden], dim=1)) if hidden
                  else np.zeros((E, 0, H)))
            fb = a(f["first_b"])[:, 0]                                    # (E, H + nx)
            self._mlp = MLPDynamics(
                x_mean=a(f["x_mean"]), u_mean=a(f["u_mean"]),
                W0=a(f["first_w"][..., :H]), b0=np.ascontiguousarray(fb[:, :H]),
                Wh=Wh, bh=bh, WL=a(f["last_mean"]) / E,
                c=np.ascontiguousarray(fb[:, H:].mean(axis=0)),
                lin=a(f["first_w"][0, :, H:]), activation=self.settings.activation)
        return self._mlp

    def _mean_jacobian(self, xs: np.ndarray, us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next-state mean (T, nx) and the Jacobian of the state change (T, nx, nx + nu)
        with respect to [x, u] at T knots, from one batched forward and reverse pass over
        the knots and the elites: numpy BLAS products over (E, T nx, H) blocks, no
        autograd, no replicated inputs; in the network's dtype (float32 products take half
        the time of float64 ones), answered in float64."""
        m = self.mlp_dynamics()
        if self.torch_dtype != torch.float64:
            if self._mlp32 is None:
                self._mlp32 = m._replace(**{k: v.astype(np.float32) for k, v in
                                            m._asdict().items() if isinstance(v, np.ndarray)})
            m = self._mlp32
            xs, us = xs.astype(np.float32), us.astype(np.float32)
        E, n_in, H = m.W0.shape
        T, nx = xs.shape
        act_grad = ACTIVATION_GRADS[m.activation]
        zc = np.concatenate([xs - m.x_mean, us - m.u_mean], axis=1)      # (T, in)
        h, d = act_grad(zc @ m.W0 + m.b0[:, None, :])                     # (E, T, H)
        derivs = [d]
        for k in range(m.Wh.shape[1]):
            h, d = act_grad(h @ m.Wh[:, k] + m.bh[:, k, None, :])
            derivs.append(d)
        mean = xs + m.c + zc @ m.lin + (h @ m.WL).sum(axis=0)
        # reverse pass: G = d out_e / d h_l, (E, T, nx, H), from the last layer down
        # (C order: a strided G would make the products below several times slower)
        G = np.multiply(derivs[-1][:, :, None, :], np.swapaxes(m.WL, 1, 2)[:, None],
                        order="C")
        for k in range(m.Wh.shape[1] - 1, -1, -1):
            G = (G.reshape(E, T * nx, H) @ np.swapaxes(m.Wh[:, k], 1, 2)
                 ).reshape(E, T, nx, H) * derivs[k][:, :, None, :]
        J = (G.reshape(E, T * nx, H) @ np.swapaxes(m.W0, 1, 2)).reshape(E, T, nx, n_in)
        return (mean.astype(np.float64, copy=False),
                (J.sum(axis=0) + m.lin.T[None]).astype(np.float64, copy=False))

    # ------------------------------------------------------------------ artifacts
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Weights ``W{i}`` (M, in, out), biases ``b{i}`` (M, 1, out), ``max_logvar`` /
        ``min_logvar`` (M, 1, nx), ``elites`` (E,) int64, ``val_mse`` (M,), and the
        normalisers ``in_mean``/``in_std`` (nx+nu,), ``out_mean``/``out_std`` (nx,)."""
        self._require_fitted()
        arrays: dict[str, np.ndarray] = {}
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            arrays[f"W{i}"] = W.detach().numpy().copy()
            arrays[f"b{i}"] = b.detach().numpy().copy()
        arrays["max_logvar"] = self.max_logvar.detach().numpy().copy()
        arrays["min_logvar"] = self.min_logvar.detach().numpy().copy()
        arrays["elites"] = self.elites.astype(np.int64)
        arrays["val_mse"] = np.asarray(self.val_mse, dtype=np.float64)
        arrays.update(self.pipeline.arrays())
        if self.linear is not None:
            arrays.update(lin_A=self.linear[0], lin_c=self.linear[1], lin_std=self.linear[2])
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`state_arrays`; shapes are checked against settings and spec.

        Raises:
            ModelError: missing arrays or shapes that do not match.
        """
        s, spec = self.settings, self.spec
        if spec is None:
            raise ModelError("ensemble: load_state_arrays needs the spec")
        M, H, L = s.members, s.hidden_units, s.hidden_layers
        self.features = InputFeatures(spec)
        n_in = self.features.n_in
        sizes = [n_in] + [H] * L + [2 * spec.nx]
        expected = {f"W{i}": (M, a, b) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}
        expected.update({f"b{i}": (M, 1, b) for i, b in enumerate(sizes[1:])})
        expected.update(max_logvar=(M, 1, spec.nx), min_logvar=(M, 1, spec.nx),
                        in_mean=(n_in,), in_std=(n_in,),
                        out_mean=(spec.nx,), out_std=(spec.nx,), val_mse=(M,))
        if s.linear_prior:
            expected.update(lin_A=(n_in, spec.nx), lin_c=(spec.nx,),
                            lin_std=(spec.nx,))
        for name, shape in expected.items():
            if name not in arrays:
                raise ModelError(f"ensemble artifact lacks array {name!r}")
            if tuple(np.shape(arrays[name])) != shape:
                raise ModelError(f"ensemble artifact array {name!r} has shape "
                                 f"{tuple(np.shape(arrays[name]))}, expected {shape}")
        elites = np.asarray(arrays.get("elites", np.zeros(0)), dtype=np.int64).reshape(-1)
        if elites.size == 0 or elites.min() < 0 or elites.max() >= M:
            raise ModelError(f"ensemble artifact has invalid elites {elites.tolist()}")
        def t(a):
            return torch.as_tensor(np.array(a), dtype=self.torch_dtype)
        self.weights = [t(arrays[f"W{i}"]) for i in range(L + 1)]
        self.biases = [t(arrays[f"b{i}"]) for i in range(L + 1)]
        self.max_logvar = t(arrays["max_logvar"])
        self.min_logvar = t(arrays["min_logvar"])
        self.elites = elites
        self.val_mse = np.asarray(arrays["val_mse"], dtype=np.float64)
        self.pipeline = DeltaPipeline.from_arrays(spec, arrays)
        self.features = self.pipeline.features
        self.in_norm, self.out_norm = self.pipeline.in_norm, self.pipeline.out_norm
        self._set_linear(tuple(np.asarray(arrays[k], dtype=np.float64)
                               for k in ("lin_A", "lin_c", "lin_std"))
                         if s.linear_prior else None)
        self._refresh_caches()
