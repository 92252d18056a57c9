"""Training of the ensemble: Gaussian NLL, bootstrap, early stopping, elites.

PETS (Chua et al., NeurIPS 2018) as mbrl-lib's ``ModelTrainer`` trains it: Gaussian
negative log-likelihood plus ``logvar_penalty * (sum max_logvar - sum min_logvar)``, Adam
with L2 weight decay on the weights, one bootstrap resample of the training set per member,
per-member shuffled minibatches from pre-gathered index tensors, a held-out validation
split, and early stopping that keeps each member's weights of lowest validation error; the
``n_elites`` best members are the elites (MBPO). Additions: a closed-form ridge prior whose
residual the members learn (its ridge cross-validated over contiguous blocks), learning
rate decay, small-data minibatches (several passes per epoch), validation by open-loop
rollouts over held-out blocks when there are enough, and warm starts from the previous
model (a live refit).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from mbrl_ros.core.models import evaluate
from mbrl_ros.core.models.base import DynamicsModel, FitReport, ModelError
from mbrl_ros.core.models.pipeline import AffinePrior, DeltaPipeline, InputFeatures
from mbrl_ros.core.types import TransitionBatch

# Smallest automatic minibatch (see the batch_size setting): below it the per-step overhead
# of the batched members dominates and gradients get noisy.
_MIN_BATCH = 32


class Trainer:
    """Fitting of :class:`~mbrl_ros.core.models.ensemble.EnsembleModel` (a mixin)."""

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
        if not s.warm_start or not isinstance(previous, Trainer) \
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
        self.pipeline = DeltaPipeline.fit(self.spec, states, actions, data.next_states,
                                          rows=tr_idx)
        self.features = self.pipeline.features
        self.in_norm, self.out_norm = self.pipeline.in_norm, self.pipeline.out_norm
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
        # hundred transitions takes hundreds of gradient steps instead of a few dozen.
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


# Ridge of the linear prior without enough contiguous data to cross-validate it, the
# candidates of the cross-validation, its number of folds and its block length (steps;
# long enough that a held-out block's inner steps have no training neighbours).
_RIDGE_DEFAULT = 1e-4
_RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_CV_FOLDS = 5
_CV_BLOCK = 20
# Relative excess CV error accepted for a smaller ridge (chosen from the 20-step errors on
# arm2/arm7/cartpole data: BENCHMARKS.md, "Issue 3", "Ensemble design measurements").
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
    """The linear prior Y ~ X A + c on standardised inputs and targets: the shared
    :class:`~mbrl_ros.core.models.pipeline.AffinePrior` ridge fit, as the tuple the
    network's ``_set_linear`` and the artifact keep.

    Args:
        X: (n, in), Y: (n, nx) float64. reg: ridge weight relative to the per-sample Gram
            matrix (whose diagonal is ~1 for standardised inputs). floor: lower bound of the
            residual standard deviation, so a dimension the prior explains exactly does not
            make the network's output scale vanish.

    Returns:
        A (in, nx), c (nx,), residual standard deviation (nx,).
    """
    prior = AffinePrior.fit(X, Y, reg)
    return prior.W, prior.c, prior.residual_std(X, Y, floor)


class _Adam:
    """Adam (Kingma & Ba 2015) with coupled L2 weight decay, as torch.optim.Adam computes it.

    Not torch.optim.Adam because constructing any ``torch.optim`` optimizer imports
    torch._dynamo on first use, seconds of start-up in every process that fits a model.
    The update runs in PyTorch's fused single-pass kernel (``torch._fused_adam_``, the one
    behind ``torch.optim.Adam(fused=True)``, faster than separate in-place ops) when this
    torch build has it, else in plain tensor ops.
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
