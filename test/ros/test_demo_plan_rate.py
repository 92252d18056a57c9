"""The demo's lockstep loop replans as often as the controller node would (its plan_rate),
and reports its CPU time (a figure that hardly depends on the machine's load)."""
import pytest

from mbrl_ros.ros.demo import DemoConfig, replan_every


@pytest.mark.parametrize("rate, plan_rate, every", [
    (100.0, 50.0, 2), (100.0, 30.0, 3), (100.0, 0.0, 1), (50.0, 50.0, 1), (50.0, 100.0, 1),
    (100.0, 1.0, 100)])
def test_replan_every_matches_the_node_plan_rate(rate, plan_rate, every):
    assert replan_every(rate, plan_rate) == every


def test_the_demo_replans_at_the_node_default_plan_rate():
    """Every robot at the node's default plan_rate but arm7, which plans every control
    step (behind its 1000 N·m/s rate limit a learned model's loop does not settle when a
    plan is held for two steps); --plan-rate overrides it."""
    from mbrl_ros.ros.controller import ControllerSettings
    from mbrl_ros.ros.demo import GENERIC_DEFAULTS, ROBOT_DEFAULTS
    assert DemoConfig().plan_rate is None                   # the robot's default
    for robot in ("arm2", "cartpole"):
        assert ROBOT_DEFAULTS[robot]["plan_rate"] == ControllerSettings().plan_rate
    assert GENERIC_DEFAULTS["plan_rate"] == ControllerSettings().plan_rate
    assert replan_every(ROBOT_DEFAULTS["arm7"]["rate"], ROBOT_DEFAULTS["arm7"]["plan_rate"]) == 1
