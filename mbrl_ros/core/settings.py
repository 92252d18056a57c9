"""One schema for every tunable: frozen dataclasses whose fields carry documentation,
units, ranges and whether they may change at run time.

Nodes declare their ROS parameters from these classes (``mbrl_ros.ros.params``), the
CLI builds them from arguments, and the README/config files are checked against them, so
a parameter is described exactly once.

Example::

    @dataclass(frozen=True)
    class SimSettings:
        publish_rate: float = setting(100.0, "joint-state rate", unit="Hz", low=1, high=5000)

    s = from_mapping(SimSettings, {"publish_rate": 250})   # ints accepted for floats
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


class SettingsError(ValueError):
    """An invalid parameter value; the message names the parameter and what is allowed."""


def setting(default: Any, doc: str, *, unit: str = "", low: float | None = None,
            high: float | None = None, choices: Sequence[Any] | None = None,
            dynamic: bool = False) -> Any:
    """A dataclass field with documentation and validation metadata.

    Args:
        default: default value (lists are stored as tuples so settings stay immutable).
        doc: one line saying what it does.
        unit: SI unit shown in docs and errors ('' if none).
        low, high: inclusive bounds for numbers (and for every element of a number list).
        choices: allowed values for strings.
        dynamic: may be changed while the node runs (validated in the on-set callback).
    """
    if isinstance(default, list):
        default = tuple(default)
    meta = {"doc": doc, "unit": unit, "low": low, "high": high,
            "choices": tuple(choices) if choices is not None else None, "dynamic": dynamic}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamSpec:
    """Description of one setting, as nodes declare it and docs print it."""
    name: str
    kind: str            # 'bool' | 'int' | 'float' | 'str' | 'float[]' | 'int[]' | 'str[]'
    default: Any
    doc: str
    unit: str
    low: float | None
    high: float | None
    choices: tuple | None
    dynamic: bool

    def describe(self) -> str:
        """One line for docs and error messages."""
        parts = [f"{self.kind}"]
        if self.unit:
            parts.append(self.unit)
        if self.low is not None or self.high is not None:
            parts.append(f"range [{_fmt(self.low)}, {_fmt(self.high, True)}]")
        if self.choices:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        if self.dynamic:
            parts.append("dynamic")
        return f"{self.name} ({'; '.join(parts)}; default {self.default!r}): {self.doc}"


def _fmt(x: float | None, upper: bool = False) -> str:
    if x is None:
        return "inf" if upper else "-inf"
    return f"{x:g}"


_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def _kind_of(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (tuple, list, Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return _KINDS[args[0]] + "[]"
    if origin is typing.Union or str(origin) == "types.UnionType":
        raise TypeError("settings fields must have a single concrete type")
    return _KINDS[tp]


def specs(cls: type) -> list[ParamSpec]:
    """The ParamSpec of every field of a settings dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        out.append(ParamSpec(f.name, _kind_of(hints[f.name]), f.default, m.get("doc", ""),
                             m.get("unit", ""), m.get("low"), m.get("high"), m.get("choices"),
                             bool(m.get("dynamic", False))))
    return out


def _coerce_scalar(spec: ParamSpec, kind: str, value: Any, where: str) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{where}: expected true/false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise SettingsError(f"{where}: expected an integer, got {value!r}")
        _check_range(spec, value, where)
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if math.isnan(value):
            raise SettingsError(f"{where}: NaN is not allowed")
        _check_range(spec, value, where)
        return value
    if not isinstance(value, str):
        raise SettingsError(f"{where}: expected a string, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise SettingsError(f"{where}: {value!r} is not one of {', '.join(map(str, spec.choices))}")
    return value


def _check_range(spec: ParamSpec, value: float, where: str) -> None:
    lo = -math.inf if spec.low is None else spec.low
    hi = math.inf if spec.high is None else spec.high
    if not lo <= value <= hi:
        unit = f" {spec.unit}" if spec.unit else ""
        raise SettingsError(f"{where} = {value!r} is out of range [{_fmt(spec.low)}, "
                            f"{_fmt(spec.high, True)}]{unit} ({spec.doc})")


def coerce(spec: ParamSpec, value: Any, prefix: str = "") -> Any:
    """Convert and validate one value for ``spec``; raises SettingsError naming it."""
    where = f"parameter '{prefix}{spec.name}'"
    if spec.kind.endswith("[]"):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list of {spec.kind[:-2]}, got {value!r}")
        return tuple(_coerce_scalar(spec, spec.kind[:-2], v, f"{where}[{i}]")
                     for i, v in enumerate(value))
    return _coerce_scalar(spec, spec.kind, value, where)


def from_mapping(cls: type, values: Mapping[str, Any], prefix: str = "",
                 base: Any = None) -> Any:
    """Build a settings instance from ``values`` (missing keys keep defaults or ``base``).

    Raises:
        SettingsError: unknown key (the message lists the valid ones) or invalid value.
    """
    known = {s.name: s for s in specs(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(f"unknown parameter(s) {', '.join(prefix + u for u in unknown)}; "
                            f"valid: {', '.join(prefix + k for k in known)}")
    kwargs = {k: coerce(known[k], v, prefix) for k, v in values.items()}
    obj = cls() if base is None else base
    try:
        return dataclasses.replace(obj, **kwargs)
    except SettingsError:
        raise
    except (ValueError, TypeError) as e:  # cross-field checks in __post_init__
        raise SettingsError(f"{prefix or cls.__name__}: {e}") from e


def as_dict(obj: Any) -> dict[str, Any]:
    """Plain dict of a settings instance (tuples become lists, for YAML/JSON)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}
