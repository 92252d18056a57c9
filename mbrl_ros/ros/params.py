"""Declare a node's ROS parameters from a settings dataclass and keep them validated.

Every field becomes a parameter with its description, unit and range in the
ParameterDescriptor (so ``ros2 param describe`` shows them). Static fields are read-only
after start-up; dynamic fields are validated in the on-set callback (an invalid value is
rejected with the reason, as ``ros2 param set`` prints) and applied after it.
"""
from __future__ import annotations

from typing import Any, Callable

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter

from mbrl_ros.core.settings import SettingsError, from_mapping, specs

_TYPES = {
    "bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER,
    "float": Parameter.Type.DOUBLE, "str": Parameter.Type.STRING,
    "float[]": Parameter.Type.DOUBLE_ARRAY, "int[]": Parameter.Type.INTEGER_ARRAY,
    "str[]": Parameter.Type.STRING_ARRAY,
}


def _descriptor(spec) -> ParameterDescriptor:
    unit = f" [{spec.unit}]" if spec.unit else ""
    choices = f" One of: {', '.join(map(str, spec.choices))}." if spec.choices else ""
    d = ParameterDescriptor(
        description=f"{spec.doc}{unit}.{choices}",
        read_only=not spec.dynamic,
        # Integers are accepted for doubles (YAML `rate: 100`), so the type is checked by
        # the settings schema rather than by rclpy's strict typing.
        dynamic_typing=True,
    )
    if spec.kind == "float" and spec.low is not None and spec.high is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                     to_value=float(spec.high), step=0.0)]
    elif spec.kind == "int" and spec.low is not None and spec.high is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                        step=0)]
    return d


def declare_settings(node: Node, cls: type, prefix: str = "",
                     on_change: Callable[[Any], None] | None = None,
                     validate: Callable[[Any], None] | None = None) -> Any:
    """Declare one parameter per settings field and return the validated settings.

    Args:
        node: the node to declare on.
        cls: the settings dataclass.
        prefix: parameter namespace, e.g. ``'ilqr.'`` for plugin parameters.
        on_change: called with the new settings after a valid dynamic update.
        validate: node-specific checks of a candidate settings object (e.g. list lengths
            that depend on the robot); raise ValueError to reject the update.

    Raises:
        SettingsError: a parameter file or override gave an invalid value; the message
            names the parameter and the allowed range, and the node should not start.
    """
    values: dict[str, Any] = {}
    for spec in specs(cls):
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        name = prefix + spec.name
        if isinstance(default, list) and not default:
            # rclpy cannot infer the type of an empty list: declare it typed and unset.
            d = _descriptor(spec)
            d.dynamic_typing = False
            p = node.declare_parameter(name, _TYPES[spec.kind], d)
        else:
            p = node.declare_parameter(name, default, _descriptor(spec))
        value = p.value
        if value is None:
            value = spec.default
        values[spec.name] = value
    settings = from_mapping(cls, values, prefix=prefix)
    holder = {"settings": settings}
    dynamic = {prefix + s.name for s in specs(cls) if s.dynamic}

    def _validate(params: list[Parameter]) -> SetParametersResult:
        mine = {p.name[len(prefix):]: p.value for p in params
                if p.name.startswith(prefix) and p.name in dynamic}
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
        mine = {p.name[len(prefix):]: p.value for p in params
                if p.name.startswith(prefix) and p.name in dynamic}
        if not mine:
            return
        new = from_mapping(cls, mine, prefix=prefix, base=holder["settings"])
        holder["settings"] = new
        if on_change is not None:
            on_change(new)

    node.add_on_set_parameters_callback(_validate)
    node.add_post_set_parameters_callback(_apply)
    return settings
