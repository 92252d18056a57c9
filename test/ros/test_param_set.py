"""Parameters set the way `ros2 param set` sets them.

ros2param turns the command-line text into a ParameterValue with
``rclpy.parameter.get_parameter_value`` (YAML: ``"[0.4, -0.6]"`` -> double array,
``"[1, 0]"`` -> integer array, ``"[]"`` -> bool array, ``"[1, 0.5]"`` -> the string itself)
and calls the node's ``~/set_parameters`` service; rclpy then hands arrays to the node as
``array.array``. These tests send exactly those messages over DDS.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.srv import DescribeParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import get_parameter_value

from mbrl_ros.core.settings import setting
from mbrl_ros.ros.params import declare_settings

pytestmark = pytest.mark.timeout(90)


@dataclass(frozen=True)
class _Settings:
    target: tuple[float, ...] = setting((), "empty float list", dynamic=True)
    gains: tuple[float, ...] = setting((1.0, 2.0), "float list", low=0.0, dynamic=True)
    sizes: tuple[int, ...] = setting((64,), "int list", low=1, high=4096, dynamic=True)
    names: tuple[str, ...] = setting(("a",), "string list", dynamic=True)
    mode: str = setting("x", "a choice", choices=("x", "y"), dynamic=True)
    rate: float = setting(10.0, "a float", low=0.0, high=100.0, dynamic=True)


class _Node:
    """A node declaring _Settings, spun on a thread in a context of its own."""

    def __init__(self, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("param_target", context=self.context)
        self.applied: list = []
        self.settings = declare_settings(self.node, _Settings, on_change=self.applied.append)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5.0)


@pytest.fixture
def target(domain_id):
    n = _Node(domain_id)
    yield n
    n.close()


def _set(probe, node: str, name: str, text: str):
    """`ros2 param set <node> <name> <text>`: the request ros2param sends."""
    req = SetParameters.Request(parameters=[
        ParameterMsg(name=name, value=get_parameter_value(string_value=text))])
    return probe.call(SetParameters, f"/{node}/set_parameters", req, resend=3.0).results[0]


@pytest.mark.parametrize("name,text,expected", [
    ("target", "[0.4, -0.6]", (0.4, -0.6)),        # double array
    ("target", "[1, 0]", (1.0, 0.0)),              # integer array for a float list
    ("target", "[1, 0.5]", (1.0, 0.5)),            # mixed: ros2param sends the string
    ("target", "[]", ()),                          # bool array (empty)
    ("gains", "[0.5, 3.0]", (0.5, 3.0)),
    ("sizes", "[32, 16]", (32, 16)),
    ("names", "[b, c]", ("b", "c")),
    ("rate", "50", 50.0),                          # integer for a float
])
def test_ros2_param_set_values_are_accepted(probe, target, name, text, expected):
    result = _set(probe, "param_target", name, text)
    assert result.successful, result.reason
    probe.spin_until(lambda: target.applied and getattr(target.applied[-1], name) == expected,
                     10.0, f"{name} applied")
    assert getattr(target.applied[-1], name) == expected


@pytest.mark.parametrize("name,text,reason", [
    ("target", "[0.4, .nan]", "NaN"),
    ("gains", "[-1.0, 2.0]", "out of range"),
    ("sizes", "[0.5]", "integer"),
    ("target", "hello", "list"),
    ("mode", "z", "not one of"),
])
def test_ros2_param_set_invalid_values_are_refused_with_the_reason(probe, target, name,
                                                                   text, reason):
    result = _set(probe, "param_target", name, text)
    assert not result.successful
    assert reason in result.reason
    assert target.applied == []


def test_choices_are_listed_in_the_descriptor(probe, target):
    req = DescribeParameters.Request(names=["mode", "rate"])
    d = probe.call(DescribeParameters, "/param_target/describe_parameters", req).descriptors
    assert d[0].additional_constraints == "one of: x, y"
    assert d[1].additional_constraints == ""
