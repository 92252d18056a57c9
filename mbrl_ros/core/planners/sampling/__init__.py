"""Shared machinery of the sampling-based MPC planners (:mod:`..cem`, :mod:`..mppi`).

Both planners sample N action sequences (N, T, nu), roll each out through the dynamics model
from the current state, score it with the trajectory cost and update a mean plan. What is
shared lives here, written once:

* :mod:`.settings` -- :class:`SamplingSettings`, the settings both planners have.
* :mod:`.noise` -- :func:`colored_noise` (iCEM's 1/f^beta sampling noise) and
  :func:`limit_scaled_std`.
* :mod:`.rollout` -- :class:`RolloutEngine`, batched rollouts and their costs in torch
  (PETS trajectory sampling for ensembles), and :func:`hold_action`.
* :mod:`.planner` -- :class:`SamplingPlanner`, the part of ``optimize`` both share (warm
  start, mean rollout of the plan, ``feedback: lqr`` gains and ``refine: newton`` from
  :mod:`mbrl_ros.core.lqr`).
* :mod:`.budget` -- :class:`SampleBudget`, the samples per replan under a deadline.
"""
from mbrl_ros.core.planners.sampling.budget import SampleBudget
from mbrl_ros.core.planners.sampling.noise import colored_noise, limit_scaled_std
from mbrl_ros.core.planners.sampling.planner import SamplingPlanner
from mbrl_ros.core.planners.sampling.rollout import RolloutEngine, hold_action, is_torch_model
from mbrl_ros.core.planners.sampling.settings import (DTYPES, FEEDBACK_MODES, FILL_MODES,
                                                      PROPAGATION_MODES, REFINE_MODES,
                                                      STD_UNITS, SamplingSettings)

__all__ = ["DTYPES", "FEEDBACK_MODES", "FILL_MODES", "PROPAGATION_MODES", "REFINE_MODES",
           "STD_UNITS", "RolloutEngine", "SampleBudget", "SamplingPlanner", "SamplingSettings",
           "colored_noise", "hold_action", "is_torch_model", "limit_scaled_std"]
