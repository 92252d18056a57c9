"""Hyper-parameters of the iLQR/iLQG planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.settings import setting

__all__ = ["ILQRSettings"]


@dataclass(frozen=True)
class ILQRSettings:
    """iLQR / control-limited DDP settings.

    Defaults follow Tassa, Erez & Todorov (IROS 2012) and Tassa, Mansard & Todorov (ICRA
    2014) (their iLQG.m), except the line-search step sizes, which halve.
    """
    horizon: int = setting(50, "planning horizon", unit="steps", low=1, high=100000)
    max_iterations: int = setting(
        3, "iLQR iterations per optimize call (MPC: 1-3)", low=1, high=100000, dynamic=True)
    tol_cost: float = setting(
        1e-7, "stop when an accepted step lowers the cost by less than this fraction of it",
        low=0.0, high=1.0, dynamic=True)
    tol_grad: float = setting(
        1e-6, "stop when mean_t max_i |du_ti|/(|u_ti|+1) of the Newton step is below this",
        low=0.0, high=1.0, dynamic=True)
    mu_init: float = setting(
        1.0, "initial Levenberg-Marquardt regularisation added to V_xx after reset()",
        low=0.0, high=1e10)
    mu_min: float = setting(
        1e-6, "regularisation below which it is set to 0", low=0.0, high=1e10)
    mu_max: float = setting(
        1e10, "regularisation above which the optimisation gives up", low=1e-6, high=1e20)
    mu_factor: float = setting(
        1.6, "base factor of the regularisation schedule", low=1.0001, high=100.0)
    max_regularization_iterations: int = setting(
        20, "backward-pass retries with increased regularisation per iteration",
        low=1, high=1000)
    line_search_alphas: tuple[float, ...] = setting(
        (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625),
        "line-search step sizes, tried in order", low=0.0, high=1.0)
    min_reduction_ratio: float = setting(
        1e-4, "accept a step when actual/expected cost reduction exceeds this", low=0.0,
        high=1.0, dynamic=True)
    parallel_line_search: str = setting(
        "auto", "line-search rollouts: 'always' all step sizes in one batch, 'never' one by "
        "one, 'auto' by model (affine: batched; compiled ensemble, MuJoCo: one by one; GP: "
        "full step first); docs/PLANNERS.md",
        choices=("auto", "always", "never"), dynamic=True)
    box_qp: bool = setting(
        True, "solve the control-limited backward pass (box QP, Tassa 2014); false: clamp "
        "controls only in the forward pass")
    policy_covariance: bool = setting(
        True, "attach the iLQG controller covariance inv(Q_uu) to the returned policy")
    compiled_gp_max_centers: int = setting(
        8192, "GP rollouts compiled (one call per rollout) when latents x centres is at most "
        "this (the sparse GP: 14 x 256); above, batched predict_mean; docs/PLANNERS.md",
        low=0, high=10**8)
    feedback_scale: float = setting(
        1.0, "scale of the executed feedback gains K (mujoco_mpc's iLQG feedback_scaling): "
        "below 1 detunes them against model error; the plan is unchanged; docs/PLANNERS.md",
        low=0.0, high=1.0, dynamic=True)

    def __post_init__(self):
        if not self.line_search_alphas:
            raise ValueError("line_search_alphas must not be empty")
        if any(a <= 0 for a in self.line_search_alphas):
            raise ValueError("line_search_alphas must be > 0")
        if self.mu_min > self.mu_max:
            raise ValueError("mu_min must be <= mu_max")
