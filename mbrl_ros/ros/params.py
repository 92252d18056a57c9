"""Declare a node's ROS parameters from a settings dataclass and keep them validated.

Every field becomes a parameter with its description, unit and range in the
ParameterDescriptor (so ``ros2 param describe`` shows them). Static fields are read-only
after start-up; dynamic fields are validated in the on-set callback (an invalid value is
rejected with the reason, as ``ros2 param set`` prints) and applied after it.

Values arrive as ``ros2 param set`` sends them, not as the schema writes them
(ros2param's ``get_parameter_value`` parses the command-line text as YAML): rclpy hands
double/integer arrays over as ``array.array``, an empty list ``[]`` arrives as a bool
array, and a list mixing integers and floats (``"[1, 0.5]"``) arrives as the string
itself. :func:`from_ros` turns each of these into the plain value the schema checks, and
every parameter is declared with dynamic typing so rclpy does not refuse an integer array
for a float list before the schema sees it.
"""
from __future__ import annotations

import array
from typing import Any, Callable

import yaml
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter

from mbrl_ros.core.settings import SettingsError, from_mapping, specs


def from_ros(spec, value: Any) -> Any:
    """A parameter value as rclpy delivers it -> the plain Python value the schema checks.

    ``array.array`` (double/integer arrays) becomes a list; for list settings, a string
    holding a YAML list (what ``ros2 param set`` sends for ``"[1, 0.5]"``) is parsed.
    Anything else is returned unchanged, for the schema to accept or refuse with a reason.
    """
    if isinstance(value, array.array):
        return value.tolist()
    if spec.kind.endswith("[]") and isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, list):
            return parsed
    return value


def _descriptor(spec, constraint: str = "") -> ParameterDescriptor:
    unit = f" [{spec.unit}]" if spec.unit else ""
    choices = f" One of: {', '.join(map(str, spec.choices))}." if spec.choices else ""
    d = ParameterDescriptor(
        description=f"{spec.doc}{unit}.{choices}",
        read_only=not spec.dynamic,
        # Integers are accepted for doubles (YAML `rate: 100`, `ros2 param set ... "[1, 0]"`
        # sends an integer array), so the type is checked by the settings schema rather
        # than by rclpy's strict typing.
        dynamic_typing=True,
    )
    if spec.choices:
        # `ros2 param describe` prints this line: the valid values of a choice parameter.
        d.additional_constraints = "one of: " + ", ".join(map(str, spec.choices))
    if constraint:
        d.additional_constraints = constraint
    if spec.kind == "float" and spec.low is not None and spec.high is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                     to_value=float(spec.high), step=0.0)]
    elif spec.kind == "int" and spec.low is not None and spec.high is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                        step=0)]
    return d


def declare_settings(node: Node, cls: type, prefix: str = "",
                     on_change: Callable[[Any], None] | None = None,
                     validate: Callable[[Any], None] | None = None,
                     constraints: dict[str, str] | None = None) -> Any:
    """Declare one parameter per settings field and return the validated settings.

    Args:
        node: the node to declare on.
        cls: the settings dataclass.
        prefix: parameter namespace, e.g. ``'ilqr.'`` for plugin parameters.
        on_change: called with the new settings after a valid dynamic update.
        validate: node-specific checks of a candidate settings object (e.g. list lengths
            that depend on the robot); raise ValueError to reject the update.
        constraints: ``additional_constraints`` text by field name, for values only the
            node knows (e.g. the valid planner ids); choice fields list their choices.

    Raises:
        SettingsError: a parameter file or override gave an invalid value; the message
            names the parameter and the allowed range, and the node should not start.
    """
    constraints = constraints or {}
    values: dict[str, Any] = {}
    for spec in specs(cls):
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        name = prefix + spec.name
        if isinstance(default, list) and not default:
            # rclpy cannot infer the type of an empty list, and a typed declaration would
            # refuse any other array type (an integer array for a float list, the bool
            # array `ros2 param set` sends for `[]`): declare it unset, dynamically typed.
            p = node.declare_parameter(name, None,
                                       _descriptor(spec, constraints.get(spec.name, "")))
        else:
            p = node.declare_parameter(name, default,
                                       _descriptor(spec, constraints.get(spec.name, "")))
        value = from_ros(spec, p.value)
        if value is None:
            value = spec.default
        values[spec.name] = value
    settings = from_mapping(cls, values, prefix=prefix)
    holder = {"settings": settings}
    dynamic = {prefix + s.name: s for s in specs(cls) if s.dynamic}

    def _mine(params: list[Parameter]) -> dict[str, Any]:
        return {p.name[len(prefix):]: from_ros(dynamic[p.name], p.value) for p in params
                if p.name in dynamic}

    def _validate(params: list[Parameter]) -> SetParametersResult:
        mine = _mine(params)
        if not mine:
            return SetParametersResult(successful=True)
        try:
            new = from_mapping(cls, mine, prefix=prefix, base=holder["settings"])
            if validate is not None:
                validate(new)
        except (SettingsError, ValueError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply(params: list[Parameter]) -> None:
        # Called only after every on-set callback accepted the whole set: rebuild from the
        # parameters actually set (no state carried over from a rejected set).
        mine = _mine(params)
        if not mine:
            return
        new = from_mapping(cls, mine, prefix=prefix, base=holder["settings"])
        holder["settings"] = new
        if on_change is not None:
            on_change(new)

    node.add_on_set_parameters_callback(_validate)
    node.add_post_set_parameters_callback(_apply)
    return settings
