"""LTV-MPC planner on CasADi (HPIPM, qrqp, OSQP, IPOPT, FATROP)."""
from mbrl_ros.core.planners.casadi_mpc.planner import (
    CasadiMPCPlanner,
    QuadraticModel,
    quadratic_model,
)
from mbrl_ros.core.planners.casadi_mpc.settings import CasadiMPCSettings

__all__ = ["CasadiMPCPlanner", "CasadiMPCSettings", "QuadraticModel", "quadratic_model"]
