"""Settings of the ``gps_policy`` planner (one schema: docs, ranges, ROS parameters)."""
from __future__ import annotations

from dataclasses import dataclass

from mbrl_ros.core.settings import setting

__all__ = ["GPSPolicySettings"]


@dataclass(frozen=True)
class GPSPolicySettings:
    """Where the global policy comes from and how long a hand-out stays valid."""
    horizon: int = setting(30, "steps a returned policy stays valid (then the control loop "
                           "treats it as stale) and length of the nominal rollout",
                           unit="steps", low=1, high=100000)
    artifact: str = setting("", "gps_policy artifact: a version directory or "
                            "<root>/<name>/latest (mbrl-ros gps --out DIR writes "
                            "DIR/gps_policy/latest)", dynamic=True)
    reload: bool = setting(True, "follow a 'latest' link: load a newer version when it "
                           "appears (checked at every plan)", dynamic=True)
    rollout_nominal: bool = setting(True, "roll the model out under the policy for the "
                                    "nominal plan (published as the planned trajectory; "
                                    "warm-starts another planner on a switch)", dynamic=True)
