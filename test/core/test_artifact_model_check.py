"""Trained artifacts (gps_policy, lg_controller) are refused for a model of other states
or actions, with the plugin named; a model without a spec is not checked."""
from types import SimpleNamespace

import pytest

from mbrl_ros.core.models.base import ModelSpec
from mbrl_ros.core.planners.base import check_artifact_model

ARM2 = ModelSpec(4, 2, ("shoulder/position", "elbow/position", "shoulder/velocity",
                        "elbow/velocity"), ("shoulder", "elbow"), 0.01)


def test_a_matching_model_passes_and_a_model_without_spec_is_not_checked():
    check_artifact_model("gps_policy", "policy", SimpleNamespace(spec=ARM2), {"spec": ARM2})
    check_artifact_model("gps_policy", "policy", object(), {"spec": ARM2})


def test_another_robot_is_refused_naming_the_plugin():
    other = ModelSpec(4, 2, ("a/position", "b/position", "a/velocity", "b/velocity"),
                      ("a", "b"), 0.01)
    with pytest.raises(ValueError, match="lg_controller: the controller and the model disagree"):
        check_artifact_model("lg_controller", "controller", SimpleNamespace(spec=other),
                             {"spec": ARM2})
