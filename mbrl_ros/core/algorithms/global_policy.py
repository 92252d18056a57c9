"""Moved: the global neural-network policy and its trainer live in
:mod:`mbrl_ros.core.policies.neural` (issue 13: policies in ``policies/``, ``algorithms/``
only wires). This module re-exports them so existing imports keep working."""
from mbrl_ros.core.policies.neural import (POLICY_KIND, NeuralPolicy, PolicySettings,
                                           PolicyTrainer, load_policy, publish_policy)

__all__ = ["PolicySettings", "NeuralPolicy", "PolicyTrainer", "POLICY_KIND", "publish_policy",
           "load_policy"]
