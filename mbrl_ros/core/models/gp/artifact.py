"""The GP's artifact arrays (:meth:`GPModel.state_arrays
<mbrl_ros.core.models.gp.model.GPModel.state_arrays>` and ``load_state_arrays``): every
number of a fitted model by name, and the model rebuilt from them -- the GPyTorch modules
and the prediction caches as the fit left them, without refitting.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import gpytorch
import numpy as np
import torch

from mbrl_ros.core.models.base import ModelError
from mbrl_ros.core.models.gp.kernels import F64, noise_constraint
from mbrl_ros.core.models.gp.modules import SVGP, BatchExactGP, MultitaskExactGP
from mbrl_ros.core.models.gp.posterior import KernelPosterior, KroneckerPosterior
from mbrl_ros.core.models.pipeline import AffinePrior, DeltaPipeline, Normalizer

if TYPE_CHECKING:
    from mbrl_ros.core.models.gp.model import GPModel

_FORMAT = 1


def state_arrays(model: GPModel) -> dict[str, np.ndarray]:
    """The arrays of a fitted ``model``: normalisers, normalised training data, the affine
    prior (``mean_beta``, (d + 1, nx) = [W; c]), every GPyTorch parameter and buffer by name
    (``gp.*``, ``lik.*``) and the prediction caches (``post.*``)."""
    out = {"format": np.array(_FORMAT), "mode": np.array(model.mode),
           "train_z": model.train_z.numpy(), "train_y": model.train_y.numpy(),
           "mean_beta": model.prior.stacked()}
    out.update(model.pipeline.arrays())
    if model.mode == "sparse":
        out["sparse_jitter"] = np.array(float(model.gp.base_strategy.jitter_val))
    if model._outlier_noise is not None:
        out["outlier_noise"] = model._outlier_noise.numpy()
    for prefix, module in (("gp.", model.gp), ("lik.", model.likelihood)):
        for name, tensor in module.state_dict().items():
            out[prefix + name] = tensor.detach().numpy().copy()
    for name, value in model._post.arrays().items():
        out["post." + name] = value
    return out


def load_state_arrays(model: GPModel, arrays: dict[str, np.ndarray]) -> None:
    """Rebuild the GPyTorch modules and the prediction caches from ``state_arrays``: sets
    ``model``'s pipeline, prior, outlier noise, posterior caches, modules, mode and training
    data as its fit leaves them (``model`` built with the artifact's settings and spec)."""
    s = model.settings
    try:
        if int(arrays["format"]) != _FORMAT:
            raise ModelError(f"gp: array format {int(arrays['format'])} is not {_FORMAT}")
        mode = str(arrays["mode"])
        in_norm = Normalizer.from_arrays(arrays, "in")
        out_norm = Normalizer.from_arrays(arrays, "out")
        Z = torch.from_numpy(np.array(arrays["train_z"])).to(model.torch_dtype)
        Y = torch.from_numpy(np.array(arrays["train_y"])).to(model.torch_dtype)
        model.prior = AffinePrior.from_stacked(arrays["mean_beta"])
        extra = arrays.get("outlier_noise")
        model._outlier_noise = (torch.from_numpy(np.array(extra)).to(F64)
                                if extra is not None else None)
        model.n_outliers = (int((model._outlier_noise > 0).any(0).sum())
                            if extra is not None else 0)
        T = Y.shape[1]
        features = DeltaPipeline.make_features(model.spec)
        if (T != model.spec.nx or Z.shape[1] != features.n_in
                or model.prior.W.shape != (features.n_in, T)):
            raise ModelError(f"gp: arrays are for {T} outputs / {Z.shape[1]} inputs, "
                             f"spec has nx={model.spec.nx}, nu={model.spec.nu} and "
                             f"{len(model.spec.periodic)} periodic states "
                             f"({features.n_in} inputs)")
        model.pipeline = DeltaPipeline(features, in_norm, out_norm)
        # the GPyTorch models hold the residual targets, as after fit
        R = (Y.to(F64) - model.prior(Z.to(F64))).to(model.torch_dtype)
        gp_state = {k[3:]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                    if k.startswith("gp.")}
        lik_state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                     if k.startswith("lik.")}
        if mode == "sparse":
            lmc = s.outputs == "multitask"
            key = ("variational_strategy.base_variational_strategy.inducing_points"
                   if lmc else "variational_strategy.inducing_points")
            gp = SVGP(gp_state[key].clone(), s.kernel, float(arrays["sparse_jitter"]),
                      lmc_tasks=T if lmc else 0)
            if lmc:
                lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(
                    num_tasks=T, has_global_noise=False,
                    noise_constraint=noise_constraint(s.noise_floor))
            else:
                lik = gpytorch.likelihoods.GaussianLikelihood(
                    batch_shape=torch.Size([T]),
                    noise_constraint=noise_constraint(s.noise_floor))
        elif mode == "exact" and s.outputs == "independent":
            lik = gpytorch.likelihoods.GaussianLikelihood(
                batch_shape=torch.Size([T]), noise_constraint=noise_constraint(s.noise_floor))
            gp = BatchExactGP(Z, R.T.contiguous(), s.kernel, T, lik)
        elif mode == "exact":
            lik = gpytorch.likelihoods.MultitaskGaussianLikelihood(
                num_tasks=T, has_global_noise=False,
                noise_constraint=noise_constraint(s.noise_floor))
            gp = MultitaskExactGP(Z, R, s.kernel, T, min(s.rank, T), lik)
        else:
            raise ModelError(f"gp: unknown mode {mode!r} in arrays")
        dtype = F64 if mode == "sparse" else model.torch_dtype
        gp, lik = gp.to(dtype), lik.to(dtype)
        gp.load_state_dict(gp_state, strict=True)
        lik.load_state_dict(lik_state, strict=True)
        post = {k[5:]: v for k, v in arrays.items() if k.startswith("post.")}
        if mode == "exact" and s.outputs == "multitask":
            model._post = KroneckerPosterior.from_arrays(s.kernel, post)
        else:
            model._post = KernelPosterior.from_arrays(s.kernel, post)
    except KeyError as e:
        raise ModelError(f"gp: artifact is missing array {e.args[0]!r} (settings "
                         f"kernel={s.kernel}, outputs={s.outputs})") from e
    except RuntimeError as e:      # state_dict shape/name mismatch
        raise ModelError(f"gp: arrays do not match the settings: {e}") from e
    gp.eval()
    lik.eval()
    model.gp, model.likelihood, model.mode = gp, lik, mode
    model.train_z, model.train_y = Z, Y
