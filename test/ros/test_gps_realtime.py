"""GPS on an arm that runs in real time (issue 14: a physical arm has no lockstep, no
pause and no set_state): the simulator runs on in real time as a physical arm would, the
controller moves the arm to each sample's start, executes the sample's linear-Gaussian
controller and holds between samples, and the trainer cuts every sample out of the state
stream -- the commands checked against the sample's controller step by step."""
import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)


def _arm(start_node, probe, dt, state_rate):
    """arm2 running in real time (states at ``state_rate`` Hz) and the controller GPS
    samples with (safety layers on, iLQR for the moves), active."""
    from mbrl_ros.bringup import gps_controller_params

    start_node("sim_node", {"model": "arm2", "lockstep": False, "publish_rate": state_rate,
                            "diagnostics_rate": 0.0})
    start_node("controller", gps_controller_params("arm2", dt, move_planner="ilqr",
                                                   realtime=True))
    probe.activate("/controller")


def test_samples_are_cut_from_the_running_arm_and_an_iteration_runs(start_node, probe,
                                                                    tmp_path):
    from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings
    from mbrl_ros.core.algorithms.sim_env import reach_task
    from mbrl_ros.ros.gps_realtime import RealtimeSampler

    T = 8
    task = reach_task("arm2", conditions=1, horizon=T, seed=0)
    dt = task.env.dt
    _arm(start_node, probe, dt, 1.0 / dt)
    sampler = RealtimeSampler(task.env, task.targets, tmp_path, probe.node, probe.executor,
                              move_planner="ilqr", settle_tolerance=0.02,
                              settle_velocity=0.1, settle_time=0.2, step_timeout=20.0)
    gps = MDGPS(task.env, task.costs, GPSSettings(horizon=T, samples=2, seed=0),
                initial_controllers=task.initial_controllers, tasks=task.targets,
                distance=task.distances(), sampler=sampler)
    samples = gps.draw_samples()
    X, U, _, (discarded, reasons, _) = samples
    assert X.shape == (1, 2, T + 1, 4) and U.shape == (1, 2, T, 2)
    q0, _ = task.env.start_state(0)
    # each sample started where the move settled it
    assert np.all(np.abs(X[0, :, 0, :2] - q0) <= 0.02 + 1e-9)
    assert np.all(np.abs(X[0, :, 0, 2:]) <= 0.1 + 1e-9)
    # the commands are the sample's exploration (cut_timed_sample checked them step by
    # step); the two samples' noise differs
    assert not np.allclose(U[0, 0], U[0, 1])
    assert sampler.samples >= 2
    # one MDGPS iteration: fit, C-step, S-step, and the global policy evaluated on the
    # running arm (swapped into the controller, its commands checked against the network)
    rec = gps.iteration(samples)
    assert rec.cost_policy is not None and np.isfinite(rec.cost_policy[0])
    assert sampler.samples >= 3


def test_real_time_samples_refuse_a_state_stream_off_the_control_period(start_node, probe,
                                                                        tmp_path):
    from mbrl_ros.core.algorithms.sim_env import reach_task
    from mbrl_ros.ros.gps_realtime import RealtimeSampler

    task = reach_task("arm2", conditions=1, horizon=8, seed=0)
    dt = task.env.dt
    _arm(start_node, probe, dt, 0.5 / dt)      # states every second period
    with pytest.raises(ValueError, match="one joint state per control period"):
        RealtimeSampler(task.env, task.targets, tmp_path, probe.node, probe.executor)
    with pytest.raises(ValueError, match="reset must be 'move'"):
        RealtimeSampler(task.env, task.targets, tmp_path, probe.node, probe.executor,
                        reset="sim")
