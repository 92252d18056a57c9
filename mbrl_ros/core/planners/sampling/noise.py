"""The sampling noise of the sampling planners and its scale.

:func:`colored_noise` -- unit-variance Gaussian noise with power spectral density
proportional to 1/f^beta along the time axis (white for beta = 0), the sampling noise of
iCEM (Pinneri et al., "Sample-efficient Cross-Entropy Method for Real-time Planning",
CoRL 2020), generated with the FFT method of Timmer & Koenig (A&A 1995) exactly as the
``colorednoise`` package (``powerlaw_psd_gaussian``) that iCEM uses.
:func:`limit_scaled_std` -- a per-action standard deviation from a setting, in action units
or as a fraction of the action limits.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["colored_noise", "limit_scaled_std"]


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
