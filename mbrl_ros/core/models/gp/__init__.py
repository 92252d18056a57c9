"""Gaussian-process dynamics model (registry name ``gp``), built on GPyTorch.

What: the model predicts the state change ``d = x_{t+1} - x_t`` from ``z = [x_t, u_t]``
(with the sine and cosine of continuous joints' angles), both standardised
(:class:`~mbrl_ros.core.models.pipeline.DeltaPipeline`; Deisenroth & Rasmussen, "PILCO",
ICML 2011, for GP dynamics models; Rasmussen & Williams, "Gaussian Processes for Machine
Learning", 2006, R&W below). Prior: an affine mean fitted by ridge least squares
(``mean='linear'``, :class:`~mbrl_ros.core.models.pipeline.AffinePrior`, R&W sec. 2.7 with
the coefficients fixed at their estimate) plus a zero-mean GP with an ARD kernel (RBF,
Matérn 5/2 or 3/2, one lengthscale per input) per output, and Gaussian noise per output.
Shapes: x (B, nx) [rad, m, rad/s, m/s], u (B, nu) [N·m, N]; ``predict`` returns the mean
and the variance (observation noise included) of x_{t+1}, (B, nx) each.

Output structure (``outputs``):

* ``independent``: one GP per state dimension, all trained at once as a batch.
* ``multitask``: intrinsic coregionalisation, cov(f_i(z), f_j(z')) = k(z, z') B_ij with
  B = W W^T + diag(v), rank(W) = ``rank`` (Bonilla, Chai & Williams, "Multi-task Gaussian
  process prediction", NIPS 2007). One kernel for all outputs: for small problems.

Exact or sparse (``max_exact``): up to ``max_exact`` training transitions the posterior is
exact (:mod:`.exact`); above, a sparse variational GP with ``n_inducing`` inducing points
(:mod:`.sparse`).

Why the pieces (the measurements behind each, and the alternatives rejected, are in
BENCHMARKS.md, "Issue 3 -- dynamics models", GP design measurements):

* Hyper-parameters (:mod:`.hyper`) maximise the exact marginal likelihood of a random
  subset (``hyper_subset``) times a log-normal prior on every lengthscale
  (``lengthscale_prior``, centred at sqrt(d)): many ARD lengthscales from a few hundred
  points overfit without it.
* Outlier down-weighting (:mod:`.outliers`, ``outlier_threshold``): simulated data is
  nearly noiseless, and the few transitions through an impact on a joint stop do not fit
  a smooth function; interpolating them makes the mean oscillate between trajectories.
  Cost: stops are not modelled (``outlier_threshold = 0`` restores the interpolation).
* Fast caches (:mod:`.posterior`): the posterior becomes plain float64 tensors once, at
  the end of the fit, so a query is one kernel row and two small products (GPyTorch's
  per-call overhead alone exceeds the query budget). The exact GP's variance above
  ``var_rank`` training points is an upper bound of the exact one (never over-confident).
  :meth:`GPModel.predict_reference` predicts through GPyTorch's own posterior, to verify.

Modules: :mod:`.kernels` (kernels, Cholesky, constraints, thread context), :mod:`.modules`
(the GPyTorch models), :mod:`.hyper`, :mod:`.outliers`, :mod:`.exact`, :mod:`.sparse`,
:mod:`.posterior`, :mod:`.artifact` (the artifact arrays: save, and rebuild without
refitting), :mod:`.model` (:class:`GPModel`).
"""
from mbrl_ros.core.models.gp.model import GPModel

__all__ = ["GPModel"]
