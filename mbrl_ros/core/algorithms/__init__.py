"""Algorithms that wire models, planners and policies together (no new numerics of their
own where the package already has them).

* :mod:`.traj_opt`: the KL-constrained LQG update of guided policy search (Levine & Abbeel
  2014): time-varying linear-Gaussian dynamics + quadratic cost + a reference
  linear-Gaussian controller + a KL bound -> new controller and its state-action marginals.
* :mod:`.policy_fit`: linearisation of a global policy from samples with a GMM prior.
* :mod:`mbrl_ros.core.policies.neural` (re-exported by :mod:`.global_policy`): the global
  neural-network Gaussian policy (numpy evaluation for the control loop, torch training
  for the S-step, store artifacts).
* :mod:`.gps`: mirror-descent guided policy search (MDGPS, Montgomery & Levine 2016).
* :mod:`.sim_env`: the MuJoCo adapter of the GPS environment protocol and the reaching
  task ((start, target) conditions) used by the CLI, the benchmark and the tests.
* :mod:`.gps_run`: one experiment (config file, held-out evaluation, checkpoints and
  resume, artifacts, metrics.json and gps.png), as ``mbrl-ros gps`` runs it.

Modules are imported on use; only the global policy's trainer needs torch.
"""
