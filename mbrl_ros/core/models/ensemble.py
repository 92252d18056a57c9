"""Probabilistic ensemble of neural networks (PE), the dynamics model of PETS.

Chua, Calandra, McAllister, Levine, "Deep Reinforcement Learning in a Handful of Trials
using Probabilistic Dynamics Models", NeurIPS 2018. The design follows the reference
implementation in facebookresearch/mbrl-lib (``GaussianMLP``, ``OneDTransitionRewardModel``,
``ModelTrainer``):

* M members, each an MLP (SiLU hidden layers) with a Gaussian head giving the mean and the
  log-variance of the *normalised state change* ``(x_{t+1} - x_t - mean) / std`` from the
  normalised input ``[x_t, u_t]``. The log-variance is squashed softly between learned
  per-member bounds ``max_logvar`` / ``min_logvar`` (PETS appendix A.1), and the loss adds
  ``logvar_penalty * (sum max_logvar - sum min_logvar)`` so the bounds tighten onto the data.
* All members are ONE batched network: weights are (M, in, out) tensors and a layer is one
  ``torch.baddbmm`` for every member at once; there is no Python loop over members.
* Training: Gaussian negative log-likelihood, Adam with L2 weight decay on the weights,
  one bootstrap resample (with replacement) of the training set per member, per-member
  shuffled minibatches drawn from pre-gathered index tensors (no DataLoader), a held-out
  validation split, and early stopping (on the members' mean validation MSE) that keeps
  each member's weights of lowest validation MSE. The ``n_elites`` members with the
  lowest validation MSE are the *elites* (MBPO's refinement; with the default
  ``n_elites == members`` all are used, as in PETS); every prediction uses only them.

Two additions to the reference design, both switchable, make training converge in 25-45
epochs on 10,000 arm7 transitions instead of well over 100:

* Linear prior (``linear_prior``): a ridge regression of the normalised state change on
  the normalised input is solved in closed form first, and the members learn its residual
  (scaled by the residual's spread). Robot dynamics over one control period are close to
  affine (position change ~ dt * velocity), which a randomly initialised MLP otherwise
  spends most of its training reproducing. Outside the data the members still disagree
  on the residual, so the epistemic signal is kept.
* Learning-rate decay (``lr_half_life`` steps, floored at ``lr_min``): a large rate for
  fast early progress and a small one to settle, so early stopping triggers sooner.

On a few hundred transitions (a learn-and-control loop's first refits) one pass of
256-row minibatches is one or two gradient steps, and early stopping after 20-45 such
"epochs" left the members far from converged. The minibatch then shrinks to about
1/``min_batches`` of the training set (not below 32) and an epoch repeats passes until it
has made ``epoch_steps`` steps; from ``min_batches x batch_size`` and ``epoch_steps x
batch_size`` training transitions on (4,096 and 8,192 with the defaults) training is
unchanged.

Two more for small data sets (a few thousand transitions), where the ensemble otherwise
lost to the plain linear model on arm7:

* The prior's ridge (``prior_ridge: 0``) is chosen by 5-fold cross-validation over
  contiguous 20-step blocks, scored on their open-loop error: the
  smallest candidate within 15 % of the best (large at small N, 1e-4 at large N).
* With at least ``min_val_blocks`` held-out blocks, members are checkpointed and elites
  chosen on the held-out ``val_horizon``-step open-loop error instead of a random split's
  one-step error: overfitting to the few training episodes is what a random split of
  transitions from the same episodes cannot see.

Predictions (mean over elites, variance = aleatoric + epistemic) are in numpy float64 for
the generic interface; sampling planners use :meth:`EnsembleModel.propagate` and
:meth:`EnsembleModel.member_means`, which stay in torch (``torch_dtype``, ``device``)
without numpy round trips.

Member indices passed to or returned by the torch API index the *elite* list
(``0 <= i < n_elite``), not the full ensemble.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mbrl_ros.core import registry
from mbrl_ros.core.models.base import (DynamicsModel, FitReport, Linearization, ModelError,
                                       InputFeatures, ModelSpec, Normalizer, check_xu)
from mbrl_ros.core.models import evaluate
from mbrl_ros.core.settings import setting
from mbrl_ros.core.types import TransitionBatch

__all__ = ["EnsembleModel"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu, "relu": F.relu, "tanh": torch.tanh}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_MODES = ("expectation", "ts1", "tsinf")
# Rows per member in one batched forward pass when predicting for many particles.
_CHUNK = 1024
# Smallest automatic minibatch (see the batch_size setting): below it the per-step overhead
# of the batched members dominates and gradients get noisy.
_MIN_BATCH = 32


@registry.register("model", "ensemble")
class EnsembleModel(DynamicsModel):
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
        activation: str = setting("silu", "hidden-layer activation", choices=tuple(_ACTIVATIONS))
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
                             choices=tuple(_DTYPES))
        warm_start: bool = setting(False, "a refit starts from the previous model's weights "
                                   "(same shapes) instead of a random initialisation, so "
                                   "training accumulates over bounded live refits")

        def __post_init__(self):
            if self.min_logvar_init >= self.max_logvar_init:
                raise ValueError(f"min_logvar_init ({self.min_logvar_init}) must be below "
                                 f"max_logvar_init ({self.max_logvar_init})")

    def __init__(self, settings=None, spec: ModelSpec | None = None):
        super().__init__(settings, spec)
        self.torch_dtype: torch.dtype = _DTYPES[self.settings.dtype]
        self.device = torch.device("cpu")
        self._act = _ACTIVATIONS[self.settings.activation]
        self.weights: list[torch.Tensor] = []     # (M, in, out) per layer
        self.biases: list[torch.Tensor] = []      # (M, 1, out) per layer
        self.max_logvar: torch.Tensor | None = None   # (M, 1, nx)
        self.min_logvar: torch.Tensor | None = None   # (M, 1, nx)
        self.elites = np.zeros(0, dtype=np.int64)
        self.val_mse = np.zeros(0)
        self.features: InputFeatures | None = None
        self.in_norm: Normalizer | None = None
        self.out_norm: Normalizer | None = None
        self._elite_params: tuple | None = None
        # Elite parameters with the normalisers and the linear prior folded in, for
        # rollout(); built on first use after every fit/load.
        self._folded: dict | None = None
        # Linear prior (numpy float64 A (in, nx), c (nx,), residual std (nx,)) and its
        # torch form used inside the forward pass; None without the prior.
        self.linear: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lin: tuple | None = None
        # (epoch, mean validation MSE over members, train NLL, seconds) of the last fit.
        self.history: list[tuple[int, float, float, float]] = []
        self._t_in_mean = self._t_in_std = self._t_out_mean = self._t_out_std = None
        # Parameters a warm-started fit begins from (see warm_start_from), else None.
        self._warm: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ network
    @property
    def n_elite(self) -> int:
        """Number of elite members used by predictions (E)."""
        return int(len(self.elites))

    def _init_params(self, n_in: int, n_out: int, gen: torch.Generator) -> None:
        s = self.settings
        M, H = s.members, s.hidden_units
        sizes = [n_in] + [H] * s.hidden_layers + [2 * n_out]
        self.weights, self.biases = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            W = torch.empty(M, a, b, dtype=self.torch_dtype)
            # Truncated normal, std 1/(2 sqrt(fan_in)), as PETS and mbrl-lib initialise.
            std = 1.0 / (2.0 * math.sqrt(a))
            torch.nn.init.trunc_normal_(W, 0.0, std, -2 * std, 2 * std, generator=gen)
            self.weights.append(W.requires_grad_())
            self.biases.append(torch.zeros(M, 1, b, dtype=self.torch_dtype, requires_grad=True))
        self.max_logvar = torch.full((M, 1, n_out), s.max_logvar_init, dtype=self.torch_dtype,
                                     requires_grad=True)
        self.min_logvar = torch.full((M, 1, n_out), s.min_logvar_init, dtype=self.torch_dtype,
                                     requires_grad=True)

    def _params(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases, self.max_logvar, self.min_logvar]

    @staticmethod
    def _forward_with(params, act, lin, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All members in one batched pass.

        Args:
            params: (weights, biases, max_logvar, min_logvar) with a leading member axis K.
            lin: None, or the linear prior (A (in, nx), c (nx,), s (nx,), log s^2 (nx,)).
            z: (K, P, in) normalised inputs; member k evaluates the rows z[k].

        Returns:
            mean, logvar: (K, P, nx) of the normalised state change.
        """
        weights, biases, max_lv, min_lv = params
        h = z
        for W, b in zip(weights[:-1], biases[:-1]):
            h = act(torch.baddbmm(b, h, W))
        out = torch.baddbmm(biases[-1], h, weights[-1])
        nx = out.shape[-1] // 2
        mean, raw = out[..., :nx], out[..., nx:]
        if lin is not None:
            # The network predicts the residual of the linear prior in units of the
            # residual's spread.
            A, c, res_std, log_var = lin
            mean = torch.addmm(c, z.reshape(-1, z.shape[-1]), A).view(mean.shape) \
                + res_std * mean
            raw = raw + log_var
        # Soft clamp into [min_logvar, max_logvar] (PETS appendix A.1): smooth, so the
        # bounds themselves receive gradients and can be learned.
        logvar = max_lv - F.softplus(max_lv - raw)
        logvar = min_lv + F.softplus(logvar - min_lv)
        return mean, logvar

    def _forward_all(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward_with((self.weights, self.biases, self.max_logvar,
                                   self.min_logvar), self._act, self._lin, z)

    def _refresh_caches(self) -> None:
        """Elite weights as contiguous no-grad tensors, and torch copies of the normalisers,
        so every prediction avoids re-indexing the weights and numpy conversions."""
        e = torch.as_tensor(self.elites, dtype=torch.long)
        self._folded = None
        with torch.no_grad():
            self._elite_params = ([W.detach()[e].contiguous() for W in self.weights],
                                  [b.detach()[e].contiguous() for b in self.biases],
                                  self.max_logvar.detach()[e].contiguous(),
                                  self.min_logvar.detach()[e].contiguous())
        def t(a):
            return torch.as_tensor(a, dtype=self.torch_dtype)
        self._t_in_mean, self._t_in_std = t(self.in_norm.mean), t(self.in_norm.std)
        self._t_out_mean, self._t_out_std = t(self.out_norm.mean), t(self.out_norm.std)

    def _set_linear(self, linear) -> None:
        self.linear = linear
        if linear is None:
            self._lin = None
            return
        A, c, res_std = (torch.as_tensor(a, dtype=self.torch_dtype) for a in linear)
        self._lin = (A, c, res_std, 2.0 * torch.log(res_std))

    def _require_fitted(self) -> None:
        if self._elite_params is None or self.spec is None:
            raise ModelError("ensemble model is not fitted (call fit or load an artifact)")

    def _forward_elites(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elites on z (E, P, in); long particle sets in chunks of _CHUNK rows, whose
        hidden activations stay in cache (1.6x faster for 5 x 5120 rows than one pass)."""
        P = z.shape[1]
        if P <= _CHUNK:
            return self._forward_with(self._elite_params, self._act, self._lin, z)
        parts = [self._forward_with(self._elite_params, self._act, self._lin, z[:, a:a + _CHUNK])
                 for a in range(0, P, _CHUNK)]
        return torch.cat([m for m, _ in parts], dim=1), torch.cat([v for _, v in parts], dim=1)

    # ------------------------------------------------------------------ learning
    def warm_start_from(self, previous: DynamicsModel) -> bool:
        """With ``warm_start``, make the next :meth:`fit` begin from ``previous``'s weights
        and log-variance bounds instead of a random initialisation (the refit of a live
        learner, as mbrl-lib's PETS keeps training one model as data arrives). The
        normalisers and the linear prior are refitted on the new data as always; the
        members then correct what moved, and each keeps the weights of lowest validation
        error -- scored before the first step too, so a refit never ends worse on the
        new validation data than the weights it started from.

        Returns:
            False if the next fit starts cold: setting off, another family, other members,
            layers or units (other inputs or outputs: checked by the fit, which then
            starts cold and reports ``warm_start`` 0).
        """
        self._warm = None
        s = self.settings
        if not s.warm_start or not isinstance(previous, EnsembleModel) \
                or previous.max_logvar is None or any(
                    getattr(previous.settings, k) != getattr(s, k)
                    for k in ("members", "hidden_layers", "hidden_units")):
            return False
        params = [p.detach().clone().to(self.torch_dtype) for p in previous._params()]
        self._warm = params
        return True

    def fit(self, data: TransitionBatch, rng: np.random.Generator | None = None,
            progress: Callable[[float], None] | None = None) -> FitReport:
        """Train the ensemble from scratch on ``data``.

        Args:
            data: N >= 10 transitions with finite values.
            rng: if given, the seed is drawn from it instead of ``settings.seed``.
            progress: called with the fraction of the epoch budget done after each epoch.

        Returns:
            FitReport with metrics ``val_mse`` (elite mean, normalised units), ``val_rmse``
            (elite-mean prediction, state units, averaged over dimensions), ``train_nll``
            (last epoch, per member and dimension), ``epochs``, ``best_epoch`` (last epoch
            that improved the mean validation MSE by the threshold),
            ``epoch_seconds`` (mean wall time of an epoch including validation),
            ``prior_ridge`` (ridge weight of the linear prior; 0 without the prior),
            ``batch_size`` (minibatch size used), ``steps`` (gradient steps taken) and
            ``val_horizon`` (1: one-step validation on random transitions; H: block
            validation, ``val_mse`` is then the mean squared H-step open-loop error per
            state dimension in units of the state's standard deviation).

        Raises:
            ModelError: too few transitions, non-finite values or incompatible names.
        """
        t0 = time.perf_counter()
        self._check_fit_data(data)
        s = self.settings
        self.features = InputFeatures(self.spec)
        X = self.features(data.states, data.actions)
        Y = data.next_states - data.states
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise ModelError("ensemble: transitions contain NaN or inf")
        seed = int(rng.integers(2**62)) if rng is not None else s.seed
        prev_threads = torch.get_num_threads()
        if s.threads > 0:
            torch.set_num_threads(s.threads)
        try:
            report = self._train(X, Y, seed, progress, data)
        finally:
            torch.set_num_threads(prev_threads)
        report.fit_seconds = time.perf_counter() - t0
        return report

    def _train(self, X: np.ndarray, Y: np.ndarray, seed: int,
               progress: Callable[[float], None] | None, data: TransitionBatch) -> FitReport:
        """Train on inputs X = features(states, actions) and state changes Y of ``data``.

        Validation: with at least ``min_val_blocks`` contiguous ``val_horizon``-step blocks
        in the held-out share, whole blocks are held out and scored by each member's own
        open-loop rollout over them (a random transition split cannot see members that
        overfit the few training episodes); otherwise a random share of transitions is
        scored on the one-step error.
        """
        s = self.settings
        states, actions = data.states, data.actions
        N = X.shape[0]
        M, dt = s.members, self.torch_dtype
        rs = np.random.default_rng(seed)
        H = s.val_horizon
        cand = evaluate.blocks(data, H)[0] if H > 1 else np.zeros((0, H), np.int64)
        n_blocks = int(round(s.val_fraction * N / H))
        val_blocks = None
        if H > 1 and n_blocks >= s.min_val_blocks and len(cand) >= 2 * n_blocks:
            val_blocks = cand[np.sort(rs.choice(len(cand), n_blocks, replace=False))]
            val_idx = val_blocks.reshape(-1)
            keep = np.ones(N, bool)
            keep[val_idx] = False
            tr_idx = np.flatnonzero(keep)
        else:
            split = rs.permutation(N)
            n_val = int(round(s.val_fraction * N)) if s.val_fraction > 0 else 0
            n_val = min(n_val, N - 1)
            val_idx, tr_idx = split[:n_val], split[n_val:]
        n_val = val_idx.size
        self.in_norm = Normalizer.fit(X[tr_idx])
        self.out_norm = Normalizer.fit(Y[tr_idx])
        Xt = torch.as_tensor(self.in_norm(X), dtype=dt)
        Yt = torch.as_tensor(self.out_norm(Y), dtype=dt)
        Xtr, Ytr = Xt[tr_idx], Yt[tr_idx]
        Xv, Yv = (Xt[val_idx], Yt[val_idx]) if n_val else (Xtr, Ytr)
        n_tr = Xtr.shape[0]
        # State spread of the training split: unit of the errors that choose the prior's
        # ridge and score block validation, so every state dimension counts alike.
        st_std = np.maximum(states[tr_idx].std(axis=0), 1e-6)

        self._elite_params = None   # not usable until training completes
        ridge = 0.0
        if s.linear_prior:
            ridge = s.prior_ridge
            if not ridge:
                cv_blocks = evaluate.blocks(data, _CV_BLOCK)[0]
                ridge = self._cv_ridge(self.in_norm(X), self.out_norm(Y), data, cv_blocks,
                                       st_std, rs) \
                    if len(cv_blocks) >= _CV_FOLDS else _RIDGE_DEFAULT
            self._set_linear(_ridge(Xtr.double().numpy(), Ytr.double().numpy(), ridge))
        else:
            self._set_linear(None)
        gen = torch.Generator().manual_seed(seed)
        self._init_params(X.shape[1], Y.shape[1], gen)
        warm = self._warm is not None and [tuple(p.shape) for p in self._warm] == \
            [tuple(p.shape) for p in self._params()]
        if warm:
            with torch.no_grad():
                for p, w in zip(self._params(), self._warm):
                    p.copy_(w)
        self._warm = None
        if s.bootstrap:
            boot = torch.randint(0, n_tr, (M, n_tr), generator=gen)
        else:
            boot = torch.arange(n_tr).expand(M, n_tr)
        opt = _Adam(self._params(), s.lr, [s.weight_decay] * len(self.weights)
                    + [0.0] * (len(self.biases) + 2))

        best_val = torch.full((M,), math.inf, dtype=torch.float64)
        best_mean = math.inf
        best = [p.detach().clone() for p in self._params()]
        stale = 0
        # Small data: smaller minibatches and several passes per epoch, so a fit on a few
        # hundred transitions takes hundreds of gradient steps instead of a few dozen
        # (measured on the cart-pole loop's data, N = 400-800: 20-step error 4x lower).
        bs = min(s.batch_size, n_tr, max(_MIN_BATCH, n_tr // s.min_batches))
        passes = -(-s.epoch_steps // -(-n_tr // bs))
        epoch_times: list[float] = []
        train_nll = math.nan
        best_epoch = 0
        epoch = 0
        if val_blocks is not None:
            val_fn = self._rollout_scorer(val_blocks, data, st_std)
        else:
            Xv_all = Xv.unsqueeze(0).expand(M, -1, -1)

            def val_fn() -> torch.Tensor:
                vm, _ = self._forward_all(Xv_all)
                return ((vm - Yv) ** 2).mean(dim=(1, 2)).to(torch.float64)
        params = self._params()
        self.history = []
        if warm:
            # The starting weights are a candidate too: a refit keeps each member's
            # warm-start weights unless training improves on them.
            with torch.no_grad():
                best_val = torch.nan_to_num(val_fn(), nan=math.inf)
            best_mean = float(best_val.mean())
            if not math.isfinite(best_mean):
                best_mean = math.inf
        t_start = time.perf_counter()
        stop_reason = f"stopped at the epoch budget ({s.epochs}) before early stopping"
        for epoch in range(1, s.epochs + 1):
            te = time.perf_counter()
            total, n_batches = 0.0, 0
            for _ in range(passes):
                # Per-member shuffle of its bootstrap sample, gathered once per pass so each
                # minibatch is a contiguous slice (no per-batch indexing or DataLoader).
                order = torch.argsort(torch.rand(M, n_tr, generator=gen), dim=1)
                idx = torch.gather(boot, 1, order)
                Xe, Ye = Xtr[idx], Ytr[idx]                  # (M, n_tr, in), (M, n_tr, nx)
                for a in range(0, n_tr, bs):
                    xb, yb = Xe[:, a:a + bs], Ye[:, a:a + bs]
                    mean, logvar = self._forward_all(xb)
                    # Gaussian NLL per member (mean over batch and dimensions), summed over
                    # members so each member's gradient is independent of M.
                    nll = 0.5 * (((mean - yb) ** 2) * torch.exp(-logvar)
                                 + logvar).mean(dim=(1, 2))
                    loss = nll.sum() + s.logvar_penalty * (self.max_logvar.sum()
                                                          - self.min_logvar.sum())
                    grads = torch.autograd.grad(loss, params)
                    if s.lr_half_life:
                        # Decay per step, not per epoch, so the schedule means the same for
                        # 500 and 100,000 transitions.
                        opt.lr = max(s.lr_min, s.lr * 0.5 ** (opt.t / s.lr_half_life))
                    opt.step(grads)
                    total += float(nll.detach().mean())
                    n_batches += 1
            train_nll = total / max(n_batches, 1)
            with torch.no_grad():
                val = val_fn()
            # Each member keeps its weights of lowest validation MSE; training stops when
            # the members' mean validation MSE has not improved by the threshold for
            # `patience` epochs (the mean is far less noisy than any single member's).
            improved = val < best_val
            if bool(improved.any()):
                best_val = torch.where(improved, val, best_val)
                with torch.no_grad():
                    for b, p in zip(best, params):
                        b[improved] = p.detach()[improved]
            mean_val = float(val.mean())
            if not math.isfinite(best_mean) or \
                    (best_mean - mean_val) / best_mean > s.improvement_threshold:
                best_mean = mean_val
                best_epoch = epoch
                stale = 0
            else:
                stale += 1
            epoch_times.append(time.perf_counter() - te)
            self.history.append((epoch, float(val.mean()), train_nll, epoch_times[-1]))
            if progress is not None:
                progress(epoch / s.epochs)
            if stale >= s.patience and epoch >= s.min_epochs:
                stop_reason = ""
                break
            if s.max_seconds and time.perf_counter() - t_start >= s.max_seconds:
                stop_reason = f"stopped by the time budget ({s.max_seconds:g} s) at epoch {epoch}"
                break

        with torch.no_grad():
            for b, p in zip(best, self._params()):
                p.copy_(b)
        for p in self._params():
            p.requires_grad_(False)
        self.val_mse = best_val.numpy().copy()
        n_el = min(s.n_elites, M)
        self.elites = np.sort(np.argsort(self.val_mse, kind="stable")[:n_el]).astype(np.int64)
        self._refresh_caches()

        metrics = {"val_mse": float(self.val_mse[self.elites].mean()),
                   "train_nll": float(train_nll), "epochs": float(epoch),
                   "best_epoch": float(best_epoch),
                   "epoch_seconds": float(np.mean(epoch_times)) if epoch_times else 0.0,
                   "prior_ridge": float(ridge), "batch_size": float(bs),
                   "steps": float(opt.t), "warm_start": float(warm),
                   "val_horizon": float(H if val_blocks is not None else 1)}
        if n_val:
            vs = states[val_idx]
            pred, _ = self.predict(vs, actions[val_idx])
            err = pred - (vs + Y[val_idx])
            metrics["val_rmse"] = float(np.sqrt(np.mean(err ** 2)))
        notes = [stop_reason] if stop_reason else []
        return FitReport(n_tr, n_val, 0.0, metrics, notes)

    def _rollout_scorer(self, blocks: np.ndarray, data: TransitionBatch,
                        st_std: np.ndarray) -> Callable[[], torch.Tensor]:
        """Validation by open-loop rollout: each member runs from the first state of every
        (R, H) block of transition indices on the logged actions, fed its own mean
        predictions; the scorer returns (M,) float64 mean squared errors (see
        :func:`_rollout_mse`; a diverging member scores inf)."""
        dt, M = self.torch_dtype, self.settings.members
        im, is_, om, os_ = (torch.as_tensor(a, dtype=dt) for a in (
            self.in_norm.mean, self.in_norm.std, self.out_norm.mean, self.out_norm.std))

        def step(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            mean, _ = self._forward_all((self.features(x, u.expand(M, -1, -1)) - im) / is_)
            return x + om + os_ * mean
        return lambda: _rollout_mse(step, blocks, data, st_std, dt, M)

    def _cv_ridge(self, Z: np.ndarray, Y: np.ndarray, data: TransitionBatch,
                  blocks: np.ndarray, st_std: np.ndarray, rng: np.random.Generator) -> float:
        """Ridge weight of the linear prior from ``_RIDGE_GRID`` by ``_CV_FOLDS``-fold
        cross-validation over whole contiguous blocks, each scored by the prior's own
        open-loop rollout over it (random transitions would leak the neighbours of every
        held-out step into the training folds and favour no ridge; the rollout error is
        what the prior is for).

        Args:
            Z: (N, in) standardised inputs, Y: (N, nx) normalised state changes of
                ``data``, float64, with ``in_norm``/``out_norm`` fitted.
            blocks: (R, L) transition indices, R >= _CV_FOLDS.
            st_std: (nx,) unit of the rollout errors.

        Returns:
            the smallest candidate whose held-out rollout error (summed over folds) is
            within ``_CV_TOLERANCE`` of the lowest: the score is the prior's alone, and
            the members correct a prior's bias (a large ridge on plentiful data) but not
            its variance (a small ridge on scarce data).
        """
        fold = rng.permutation(len(blocks)) % _CV_FOLDS
        im, is_, om, os_ = (torch.as_tensor(a, dtype=torch.float64) for a in (
            self.in_norm.mean, self.in_norm.std, self.out_norm.mean, self.out_norm.std))
        scores = np.zeros(len(_RIDGE_GRID))
        for k in range(_CV_FOLDS):
            held = blocks[fold == k]
            keep = np.ones(len(Z), bool)
            keep[held.reshape(-1)] = False
            fits = [_ridge(Z[keep], Y[keep], reg)[:2] for reg in _RIDGE_GRID]
            # All candidates at once along the leading axis.
            A = torch.as_tensor(np.stack([f[0] for f in fits]))        # (G, in, nx)
            c = torch.as_tensor(np.stack([f[1] for f in fits]))[:, None]

            def step(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
                z = (self.features(x, u.expand(len(fits), -1, -1)) - im) / is_
                return x + om + os_ * (torch.bmm(z, A) + c)
            scores += _rollout_mse(step, held, data, st_std, torch.float64,
                                   len(fits)).numpy()
        return float(_RIDGE_GRID[int(np.argmax(scores <= (1 + _CV_TOLERANCE) * scores.min()))])

    # ------------------------------------------------------------------ torch API
    def _norm_in(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (self.features(x, u) - self._t_in_mean) / self._t_in_std

    def _check_torch(self, x: torch.Tensor, u: torch.Tensor) -> None:
        spec = self.spec
        if x.ndim != 2 or u.ndim != 2 or x.shape[1] != spec.nx or u.shape[1] != spec.nu \
                or x.shape[0] != u.shape[0]:
            raise ModelError(f"expected x (P, {spec.nx}) and u (P, {spec.nu}) tensors, got "
                             f"{tuple(x.shape)} and {tuple(u.shape)}")

    def draw_members(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Balanced random elite assignment for ``n`` particles (for TS-inf).

        Returns:
            (n,) long tensor in [0, n_elite): each elite gets n // E or n // E + 1
            particles, in random order.
        """
        self._require_fitted()
        E = self.n_elite
        perm = torch.randperm(n, generator=generator)
        return perm % E

    @torch.no_grad()
    def member_means(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Next-state mean of every elite for every particle (for disagreement measures).

        Args:
            x: (P, nx), u: (P, nu) tensors of ``torch_dtype``, state and effort units.

        Returns:
            (E, P, nx) next-state means, state units.
        """
        self._require_fitted()
        self._check_torch(x, u)
        z = self._norm_in(x, u)
        mean, _ = self._forward_elites(z.unsqueeze(0).expand(self.n_elite, -1, -1))
        return x + self._t_out_mean + self._t_out_std * mean

    def _grouped(self, z: torch.Tensor, member: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each row of z through its own elite, all elites in one batched pass.

        Rows are sorted by member and placed in an (E, k, in) block (k = the largest group,
        shorter groups zero-padded), mirroring mbrl-lib's reshape of P = E * k particles.
        """
        E = self.n_elite
        P = z.shape[0]
        if member.shape != (P,):
            raise ModelError(f"member_idx must have shape ({P},), got {tuple(member.shape)}")
        member = member.to(torch.long)
        if P and (int(member.min()) < 0 or int(member.max()) >= E):
            raise ModelError(f"member_idx must be in [0, {E}) (elite indices)")
        order = torch.argsort(member, stable=True)
        counts = torch.bincount(member, minlength=E)
        k = int(counts.max()) if P else 0
        if P == E * k:
            # Balanced assignment: a pure reshape, no padding.
            mean, logvar = self._forward_elites(z[order].view(E, k, z.shape[1]))
            nx = mean.shape[-1]
            mean, logvar = mean.reshape(P, nx), logvar.reshape(P, nx)
        else:
            ms = member[order]
            start = torch.cumsum(counts, 0) - counts
            rank = torch.arange(P) - start[ms]
            block = z.new_zeros((E, k, z.shape[1]))
            block[ms, rank] = z[order]
            mean, logvar = self._forward_elites(block)
            mean, logvar = mean[ms, rank], logvar[ms, rank]
        out_mean = torch.empty_like(mean)
        out_lv = torch.empty_like(logvar)
        out_mean[order] = mean
        out_lv[order] = logvar
        return out_mean, out_lv

    @torch.no_grad()
    def propagate(self, x: torch.Tensor, u: torch.Tensor, mode: str = "expectation",
                  member_idx: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, sample: bool = True
                  ) -> torch.Tensor:
        """One step of particle propagation (PETS section 4).

        Args:
            x: (P, nx) states, u: (P, nu) efforts; tensors of ``torch_dtype`` on ``device``.
            mode: 'expectation' (mean of the elites' means; deterministic), 'ts1' (every
                particle uses a uniformly random elite, re-drawn at each call; balanced as
                in mbrl-lib) or 'tsinf' (particle p uses elite ``member_idx[p]``; keep the
                indices fixed over the horizon, e.g. from :meth:`draw_members`).
            member_idx: (P,) long elite indices in [0, E); required for 'tsinf'.
            generator: torch generator for the member draw and the Gaussian noise.
            sample: for the TS modes, sample the member's Gaussian (True, as in PETS) or
                return its mean.

        Returns:
            (P, nx) next states, state units.

        Raises:
            ModelError: unknown mode, missing/invalid member_idx, wrong shapes.
        """
        self._require_fitted()
        self._check_torch(x, u)
        if mode not in _MODES:
            raise ModelError(f"unknown propagation mode {mode!r}; one of {', '.join(_MODES)}")
        z = self._norm_in(x, u)
        if mode == "expectation":
            mean, _ = self._forward_elites(z.unsqueeze(0).expand(self.n_elite, -1, -1))
            delta = mean.mean(dim=0)
        else:
            if mode == "ts1":
                member = self.draw_members(x.shape[0], generator)
            elif member_idx is None:
                raise ModelError("propagate(mode='tsinf') needs member_idx (P,) elite indices")
            else:
                member = member_idx
            mean, logvar = self._grouped(z, member)
            delta = mean
            if sample:
                noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
                delta = mean + torch.exp(0.5 * logvar) * noise
        return x + self._t_out_mean + self._t_out_std * delta

    # ------------------------------------------------------------------ whole-horizon rollouts
    def _fold(self) -> dict:
        """Elite parameters with the normalisers and the linear prior folded in (cached).

        In centred coordinates ``xc = x - in_mean[:nx]``, ``uc = u - in_mean[nx:]`` the
        normalised input is ``[xc, uc] / in_std``, so the first layer is
        ``b0 + xc @ (W0x / sx) + uc @ (W0u / su)``: the division is folded into the weights
        while the centring stays a subtraction (no cancellation for columns with a tiny
        floored std). The linear prior and the output de-normalisation,
        ``out_mean + out_std (c + z A + res_std net)``, are affine too: their input terms
        become ``nx`` extra output columns of the first layer's product, the scales go
        into the last layer's mean columns and the constants into one per-member bias.
        Computed in float64, stored in ``torch_dtype``.
        """
        if self._folded is not None:
            return self._folded
        f64, dt = torch.float64, self.torch_dtype
        Ws, bs, max_lv, min_lv = self._elite_params
        nx, nu = self.spec.nx, self.spec.nu
        E = Ws[0].shape[0]
        s = torch.as_tensor(self.in_norm.std, dtype=f64)
        om = torch.as_tensor(self.out_norm.mean, dtype=f64)
        osd = torch.as_tensor(self.out_norm.std, dtype=f64)
        W0 = Ws[0].to(f64) / s[:, None]                                   # (E, in, H)
        WL, bL = Ws[-1].to(f64), bs[-1].to(f64)                           # (E, H, 2nx)
        if self.linear is not None:
            A, c, res_std = (torch.as_tensor(a, dtype=f64) for a in self.linear)
            lin = A / s[:, None] * osd                                     # (in, nx)
            const = om + osd * c
            scale = osd * res_std
            lv_shift = 2.0 * torch.log(res_std)
        else:
            lin = torch.zeros(nx + nu, nx, dtype=f64)
            const, scale, lv_shift = om, osd, torch.zeros(nx, dtype=f64)
        first_w = torch.cat([W0, lin.expand(E, nx + nu, nx)], dim=2)     # (E, in, H + nx)
        first_b = torch.cat([bs[0].to(f64), bL[..., :nx] * scale + const], dim=2)
        def t(a):
            return a.to(dt).contiguous()
        self._folded = {
            "x_mean": t(torch.as_tensor(self.in_norm.mean[:nx], dtype=f64)),
            "u_mean": t(torch.as_tensor(self.in_norm.mean[nx:], dtype=f64)),
            "first_w": t(first_w), "first_b": t(first_b),
            "hidden": [(t(W), t(b)) for W, b in zip(Ws[1:-1], bs[1:-1])],
            "last_mean": t(WL[..., :nx] * scale), "last_lv": t(WL[..., nx:]),
            "last_lv_b": t(bL[..., nx:] + lv_shift), "out_std": t(osd),
            "max_lv": max_lv, "min_lv": min_lv, "H": Ws[0].shape[2]}
        return self._folded

    def _rollout_stepwise(self, x0, U, mode, generator, sample, out, disagreement):
        """:meth:`rollout` by :meth:`propagate` steps (same member assignment): for models
        with sin/cos inputs, which :meth:`_fold`'s affine first layer cannot take."""
        n, T, _ = U.shape
        nx = self.spec.nx
        xs = out if out is not None else torch.empty((T + 1, n, nx), dtype=self.torch_dtype)
        x = x0.expand(n, nx) if x0.ndim == 1 else x0
        xs[0] = x
        member = torch.arange(n) % self.n_elite if mode == "tsinf" else None
        for t in range(T):
            u = U[:, t]
            if disagreement is not None and mode == "expectation":
                z = self._norm_in(x, u).unsqueeze(0).expand(self.n_elite, -1, -1)
                disagreement[t] = self._forward_elites(z)[0].var(dim=0, unbiased=False
                                                                 ).mean(dim=-1)
            x = self.propagate(x, u, mode, member, generator, sample=sample)
            xs[t + 1] = x
        return xs

    def _rollout_chunk(self, f: dict, z: torch.Tensor, E: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every member on its rows z (E or 1, r, nx + nu) = centred [x, u]
        (a batch of 1 is shared by all members). Returns the state change (E, r, nx) in
        state units (the members' means) and the last hidden activations (E, r, H)."""
        H = f["H"]
        # One product gives the first layer's pre-activations and, in the last nx
        # columns, the affine part of the output (linear prior + de-normalisation).
        pre = torch.baddbmm(f["first_b"], z.expand(E, -1, -1), f["first_w"])
        h = self._act(pre[..., :H])
        inplace = self._act is F.silu
        for W, b in f["hidden"]:
            h = torch.baddbmm(b, h, W)
            h = F.silu(h, inplace=True) if inplace else self._act(h)
        return torch.baddbmm(pre[..., H:], h, f["last_mean"]), h

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, U: torch.Tensor, mode: str = "tsinf",
                generator: torch.Generator | None = None, sample: bool = True,
                out: torch.Tensor | None = None,
                disagreement: torch.Tensor | None = None) -> torch.Tensor:
        """Open-loop rollouts of n action sequences over T steps, in one call.

        The same states as T calls of :meth:`propagate` (up to rounding) with the member
        assignment the sampling planners use, and the same draws from ``generator``,
        without the per-step overhead: every step is one batched product per layer over
        (E, n / E, .) blocks, and the normalisers and the linear prior are folded into
        the weights (:meth:`_fold`).

        * 'tsinf': row r keeps elite ``r % E`` over the horizon (``propagate(x, u,
          'tsinf', arange(n) % E, generator)`` at every step). The rows are regrouped by
          member once per call (member-major blocks), so the steps need no gather,
          scatter or concatenation.
        * 'ts1': every step draws a new balanced random assignment, exactly as
          ``propagate(x, u, 'ts1', generator=generator)`` does (one gather and one
          scatter of the (n, nx + nu) rows per step).
        * 'expectation': the mean of the elites at every step (deterministic).

        Args:
            x0: (nx,) or (n, nx) initial states (``torch_dtype``).
            U: (n, T, nu) actions.
            mode: 'tsinf', 'ts1' (n must be a multiple of E for both) or 'expectation'.
            generator: torch generator for the member draws ('ts1') and the Gaussian
                noise (``sample``).
            sample: TS modes only: add each member's predicted Gaussian noise (PETS).
            out: optional contiguous (T+1, n, nx) tensor to write the states into.
            disagreement: 'expectation' only: optional (T, n) tensor that receives
                :meth:`uncertainty` at every step's (x_t, u_t) (variance of the elites'
                normalised means, averaged over dimensions), from the same forward pass.

        Returns:
            xs (T+1, n, nx) states, xs[0] = x0, state units.

        Raises:
            ModelError: unknown mode, wrong shapes, n not a multiple of E.
        """
        self._require_fitted()
        spec = self.spec
        if U.ndim != 3 or U.shape[2] != spec.nu:
            raise ModelError(f"expected U (n, T, {spec.nu}), got {tuple(U.shape)}")
        n, T, nu = U.shape
        nx = spec.nx
        if tuple(x0.shape) not in ((nx,), (n, nx)):
            raise ModelError(f"expected x0 ({nx},) or ({n}, {nx}), got {tuple(x0.shape)}")
        if mode not in _MODES:
            raise ModelError(f"unknown propagation mode {mode!r}; one of {', '.join(_MODES)}")
        E = self.n_elite
        if mode != "expectation" and n % E:
            raise ModelError(f"rollout(mode={mode!r}) needs a multiple of {E} rows, got {n}")
        if self.features.periodic.size:
            return self._rollout_stepwise(x0, U, mode, generator, sample, out, disagreement)
        f = self._fold()
        dt = self.torch_dtype
        if out is None:
            out = torch.empty((T + 1, n, nx), dtype=dt)
        elif tuple(out.shape) != (T + 1, n, nx) or out.dtype != dt or not out.is_contiguous():
            raise ModelError(f"out must be a contiguous ({T + 1}, {n}, {nx}) {dt} tensor")
        if disagreement is not None and (mode != "expectation"
                                         or tuple(disagreement.shape) != (T, n)):
            raise ModelError(f"disagreement needs mode 'expectation' and shape ({T}, {n})")
        U = U.to(dt)
        x0c = x0.to(dt) - f["x_mean"]
        if mode == "tsinf":
            self._rollout_tsinf(f, x0c, U, generator, sample, out)
        elif mode == "ts1":
            self._rollout_ts1(f, x0c, U, generator, sample, out)
        else:
            # One block shared by all members; their mean is the step.
            Z = torch.empty((T + 1, 1, n, nx + nu), dtype=dt)
            torch.sub(U.transpose(0, 1)[:, None], f["u_mean"], out=Z[:T, ..., nx:])
            Z[T, ..., nx:] = 0.0
            Zx = Z[..., :nx]
            Zx[0] = x0c
            inv_var = 1.0 / f["out_std"] ** 2
            for t in range(T):
                for a in range(0, n, _CHUNK):
                    b = min(n, a + _CHUNK)
                    d, _ = self._rollout_chunk(f, Z[t, :, a:b], E)
                    torch.add(Zx[t, :, a:b], d.mean(dim=0, keepdim=True),
                              out=Zx[t + 1, :, a:b])
                    if disagreement is not None:
                        # The members differ only in the network part: d_e = out_std *
                        # (normalised mean_e) + a member-independent term.
                        disagreement[t, a:b] = (d.var(dim=0, unbiased=False)
                                                * inv_var).mean(dim=-1)
            torch.add(Zx[:, 0], f["x_mean"], out=out)
        return out

    def _rollout_tsinf(self, f: dict, x0c: torch.Tensor, U: torch.Tensor,
                       generator: torch.Generator | None, sample: bool,
                       out: torch.Tensor) -> None:
        n, T, nu = U.shape
        nx, E, dt = self.spec.nx, self.n_elite, self.torch_dtype
        k = n // E
        # Z[t] = centred [x_t, u_t] grouped by member: row r = j E + e is block [e, j],
        # member-major, so each step reads contiguous (k, nx + nu) blocks.
        Z = torch.empty((T + 1, E, k, nx + nu), dtype=dt)
        Zx = Z[..., :nx]
        torch.sub(U.view(k, E, T, nu).permute(2, 1, 0, 3), f["u_mean"], out=Z[:T, ..., nx:])
        Z[T, ..., nx:] = 0.0
        Zx[0] = x0c.view(k, E, nx).transpose(0, 1) if x0c.ndim == 2 else x0c
        for t in range(T):
            noise = None
            if sample:
                # propagate draws (n, nx) noise in row order: the same numbers, regrouped.
                noise = torch.randn((k, E, nx), generator=generator, dtype=dt).transpose(0, 1)
            # Long particle sets in chunks of _CHUNK rows per member, whose hidden
            # activations stay in cache.
            for a in range(0, k, _CHUNK):
                b = min(k, a + _CHUNK)
                d, h = self._rollout_chunk(f, Z[t, :, a:b], E)
                nxt = Zx[t + 1, :, a:b]
                torch.add(Zx[t, :, a:b], d, out=nxt)
                if noise is not None:
                    nxt.addcmul_(self._noise_std(f, h), noise[:, a:b])
        # Back to row order and state units.
        torch.add(Zx.permute(0, 2, 1, 3), f["x_mean"], out=out.view(T + 1, k, E, nx))

    def _rollout_ts1(self, f: dict, x0c: torch.Tensor, U: torch.Tensor,
                     generator: torch.Generator | None, sample: bool,
                     out: torch.Tensor) -> None:
        n, T, nu = U.shape
        nx, E, dt = self.spec.nx, self.n_elite, self.torch_dtype
        k = n // E
        d_in = nx + nu
        # Rows stay in row order; every step gathers them into member blocks and back.
        Z = torch.empty((T + 1, n, d_in), dtype=dt)
        Zx = Z[..., :nx]
        torch.sub(U.transpose(0, 1), f["u_mean"], out=Z[:T, :, nx:])
        Z[T, :, nx:] = 0.0
        Zx[0] = x0c
        delta = torch.empty((n, nx), dtype=dt)
        rows = torch.arange(n)
        inv = torch.empty(n, dtype=torch.long)
        for t in range(T):
            # The draw of propagate('ts1') (draw_members: row r -> member perm[r] % E), and
            # the rows grouped by member without a sort: with inv the inverse permutation,
            # inv[v] for v = j, j + E, ... are member j's rows.
            perm = torch.randperm(n, generator=generator)
            inv[perm] = rows
            order = inv.view(k, E).t().reshape(-1)
            zg = Z[t].index_select(0, order).view(E, k, d_in)
            dg = delta.view(E, k, nx)
            std = torch.empty((E, k, nx), dtype=dt) if sample else None
            for a in range(0, k, _CHUNK):
                b = min(k, a + _CHUNK)
                d, h = self._rollout_chunk(f, zg[:, a:b], E)
                dg[:, a:b] = d
                if std is not None:
                    std[:, a:b] = self._noise_std(f, h)
            nxt = Zx[t + 1]
            nxt.copy_(Zx[t])
            nxt.index_add_(0, order, delta)
            if std is not None:
                noise = torch.randn((n, nx), generator=generator, dtype=dt)
                s_rows = torch.empty((n, nx), dtype=dt)
                s_rows[order] = std.view(n, nx)
                nxt.addcmul_(s_rows, noise)
        torch.add(Zx, f["x_mean"], out=out)

    def _noise_std(self, f: dict, h: torch.Tensor) -> torch.Tensor:
        """Standard deviation (state units) of each member's Gaussian from the last hidden
        activations h (E, r, H), with the soft log-variance clamp of the forward pass."""
        raw = torch.baddbmm(f["last_lv_b"], h, f["last_lv"])
        max_lv, min_lv = f["max_lv"], f["min_lv"]
        logvar = max_lv - F.softplus(max_lv - raw)
        logvar = min_lv + F.softplus(logvar - min_lv)
        return torch.exp(0.5 * logvar) * f["out_std"]


    @torch.no_grad()
    def member_outputs(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs of ALL members (not only elites), for diagnostics.

        Returns:
            mean, logvar: (M, B, nx) float64 of the normalised state change.
        """
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        z = torch.as_tensor(self.in_norm(self.features(x, u)), dtype=self.torch_dtype)
        mean, logvar = self._forward_all(z.unsqueeze(0).expand(self.settings.members, -1, -1))
        return mean.numpy().astype(np.float64), logvar.numpy().astype(np.float64)

    def logvar_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Learned (min_logvar, max_logvar), each (M, nx) float64, normalised units.

        The soft clamp keeps every member log-variance in
        ``[min, min + softplus(max - min)]``; the upper edge exceeds ``max`` by less than
        ``exp(min - max)``.
        """
        self._require_fitted()
        return (self.min_logvar.detach().numpy()[:, 0].astype(np.float64),
                self.max_logvar.detach().numpy()[:, 0].astype(np.float64))

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
        """Autograd Jacobian of the predicted mean along a trajectory (all T at once).

        Args:
            xs: (T, nx), us: (T, nu).

        Returns:
            Linearization: fx (T, nx, nx), fu (T, nx, nu), f0 (T, nx) so that
            ``fx x + fu u + f0`` equals the predicted mean at the knots, and cov
            (T, nx, nx) = diag(predicted variance).
        """
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
        # Chain rule through the normalisers, next = x + out_mean + out_std * f(z),
        # z = (features(x, u) - in_mean) / in_std, and the features (sin/cos of angles).
        J = J * self.out_norm.std[None, :, None] / self.in_norm.std[None, None, :]
        Jx, fu = self.features.chain(J, xs)
        fx = Jx + np.eye(nx)[None]
        mean_np, var = self.predict(xs, us)
        f0 = mean_np - np.einsum("tij,tj->ti", fx, xs) - np.einsum("tij,tj->ti", fu, us)
        cov = np.zeros((T, nx, nx))
        cov[:, np.arange(nx), np.arange(nx)] = var
        return Linearization(fx, fu, f0, cov)

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
        arrays.update(self.in_norm.arrays("in"))
        arrays.update(self.out_norm.arrays("out"))
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
        self.in_norm = Normalizer.from_arrays(arrays, "in")
        self.out_norm = Normalizer.from_arrays(arrays, "out")
        self._set_linear(tuple(np.asarray(arrays[k], dtype=np.float64)
                               for k in ("lin_A", "lin_c", "lin_std"))
                         if s.linear_prior else None)
        self._refresh_caches()


# Ridge of the linear prior without enough contiguous data to cross-validate it, the
# candidates of the cross-validation, its number of folds and its block length (steps;
# long enough that a held-out block's inner steps have no training neighbours).
_RIDGE_DEFAULT = 1e-4
_RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_CV_FOLDS = 5
_CV_BLOCK = 20
# Relative excess CV error accepted for a smaller ridge. Measured on arm2/arm7/cartpole
# (500-10,000 transitions): the 20-step errors of 1e-4 and the best candidate differ by
# <= 3 % where the small ridge serves the ensemble better (arm2, cartpole; arm7 at
# 10,000: ~11 %) and by >= 22 % where it does not (arm7 at 500 and 2,000).
_CV_TOLERANCE = 0.15


def _rollout_mse(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 blocks: np.ndarray, data: TransitionBatch, st_std: np.ndarray,
                 dtype: torch.dtype, K: int) -> torch.Tensor:
    """Open-loop error of K models over (R, H) blocks of transition indices of ``data``.

    ``step(x (K, R, nx), u (1, R, nu)) -> (K, R, nx)`` advances all K models one step;
    each starts from the first state of every block and follows the logged actions.

    Returns:
        (K,) float64 mean over the H steps, R blocks and state dimensions of the squared
        error in units of ``st_std`` (NaN as inf).
    """
    def t(a):
        return torch.as_tensor(np.asarray(a), dtype=dtype)
    x = t(data.states[blocks[:, 0]]).unsqueeze(0).expand(K, -1, -1)
    U, Xn, scale = t(data.actions[blocks]), t(data.next_states[blocks]), t(st_std)
    err = torch.zeros(K, dtype=torch.float64)
    for h in range(blocks.shape[1]):
        x = step(x, U[:, h].unsqueeze(0))
        err += (((x - Xn[:, h]) / scale) ** 2).mean(dim=(1, 2)).to(torch.float64)
    return torch.nan_to_num(err / blocks.shape[1], nan=math.inf)


def _ridge(X: np.ndarray, Y: np.ndarray, reg: float = _RIDGE_DEFAULT, floor: float = 1e-3
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression Y ~ X A + c on standardised inputs and targets.

    Args:
        X: (n, in), Y: (n, nx) float64. reg: ridge weight relative to the per-sample Gram
            matrix (whose diagonal is ~1 for standardised inputs). floor: lower bound of the
            residual standard deviation, so a dimension the prior explains exactly does not
            make the network's output scale vanish.

    Returns:
        A (in, nx), c (nx,), residual standard deviation (nx,).
    """
    n, d = X.shape
    xm, ym = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - xm, Y - ym
    A = np.linalg.solve(Xc.T @ Xc / n + reg * np.eye(d), Xc.T @ Yc / n)
    c = ym - xm @ A
    res = Y - X @ A - c
    return A, c, np.maximum(res.std(axis=0), floor)


class _Adam:
    """Adam (Kingma & Ba 2015) with coupled L2 weight decay, as torch.optim.Adam computes it.

    Not torch.optim.Adam because constructing any ``torch.optim`` optimizer imports
    torch._dynamo on first use, about 2 s of start-up in every process that fits a model.
    The update runs in PyTorch's fused single-pass kernel (``torch._fused_adam_``, the one
    behind ``torch.optim.Adam(fused=True)``; a third of the time of separate in-place ops on
    a 650k-parameter ensemble) when this torch build has it, else in plain tensor ops.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: list[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.wd = params, lr, weight_decay
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0
        self.fused = hasattr(torch, "_fused_adam_")
        # One parameter group per distinct weight decay (the fused kernel takes a scalar).
        self.groups: dict[float, list[int]] = {}
        for i, wd in enumerate(weight_decay):
            self.groups.setdefault(float(wd), []).append(i)
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in params]

    @torch.no_grad()
    def step(self, grads) -> None:
        self.t += 1
        if self.fused:
            for st in self.steps:
                st.fill_(float(self.t))
            for wd, idx in self.groups.items():
                torch._fused_adam_([self.params[i] for i in idx], [grads[i] for i in idx],
                                   [self.m[i] for i in idx], [self.v[i] for i in idx], [],
                                   [self.steps[i] for i in idx], lr=self.lr, beta1=self.b1,
                                   beta2=self.b2, weight_decay=wd, eps=self.eps,
                                   amsgrad=False, maximize=False)
            return
        bc1 = 1.0 - self.b1 ** self.t
        bc2 = 1.0 - self.b2 ** self.t
        for p, g, m, v, wd in zip(self.params, grads, self.m, self.v, self.wd):
            if wd:
                g = g.add(p, alpha=wd)
            m.lerp_(g, 1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            denom = (v / bc2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bc1)
