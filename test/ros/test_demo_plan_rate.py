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
    from mbrl_ros.ros.controller import ControllerSettings
    assert DemoConfig().plan_rate == ControllerSettings().plan_rate
