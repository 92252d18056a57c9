"""Probabilistic ensemble of neural networks (PE), the dynamics model of PETS.

Chua, Calandra, McAllister, Levine, "Deep Reinforcement Learning in a Handful of Trials
using Probabilistic Dynamics Models", NeurIPS 2018. The design follows the reference
implementation in facebookresearch/mbrl-lib (``GaussianMLP``, ``OneDTransitionRewardModel``,
``ModelTrainer``).

What: M members, each an MLP with a Gaussian head giving the mean and the log-variance of
the *normalised state change* ``(x_{t+1} - x_t - mean) / std`` from the normalised input
``[x_t, u_t]`` (sine and cosine of continuous joints' angles). Predictions use the
``n_elites`` members of lowest validation error (MBPO's refinement; all of them by
default, as in PETS): mean over elites, variance = aleatoric (the members' variances) +
epistemic (the spread of their means). Shapes: x (B, nx) [rad, m, rad/s, m/s], u (B, nu)
[N·m, N]; numpy float64 for the generic interface, torch (``torch_dtype``) for sampling
planners (:meth:`EnsembleModel.propagate`, :meth:`EnsembleModel.rollout`,
:meth:`EnsembleModel.member_means`). Member indices of the torch API index the *elite*
list (``0 <= i < n_elite``).

Seams:

* :mod:`.network` -- all members as ONE batched network, the soft log-variance bounds
  (PETS appendix A.1), the elite caches;
* :mod:`.trainer` -- Gaussian NLL with bootstrap, early stopping and elites, and what makes
  it converge quickly on robot data;
* :mod:`.propagation` -- particles and whole-horizon rollouts for sampling planners
  (expectation, TS-1, TS-inf);
* :mod:`.model` -- :class:`EnsembleModel`: settings, the numpy interface, artifacts.

Features (sin/cos of continuous joints), normalisation, delta targets, the Jacobian chain
rule and the normaliser arrays come from the shared
:class:`~mbrl_ros.core.models.pipeline.DeltaPipeline`, and the linear prior is the shared
:class:`~mbrl_ros.core.models.pipeline.AffinePrior` ridge fit (as for linear and gp), its
residual spread floored and its ridge cross-validated here.

Why the additions to the reference design (switchable; the measurements behind them are
in BENCHMARKS.md, "Issue 3", "Ensemble design measurements"):

* Linear prior (``linear_prior``): a ridge regression of the normalised state change is
  solved in closed form first and the members learn its residual, scaled by its spread.
  Robot dynamics over one control period are close to affine (position change ~ dt *
  velocity), which a randomly initialised MLP otherwise spends most of its training
  reproducing; outside the data the members still disagree on the residual, so the
  epistemic signal is kept. Its ridge (``prior_ridge: 0``) is cross-validated over
  contiguous blocks on their open-loop error.
* Learning-rate decay (``lr_half_life``, floored at ``lr_min``): fast early progress, then
  a small rate to settle, so early stopping triggers sooner.
* Small data: the minibatch shrinks to about 1/``min_batches`` of the training set (not
  below 32) and an epoch repeats passes until ``epoch_steps`` steps, so a few hundred
  transitions get hundreds of gradient steps, not a few dozen.
* Block validation: with at least ``min_val_blocks`` held-out ``val_horizon``-step blocks,
  members are checkpointed and elites chosen on their open-loop error over them, which
  sees overfitting to the few training episodes that a random split cannot.
* Warm start (``warm_start``): a live refit continues from the previous model's weights
  instead of starting again (training accumulates over bounded refits).
"""
from mbrl_ros.core.models.ensemble.model import EnsembleModel

__all__ = ["EnsembleModel"]
