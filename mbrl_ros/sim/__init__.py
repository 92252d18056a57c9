"""ROS-free MuJoCo simulation: shipped models and the effort-controlled simulator."""
from mbrl_ros.sim.env import CommandError, MujocoSim, Randomization
from mbrl_ros.sim.models import available_models, resolve_model

__all__ = ["CommandError", "MujocoSim", "Randomization", "available_models", "resolve_model"]
