"""Settings of the ``lg_controller`` planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.settings import setting

__all__ = ["LGControllerSettings"]


@dataclass(frozen=True)
class LGControllerSettings:
    """Which time-varying linear-Gaussian controller to execute, and its exploration."""
    horizon: int = setting(30, "plan length the controller node asks for (the executed "
                           "controller keeps its own length T)", unit="steps", low=1,
                           high=100000)
    artifact: str = setting("", "lg_controller artifact: a version directory or "
                            "<root>/<name>/latest (publish_lg_controller writes one; GPS sampling: one per sample)",
                            dynamic=True)
    noise: bool = setting(True, "add the exploration noise N(0, cov_t) (false: execute the "
                          "mean K_t x + k_t)", dynamic=True)
    seed: int = setting(0, "seed of the exploration noise when the artifact carries none "
                        "(an artifact's own noise array always wins)", low=0, dynamic=True)
