"""Algorithms that wire models, planners and policies together; the numerics they use live
in the layers below (the C-step in :mod:`mbrl_ros.core.lqr.kl_step`, the policy
linearisation in :mod:`mbrl_ros.core.policies.linearization`, the global policy in
:mod:`mbrl_ros.core.policies.neural`, the GMM prior in :mod:`mbrl_ros.core.models.gmm_prior`).

* :mod:`.gps`: mirror-descent guided policy search (MDGPS, Montgomery & Levine 2016): the
  iteration (sample, fit dynamics, linearise the policy, C-step, S-step).
* :mod:`.gps_step`: its step-size rule (the KL bound of the next C-step).
* :mod:`.sampler`: where the samples come from (an environment stepped in process).
* :mod:`.sim_env`: the MuJoCo adapter of the GPS environment protocol and the reaching
  task ((start, target) conditions) used by the CLI, the benchmark and the tests.
* :mod:`.gps_checkpoint`: an MDGPS's state as plain data, written after every iteration.
* :mod:`.gps_run`: one experiment (config file, held-out evaluation, checkpoints and
  resume, artifacts, metrics.json and gps.png), as ``mbrl-ros gps`` runs it.

Modules are imported on use; only the global policy's trainer needs torch.
"""
