"""The Planning protocol: the in-process and the worker-process planner offer the same
interface (issue 13), so the controller node never asks which one it holds."""
import inspect

import numpy as np
import pytest

from mbrl_ros.core.control.mpc import MPCController
from mbrl_ros.core.control.plan_process import PlanProcess
from mbrl_ros.core.control.planning import Planning, PlanningBase
from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.planners.base import Policy
from mbrl_ros.core.policies.excitation import ExcitationPolicy, ExcitationSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy
from mbrl_ros.core.policies.neural import NeuralPolicy

LIMITS = np.array([3.0, 3.0])
POS = np.array([[-2.9, 2.9], [-2.7, 2.7]])


def protocol_members(proto) -> dict[str, object]:
    """Public members the protocol declares: methods and properties (by signature) and
    data attributes (annotations)."""
    out = {}
    for name, value in vars(proto).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            out[name] = "property"
        elif callable(value):
            out[name] = inspect.signature(value)
    for name in getattr(proto, "__annotations__", {}):
        out.setdefault(name, "attribute")
    return out


def _kind(cls, obj, name):
    static = inspect.getattr_static(cls, name, None)
    if isinstance(static, property):
        return "property"
    if callable(static):
        return inspect.signature(static)
    return "attribute" if hasattr(obj, name) else None


def _instances():
    mpc = MPCController(lambda *a: None, ["a", "b"], "a", 10, LIMITS, POS, CostSettings())
    proc = PlanProcess("arm2", 0.01, ("shoulder", "elbow"), lambda: {}, ["a", "b"], "a", 10,
                       LIMITS, POS, CostSettings())
    return mpc, proc


@pytest.mark.parametrize("which", [0, 1], ids=["MPCController", "PlanProcess"])
def test_both_planners_implement_the_protocol_with_its_signatures(which):
    obj = _instances()[which]
    cls = type(obj)
    assert isinstance(obj, Planning) and isinstance(obj, PlanningBase)
    for name, want in protocol_members(Planning).items():
        got = _kind(cls, obj, name)
        if want == "attribute":          # a plain attribute or a read-only property
            assert got in ("attribute", "property"), (cls.__name__, name, got)
        elif want == "property":
            assert got in ("attribute", "property"), (cls.__name__, name, got)
        else:
            assert got == want, f"{cls.__name__}.{name}{got} != Planning.{name}{want}"


def test_both_planners_have_the_same_public_methods():
    mpc, proc = _instances()
    public = set(protocol_members(Planning))
    for name in public:
        a, b = _kind(MPCController, mpc, name), _kind(PlanProcess, proc, name)
        if isinstance(a, inspect.Signature) or isinstance(b, inspect.Signature):
            assert a == b, (name, a, b)


def test_shared_configuration_checks():
    mpc, proc = _instances()
    for p in (mpc, proc):
        with pytest.raises(ValueError, match="unknown planner 'c'; valid: a, b"):
            p.select("c")
        with pytest.raises(ValueError, match="target needs 2"):
            p.set_target(np.zeros(3))
        assert (p.pid, p.counters) == (None, {"starts": 0, "failures": 0})
    mpc.start()                             # the in-process planner: nothing to start
    mpc.stop()
    with pytest.raises(ValueError, match="continuous needs 2 flags"):
        MPCController(lambda *a: None, ["a"], "a", 10, LIMITS, POS, CostSettings(),
                      continuous=np.zeros(3, bool))
    with pytest.raises(ValueError, match="continuous needs 2 flags"):
        PlanProcess("arm2", 0.01, ("shoulder", "elbow"), lambda: {}, ["a"], "a", 10, LIMITS,
                    POS, CostSettings(), continuous=np.zeros(3, bool))


def test_every_policy_has_t0_and_t_end():
    lg = LinearGaussianPolicy(K=np.zeros((3, 1, 2)), k=np.zeros((3, 1)), xbar=np.zeros((3, 2)),
                              cov=None, t0=0.5, dt=0.1, u_min=-np.ones(1), u_max=np.ones(1))
    assert isinstance(lg, Policy) and (lg.t0, lg.t_end) == (0.5, pytest.approx(0.8))
    ex = ExcitationPolicy(ExcitationSettings(), POS, LIMITS, np.array([0, 1]), 2,
                          np.ones(2))
    assert isinstance(ex, Policy) and (ex.t0, ex.t_end) == (-np.inf, np.inf)
    for name in ("t0", "t_end"):
        assert hasattr(NeuralPolicy, name) or name in NeuralPolicy.__dataclass_fields__

    class NoHorizon:
        def action(self, x, t):
            return np.zeros(1)
    assert not isinstance(NoHorizon(), Policy)
