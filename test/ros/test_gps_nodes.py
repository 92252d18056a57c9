"""GPS through the nodes (issue 14, Deliver 2): on arm2 the node sampler -- the lockstep
simulator node stepping, the controller node executing each condition's linear-Gaussian
controller with the lg_controller planner and, after the S-step, the global policy with the
gps_policy planner -- gives the in-process path's samples, costs and iteration on the same
seed. Lockstep MuJoCo is deterministic and the commands cross DDS as float64, so the
agreement is exact (0.0), not within a tolerance."""
import numpy as np
import pytest

pytest.importorskip("rclpy")

from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings  # noqa: E402
from mbrl_ros.core.algorithms.sim_env import reach_task  # noqa: E402

T = 15


def _gps(sampler=None, seed=3):
    task = reach_task("arm2", conditions=2, horizon=T, seed=seed)
    gps = MDGPS(task.env, task.costs, GPSSettings(horizon=T, samples=3, seed=seed),
                initial_controllers=task.initial_controllers, tasks=task.targets,
                distance=task.distances(), sampler=sampler)
    return gps, task


@pytest.mark.timeout(300)
def test_one_gps_iteration_through_the_nodes_equals_the_in_process_one(tmp_path, domain_id):
    import torch
    from mbrl_ros.ros.gps_driver import NodeSampler

    torch.set_num_threads(1)
    ref, task = _gps()
    with NodeSampler(task.env, task.targets, tmp_path, domain_id=domain_id) as nodes:
        alt, _ = _gps(nodes)
        a, b = ref.draw_samples(), alt.draw_samples()
        assert nodes.samples == 2 * 3
        np.testing.assert_array_equal(b[0], a[0])          # states
        np.testing.assert_array_equal(b[1], a[1])          # commands = actions
        assert alt.rng.bit_generator.state == ref.rng.bit_generator.state
        ra, rb = ref.iteration(a), alt.iteration(b)
        # the global policy's evaluation ran in the controller (gps_policy planner)
        assert nodes.controller.mpc.active == "gps_policy"
        assert nodes.samples == 2 * 3 + 2
        assert rb.cost_lg == ra.cost_lg and rb.kl == ra.kl and rb.eta == ra.eta
        assert rb.cost_policy == ra.cost_policy
        assert rb.policy_final_distance == ra.policy_final_distance
        # the next iteration's controllers (after the C-step) sample alike too
        a2, b2 = ref.draw_samples(), alt.draw_samples()
        np.testing.assert_array_equal(b2[0], a2[0])
        assert nodes.controller.mpc.active == "lg_controller"
        # every sample is an lg_controller artifact version; the policy one gps_policy
        assert len(list((tmp_path / "gps_samples").glob("v*"))) == 2 * 3 * 2
        assert (tmp_path / "gps_policy" / "v0001" / "model.json").exists()


@pytest.mark.timeout(300)
def test_discarded_samples_match_through_the_nodes(tmp_path, domain_id):
    from mbrl_ros.ros.gps_driver import NodeSampler

    ref, task = _gps()
    with NodeSampler(task.env, task.targets, tmp_path, domain_id=domain_id) as nodes:
        alt, _ = _gps(nodes)
        for g in (ref, alt):          # a tight speed bound: some samples are discarded
            g.env.max_velocity = 12.0
        a, b = ref.draw_samples(), alt.draw_samples()
        assert a[3][0] > 0 and b[3][0] == a[3][0] and b[3][1] == a[3][1]
        assert b[3][2] == pytest.approx(a[3][2])
        np.testing.assert_array_equal(b[0], a[0])
        assert alt.rng.bit_generator.state == ref.rng.bit_generator.state


@pytest.mark.timeout(300)
def test_run_gps_through_the_nodes_reports_the_in_process_run(tmp_path, domain_id):
    """``mbrl-ros gps --through-nodes`` plumbing: run_gps with the node sampler writes the
    same metrics (two iterations, every figure but the timings) and checkpoints."""
    import dataclasses

    from mbrl_ros.core.algorithms.gps_run import GPSRunConfig, run_gps
    from mbrl_ros.ros.gps_driver import NodeSampler

    reps, made = [], []

    def factory(task):
        made.append(NodeSampler(task.env, task.targets, tmp_path / "nodes",
                                domain_id=domain_id))
        return made[-1]
    for name, f in (("inproc", None), ("nodes", factory)):
        cfg = dataclasses.replace(GPSRunConfig(quick=True, horizon=12, iterations=2),
                                  out=tmp_path / name, progress=False)
        try:
            reps.append(run_gps(cfg, sampler_factory=f))
        finally:
            for s in made:
                s.close()
    assert len(made) == 1 and made[0].samples >= 2 * 2 * 4
    for a, b in zip(*(r["iterations"] for r in reps)):
        for k in a:
            if k not in ("timings", "artifact_version"):
                assert b[k] == a[k], k
    assert (tmp_path / "nodes" / "checkpoint").is_dir()


@pytest.mark.timeout(300)
def test_every_sample_is_in_the_data_loggers_bag(tmp_path, domain_id):
    """With bag_dir the data logger node records the samples: each kept sample's states
    can be read back from the bag by its episode number (gps_episodes.json)."""
    import json

    from mbrl_ros.core.data import read_bag
    from mbrl_ros.ros.gps_driver import NodeSampler

    gps, task = _gps()
    nodes = NodeSampler(task.env, task.targets, tmp_path / "art", domain_id=domain_id,
                        bag_dir=tmp_path / "bags")
    try:
        gps.sampler = nodes
        X, U, *_ = gps.draw_samples()
    finally:
        nodes.close()
    index = json.loads((tmp_path / "bags" / "gps_episodes.json").read_text())
    eps = index["episodes"]
    assert len(eps) == 2 * 3 and all(e["discarded"] is None and e["noisy"] for e in eps)
    assert len({e["episode"] for e in eps}) == 6 and len({e["artifact"] for e in eps}) == 6
    msgs, rep = read_bag(index["bags"], topics=["/joint_states", "/data_logger/episode"])
    assert rep.complete
    states: dict[int, list] = {}
    episode = 0
    for msg in sorted(msgs, key=lambda b: b.seq):
        if msg.topic == "/data_logger/episode":        # the logger's episode markers
            episode = int(msg.msg.data)
        else:
            states.setdefault(episode, []).append(
                np.r_[np.asarray(msg.msg.position), np.asarray(msg.msg.velocity)])
    seen = {m: 0 for m in range(2)}
    for e in eps:
        m = e["condition"]
        np.testing.assert_array_equal(np.array(states[e["episode"]]), X[m, seen[m]])
        seen[m] += 1


@pytest.mark.timeout(300)
def test_a_sample_the_controller_could_not_execute_is_refused(tmp_path, domain_id):
    """An lg_controller artifact the controller cannot load: its replans fail and it holds,
    so the episode is not a sample of the controller -- an error naming the cause, not
    safe-hold commands passed off as exploration."""
    from mbrl_ros.ros.gps_driver import NodeSampler

    gps, task = _gps()
    with NodeSampler(task.env, task.targets, tmp_path, domain_id=domain_id,
                     step_timeout=10.0, max_discarded=1) as nodes:
        gps.sampler = nodes
        real = nodes._use_lg

        def broken(controller, noise, m):
            real(controller, noise, m)
            nodes._set(lg_controller__artifact=str(tmp_path / "missing"))
        nodes._use_lg = broken
        # each such sample is dropped with a warning and redrawn; past max_discarded the
        # draw stops with the cause
        with pytest.warns(RuntimeWarning, match="dropped.*did not execute the sample"), \
                pytest.raises(RuntimeError, match="did not execute the sample.*failed replans"
                              ".*do not run whole"):
            gps.draw_samples()
        assert nodes.samples == 2


@pytest.mark.timeout(300)
def test_a_truncated_sample_is_dropped_with_a_warning_and_redrawn(tmp_path, domain_id):
    """Issue 14, Deliver 5: one sample whose episode did not run as the controller's (here
    its artifact could not be loaded, so the controller held) is dropped with a warning,
    counted with the discarded ones, and redrawn; the iteration goes on with whole samples."""
    from mbrl_ros.ros.gps_driver import NodeSampler

    gps, task = _gps()
    with NodeSampler(task.env, task.targets, tmp_path, domain_id=domain_id,
                     step_timeout=10.0) as nodes:
        gps.sampler = nodes
        real, calls = nodes._use_lg, []

        def broken_once(controller, noise, m):
            real(controller, noise, m)
            calls.append(m)
            if len(calls) == 2:
                nodes._set(lg_controller__artifact=str(tmp_path / "missing"))
        nodes._use_lg = broken_once
        with pytest.warns(RuntimeWarning, match="condition 0 dropped.*did not execute"):
            X, U, _, (discarded, reasons, lost) = gps.draw_samples()
    assert discarded == 1 and len(reasons) == 1 and "truncated: " in reasons[0]
    assert lost > 0
    assert nodes.samples == 2 * 3 + 1
    assert X.shape == (2, 3, T + 1, 4) and np.all(np.isfinite(X))
    # the kept samples are the controller's: the redrawn one too (not safe holds)
    assert not np.array_equal(U[0, 1], np.zeros_like(U[0, 1]))
