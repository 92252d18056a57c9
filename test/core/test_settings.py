from dataclasses import dataclass

import pytest

from mbrl_ros.core.settings import SettingsError, as_dict, from_mapping, setting, specs


@dataclass(frozen=True)
class S:
    rate: float = setting(100.0, "rate", unit="Hz", low=1.0, high=1000.0)
    n: int = setting(3, "count", low=0)
    mode: str = setting("a", "mode", choices=("a", "b"))
    gains: tuple[float, ...] = setting((), "gains", low=0.0, dynamic=True)
    names: tuple[str, ...] = setting(("x",), "names")
    on: bool = setting(False, "flag")


def test_defaults_and_int_for_float():
    s = from_mapping(S, {"rate": 250})
    assert s.rate == 250.0 and isinstance(s.rate, float) and s.n == 3


def test_range_error_names_parameter_and_unit():
    with pytest.raises(SettingsError, match=r"'rate' = 0.5 is out of range \[1, 1000\] Hz"):
        from_mapping(S, {"rate": 0.5})


def test_choices_type_and_unknown():
    with pytest.raises(SettingsError, match="not one of a, b"):
        from_mapping(S, {"mode": "c"})
    with pytest.raises(SettingsError, match="expected a number"):
        from_mapping(S, {"rate": "fast"})
    with pytest.raises(SettingsError, match="expected true/false"):
        from_mapping(S, {"on": 1})
    with pytest.raises(SettingsError, match="unknown parameter.*valid: rate, n"):
        from_mapping(S, {"rat": 1})


def test_lists_validated_elementwise_and_stay_tuples():
    s = from_mapping(S, {"gains": [1, 2.5], "names": ["a", "b"]})
    assert s.gains == (1.0, 2.5) and s.names == ("a", "b")
    with pytest.raises(SettingsError, match=r"gains'\[1\]"):
        from_mapping(S, {"gains": [1, -2]})
    assert as_dict(s)["gains"] == [1.0, 2.5]


def test_specs_describe():
    sp = {p.name: p for p in specs(S)}
    assert sp["gains"].kind == "float[]" and sp["gains"].dynamic
    assert "range [1, 1000]" in sp["rate"].describe()
