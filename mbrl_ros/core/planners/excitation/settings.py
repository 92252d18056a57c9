"""Settings of the ``excitation`` planner (one schema: docs, ranges, ROS parameters).

The excitation itself is :class:`~mbrl_ros.core.policies.excitation.ExcitationSettings`
(the excitation node's ``excitation.*`` parameters, the same names here under the
planner's id); this adds the plan length and the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.policies.excitation import ExcitationSettings
from mbrl_ros.core.settings import setting

__all__ = ["ExcitationPlannerSettings"]


@dataclass(frozen=True)
class ExcitationPlannerSettings(ExcitationSettings):
    """The excitation of :class:`ExcitationSettings` plus plan length and seed."""
    horizon: int = setting(30, "steps a plan covers (then the control loop holds unless a "
                           "newer plan came)", unit="steps", low=1, high=100000)
    seed: int = setting(0, "random seed of targets and noise", low=0)
