"""Launch-file wiring, checked without the launch framework (not installable here).

Each launch file only translates the bring-up plan (mbrl_ros/bringup.py, tested in
test_bringup_plan.py and run end to end by test/ros/test_bringup.py) into launch_ros
actions (mbrl_ros/ros/launch_actions.py). Here the launch files run against stand-ins for
launch/launch_ros that take the real keyword arguments (launch_fakes.py): each file
declares exactly its own arguments, once; it starts exactly the plan's processes with the
plan's parameter files (the user's last), namespace, remappings and log level; a node
that exits or fails to configure ends the launch with an error naming it; the controller
is activated only with activate:=true. Executables are installed console scripts and the
files install to share/mbrl_ros/launch.
"""
import ast
import importlib.metadata as md
import runpy
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from lifecycle_msgs.msg import Transition

import launch_fakes as fake
from mbrl_ros.bringup import ARGUMENTS, KINDS, plan

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = {p.name.removesuffix(".launch.py"): p for p in (ROOT / "launch").glob("*.launch.py")}


@pytest.fixture
def run_launch(monkeypatch, tmp_path):
    """run_launch('sim', robot='arm7') -> (LaunchDescription, actions its plan starts)."""
    fake.install(monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the values files (no shutdown)
    fake.FindPackageShare.share = str(ROOT)

    def _run(kind: str, **given: str):
        ld = runpy.run_path(str(LAUNCH[kind]))["generate_launch_description"]()
        declared = [e for e in ld.entities if isinstance(e, fake.DeclareLaunchArgument)]
        (opaque,) = [e for e in ld.entities if isinstance(e, fake.OpaqueFunction)]
        values = {d.name: d.default_value for d in declared} | given
        return ld, opaque.execute(fake.Context(values))

    yield _run
    sys.modules.pop("mbrl_ros.ros.launch_actions", None)


def _nodes(actions):
    return [a for a in actions if isinstance(a, fake.Node)]


def _handlers(actions, cls):
    return [a.event_handler for a in actions if isinstance(a, fake.RegisterEventHandler)
            and isinstance(a.event_handler, cls)]


def test_the_three_launch_files_exist():
    assert set(LAUNCH) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_each_file_declares_exactly_its_arguments_once(kind, run_launch):
    ld, _ = run_launch(kind)
    declared = [e for e in ld.entities if isinstance(e, fake.DeclareLaunchArgument)]
    assert [d.name for d in declared] == [a.name for a in ARGUMENTS[kind]]
    for d, a in zip(declared, ARGUMENTS[kind]):
        assert d.default_value == a.default
        assert d.choices == (list(a.choices) or None)
        # ros2 launch --show-args lists the choices itself ("Valid choices are: [...]"):
        # not twice (they were, checked by hand).
        assert d.description == a.text and not any(f"| {c}" in d.description
                                                    for c in a.choices)


@pytest.mark.parametrize("kind,given", [
    ("sim", {}), ("sim", {"model": "gp", "excite": "true", "namespace": "arm_a"}),
    ("robot", {"respawn": "true", "log_level": "debug"}), ("replay", {"bags": "['b']"})])
def test_the_launch_starts_the_plan(kind, given, run_launch, tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("/**/controller:\n  ros__parameters:\n    horizon: 20\n")
    given = {**given, "params_file": str(user)}
    _, actions = run_launch(kind, **given)
    expected = plan(kind, given, str(ROOT)).processes
    nodes = _nodes(actions)
    assert [n.name for n in nodes] == [p.name for p in expected]
    for node, p in zip(nodes, expected):
        assert (node.package, node.executable, node.namespace) == \
            ("mbrl_ros", p.executable, p.namespace)
        assert isinstance(node, fake.LifecycleNode) == bool(p.transitions)
        # Shipped files, the launch's values (the same bytes `mbrl-ros bringup` passes),
        # then the user's file, last.
        *shipped, overrides, last = node.parameters
        assert shipped == list(p.params_files) and last == str(user)
        assert Path(overrides).read_text() == p.overrides_yaml()
        assert node.remappings == list(p.remappings)
        assert node.ros_arguments == ["--log-level", p.log_level]
        assert node.kwargs["respawn"] is p.respawn and node.kwargs["output"] == "screen"
        # SIGINT, then as long as `mbrl-ros bringup` waits before escalating (launch's 5 s
        # default SIGTERMed nodes still ending normally on a busy machine)
        from mbrl_ros.ros.bringup_runner import STOP_TIMEOUT
        assert float(node.kwargs["sigterm_timeout"]) == STOP_TIMEOUT >= 10
    # Every handler of a node is registered before the node itself starts.
    for i, a in enumerate(actions):
        if isinstance(a, fake.RegisterEventHandler) and \
                not isinstance(a.event_handler, fake.OnShutdown):
            h = a.event_handler
            target = getattr(h, "target_action", None) or getattr(h, "target", None)
            assert target in nodes and i < actions.index(target)
    # The values files live as long as the launch (a respawn reads them again): removed
    # at shutdown, not left in /tmp by every `ros2 launch`.
    files = [node.parameters[-2] for node in nodes]
    (cleanup,) = _handlers(actions, fake.OnShutdown)
    assert all(Path(f).exists() for f in files)
    assert cleanup.on_shutdown(object(), fake.Context({})) is None
    assert not any(Path(f).exists() for f in files)


def test_a_node_that_exits_ends_the_launch_with_an_error_naming_it(run_launch):
    from mbrl_ros.ros.launch_actions import NodeFailure
    _, actions = run_launch("sim", namespace="arm_a")
    exits = _handlers(actions, fake.OnProcessExit)
    assert {h.target_action.name for h in exits} == {n.name for n in _nodes(actions)}
    sim = next(h for h in exits if h.target_action.name == "sim")
    event = type("ProcessExited", (), {"returncode": 2})()
    with pytest.raises(NodeFailure, match=r"/arm_a/sim \(sim_node\) exited with code 2"):
        sim.on_exit(event, fake.Context({}))
    # While the launch shuts down anyway (Ctrl-C, another failure) exits are expected.
    assert sim.on_exit(event, fake.Context({}, is_shutdown=True)) is None


def test_respawning_nodes_do_not_end_the_launch(run_launch):
    _, actions = run_launch("robot", respawn="true")
    assert _handlers(actions, fake.OnProcessExit) == []
    assert all(n.kwargs["respawn"] and n.kwargs["respawn_delay"] > 0 for n in _nodes(actions))


def _lifecycle(actions):
    (controller,) = [n for n in _nodes(actions) if isinstance(n, fake.LifecycleNode)]
    starts = [h for h in _handlers(actions, fake.OnProcessStart)
              if h.target_action is controller]
    transitions = [h for h in _handlers(actions, fake.OnStateTransition)
                   if h.target is controller]
    return controller, starts, transitions


def _fired(handlers, event):
    return [h for h in handlers if h.matches(event)]


@pytest.mark.parametrize("activate", ["true", "false"])
def test_the_controller_is_configured_on_start_and_activated_on_request(run_launch, activate):
    _, actions = run_launch("sim", activate=activate)
    controller, starts, transitions = _lifecycle(actions)
    # Configured whenever its process starts (a respawned controller too), once that
    # process answers get_state.
    (start,) = starts
    context = fake.Context({})
    start.on_start(fake.ProcessStarted(), context)
    (client,) = context.ros_node.clients
    assert client.name == "/controller/get_state" and len(client.requests) == 1
    assert context.ros_node.destroyed == [client]
    assert all(f.exception() is None for f in context.completion_futures)
    (configure,) = context.emitted
    assert configure.transition_id == Transition.TRANSITION_CONFIGURE
    assert configure.lifecycle_node_matcher(controller)
    configured = fake.StateTransition(action=controller, start_state="configuring",
                                      goal_state="inactive")
    activations = [e for h in _fired(transitions, configured) for e in h.entities
                   if isinstance(e, fake.EmitEvent)]
    if activate == "true":
        (act,) = activations
        assert act.event.transition_id == Transition.TRANSITION_ACTIVATE
    else:
        assert activations == []


def test_a_respawned_controller_is_configured_though_the_dead_one_looks_alive(run_launch,
                                                                                monkeypatch):
    # Under ros2 launch (respawn:=true, controller killed): the graph still listed the killed
    # process's services, launch_ros' change_state request went to it and the new
    # controller stayed unconfigured. get_state is asked until a live process answers.
    import mbrl_ros.ros.launch_actions as la
    monkeypatch.setattr(la, "RETRY", 0.01)
    _, actions = run_launch("robot", namespace="left", respawn="true")
    _, (start,), _ = _lifecycle(actions)
    context = fake.Context({}, ros_node=fake.RosNode(answers=[False, False, True]))
    start.on_start(fake.ProcessStarted(), context)
    (client,) = context.ros_node.clients
    assert client.name == "/left/controller/get_state"
    assert len(client.requests) == 3 and len(client.removed) == 2    # unanswered ones dropped
    assert [e.transition_id for e in context.emitted] == [Transition.TRANSITION_CONFIGURE]


def test_configure_waiters_give_up_on_shutdown_restart_or_silence(run_launch, monkeypatch):
    import mbrl_ros.ros.launch_actions as la
    from mbrl_ros.ros.launch_actions import NodeFailure
    monkeypatch.setattr(la, "RETRY", 0.01)
    monkeypatch.setattr(la, "ANSWER_TIMEOUT", 0.2)
    _, actions = run_launch("sim", namespace="arm_a")
    _, (start,), _ = _lifecycle(actions)
    # Never answered: the launch ends with an error naming the node.
    silent = fake.Context({}, ros_node=fake.RosNode(answers=[False] * 1000))
    start.on_start(fake.ProcessStarted(), silent)
    (future,) = silent.completion_futures
    with pytest.raises(NodeFailure, match="/arm_a/controller did not answer get_state"):
        future.result()
    assert silent.emitted == []
    # Shutting down: no request, no error, nothing emitted.
    stopping = fake.Context({}, is_shutdown=True, ros_node=fake.RosNode(answers=[True]))
    start.on_start(fake.ProcessStarted(), stopping)
    assert stopping.emitted == [] and stopping.completion_futures[0].exception() is None
    assert stopping.ros_node.clients[0].requests == []
    # A waiter of an earlier start stops once the process started again (respawn).
    superseded = []
    stale = fake.RosNode(answers=[False] * 1000)
    original = stale.create_client

    def restart_meanwhile(*a):
        start.on_start(fake.ProcessStarted(pid=2), fake.Context({}))   # the new start
        superseded.append(True)
        return original(*a)
    stale.create_client = restart_meanwhile
    old = fake.Context({}, ros_node=stale)
    start.on_start(fake.ProcessStarted(pid=1), old)
    assert superseded and old.emitted == [] and old.completion_futures[0].exception() is None


def test_wait_for_answer_resends_until_answered(run_launch):
    from lifecycle_msgs.srv import GetState
    from rclpy.task import Future

    from mbrl_ros.ros.launch_actions import wait_for_answer
    client = fake.Client(GetState, "/x/get_state", [False, True])
    assert wait_for_answer(client, "req", lambda: False, timeout=5.0, retry=0.01)
    assert client.requests == ["req", "req"] and len(client.removed) == 1
    assert isinstance(client.removed[0], Future) and not client.removed[0].done()
    never = fake.Client(GetState, "/x/get_state", [False] * 1000)
    assert not wait_for_answer(never, "req", lambda: False, timeout=0.1, retry=0.01)
    assert not wait_for_answer(client, "req", lambda: True, timeout=5.0, retry=0.01)


@pytest.mark.parametrize("goal", ["unconfigured", "errorprocessing"])
def test_a_failed_configure_ends_the_launch_with_an_error(run_launch, goal):
    from mbrl_ros.ros.launch_actions import NodeFailure
    _, actions = run_launch("robot", namespace="left")
    controller, _, transitions = _lifecycle(actions)
    failed = fake.StateTransition(action=controller, start_state="configuring", goal_state=goal)
    (handler,) = _fired(transitions, failed)
    (fail,) = handler.entities
    with pytest.raises(NodeFailure, match="/left/controller failed to configure"):
        fail.execute(fake.Context({}))
    # Another lifecycle node's failure, or a later transition, is not this one.
    other = fake.StateTransition(action=object(), start_state="configuring", goal_state=goal)
    cleanup = fake.StateTransition(action=controller, start_state="cleaningup",
                                   goal_state="unconfigured")
    assert handler not in _fired(transitions, other) + _fired(transitions, cleanup)


def test_invalid_arguments_end_the_launch_with_the_reason(run_launch):
    from mbrl_ros.ros.launch_actions import NodeFailure
    with pytest.raises(NodeFailure, match="planner:='bogus' is not one of"):
        run_launch("sim", planner="bogus")


@pytest.mark.parametrize("kind", KINDS)
def test_launch_files_only_translate_the_plan(kind):
    tree = ast.parse(LAUNCH[kind].read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert [(ast.unparse(c.func), [ast.literal_eval(a) for a in c.args]) for c in calls] == \
        [("launch_description", [kind])]


def test_every_executable_a_plan_starts_is_a_console_script():
    scripts = {e.name for e in md.entry_points(group="console_scripts")
               if e.value.startswith("mbrl_ros.")}
    started = {p.executable for kind, args in [
        ("sim", {}), ("sim", {"model": "gp", "excite": "true"}), ("robot", {}), ("replay", {})]
        for p in plan(kind, args, str(ROOT)).processes}
    assert started == {"sim_node", "data_logger", "model_fitter", "excitation", "controller"}
    assert started <= scripts, f"not installed: {started - scripts}"


def test_every_shipped_robot_has_its_config_file():
    from mbrl_ros.sim.models import available_models
    for robot in available_models():
        doc = yaml.safe_load((ROOT / "config" / f"{robot}.yaml").read_text())
        assert doc, robot


def test_setup_installs_launch_config_and_assets():
    text = (ROOT / "setup.py").read_text()
    for needle in ('"launch/*.launch.py"', '"config/*.yaml"', "sim/assets/*.xml",
                   "resource_index/packages"):
        assert needle in text
