"""Translate a bring-up plan (:mod:`mbrl_ros.bringup`) into ROS 2 launch actions.

``launch/<kind>.launch.py`` is ``launch_description('<kind>')``: it declares exactly the
arguments of that kind and, at launch time, starts the plan's processes:

- each process as a ``launch_ros`` ``Node`` (``LifecycleNode`` when it has lifecycle
  transitions) with the plan's name, namespace, remappings and ``--log-level``, and
  ``parameters=`` the plan's files in order: shipped files, the launch's own values (a
  file written from the plan, the same bytes ``mbrl-ros bringup`` passes), then the user's
  ``params_file``;
- a lifecycle node is configured each time its process starts (so a respawned one is
  too), once that process answers ``get_state`` (see :func:`_configure_when_answering`),
  and activated after a successful configure when the plan says so;
- the plan's job (``Process.job``: the GPS trainer) ends the launch when it exits, as
  with ``mbrl-ros bringup``: with exit 0 after a success (a ``Shutdown`` event stops the
  other nodes), else with the error below naming it;
- a node that exits (unless it respawns) or fails to configure ends the launch with a
  non-zero exit code naming the node. A ``Shutdown`` action would exit 0:
  ``LaunchService.run()`` returns 1 only when an exception escapes an action or event
  handler, so the handlers raise :class:`NodeFailure` and the launch service shuts down
  with that message as the reason.

Imported only by the launch files (needs ``launch`` and ``launch_ros``).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessStart, OnShutdown
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState, StateTransition
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import GetState

from mbrl_ros.bringup import ARGUMENTS, PACKAGE, RESPAWN_DELAY, BringupError, Process, plan
from mbrl_ros.ros.bringup_runner import STOP_TIMEOUT

_TRANSITION_IDS = {"configure": Transition.TRANSITION_CONFIGURE,
                   "activate": Transition.TRANSITION_ACTIVATE}
ANSWER_TIMEOUT = 60.0   # s for a started lifecycle node to answer get_state (as mbrl-ros bringup)
RETRY = 1.0             # s without an answer before get_state is asked again


class NodeFailure(RuntimeError):
    """A node of the launch exited or failed to configure; the launch exits non-zero."""


def launch_description(kind: str) -> LaunchDescription:
    """The launch description of ``kind`` (``sim``, ``robot``, ``replay``)."""
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.text,
                               choices=list(a.choices) or None)
         for a in ARGUMENTS[kind]]
        + [OpaqueFunction(function=_plan_actions, args=[kind])])


def _plan_actions(context, kind: str) -> list:
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in ARGUMENTS[kind]}
    try:
        the_plan = plan(kind, values, FindPackageShare(PACKAGE).perform(context))
    except (BringupError, FileNotFoundError) as e:
        raise NodeFailure(str(e)) from None
    actions, files = [], []
    for process in the_plan.processes:
        files.append(_overrides_file(process))
        actions += _process_actions(process, files[-1])
    # The launch's values go to the nodes as files (as `mbrl-ros bringup` passes them);
    # removed when the launch ends (a respawned node reads its file again until then).
    return [RegisterEventHandler(OnShutdown(on_shutdown=lambda event, context:
                                            _remove(files)))] + actions


def _overrides_file(process: Process) -> str:
    with tempfile.NamedTemporaryFile("w", prefix=f"mbrl_{process.name}_", suffix=".yaml",
                                     delete=False) as f:
        f.write(process.overrides_yaml())
        return f.name


def _remove(files: list[str]) -> None:
    for name in files:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def _process_actions(process: Process, overrides: str) -> list:
    node_class = LifecycleNode if process.transitions else Node
    node = node_class(
        package=PACKAGE, executable=process.executable, name=process.name,
        namespace=process.namespace, output="screen",
        parameters=process.parameter_files(overrides),
        remappings=list(process.remappings),
        ros_arguments=["--log-level", process.log_level],
        respawn=process.respawn, respawn_delay=RESPAWN_DELAY if process.respawn else None,
        # as long as `mbrl-ros bringup` waits after SIGINT (launch's default, 5 s, was too
        # short on a busy machine: a fit or the controller's threads finishing, then
        # torch's teardown; SIGTERM then killed nodes that were ending normally)
        sigterm_timeout=f"{STOP_TIMEOUT:g}")
    handlers = []
    if process.job:          # the launch's task: its exit, whatever the code, ends the launch
        handlers.append(OnProcessExit(target_action=node,
                                      on_exit=lambda event, context: _job_exited(
                                          process, event, context)))
    elif not process.respawn:
        handlers.append(OnProcessExit(target_action=node,
                                      on_exit=lambda event, context: _exited(process, event,
                                                                             context)))
    if process.transitions:
        def change(transition: str) -> EmitEvent:
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                               transition_id=_TRANSITION_IDS[transition]))
        starts = [0]          # process starts so far: a waiter gives up when a newer one runs

        def on_start(event, context):
            starts[0] += 1
            _configure_when_answering(node, change("configure").event, context,
                                      lambda start=starts[0]: start != starts[0])
        handlers.append(OnProcessStart(target_action=node, on_start=on_start))
        handlers.append(OnStateTransition(
            target_lifecycle_node=node,
            matcher=lambda event: (isinstance(event, StateTransition) and event.action is node
                                   and event.start_state == "configuring"
                                   and event.goal_state in ("unconfigured", "errorprocessing")),
            entities=[OpaqueFunction(function=lambda context: _configure_failed(process,
                                                                                context))]))
        if "activate" in process.transitions:
            handlers.append(OnStateTransition(target_lifecycle_node=node,
                                              start_state="configuring", goal_state="inactive",
                                              entities=[change("activate")]))
    # Handlers first: they must be registered before the process can start and exit.
    return [RegisterEventHandler(h) for h in handlers] + [node]


def _configure_when_answering(node, configure, context, superseded) -> None:
    """Emit ``configure`` (a ChangeState event) once the node's process answers get_state.

    launch_ros sends a ChangeState request as soon as the graph lists the node's
    change_state service. For a respawned node the graph still lists the killed process's
    service until DDS drops it (its lease: ~20 s), so the request goes to the dead process,
    is never answered, and the new process stays unconfigured (checked under ros2 launch:
    robot.launch.py respawn:=true, controller killed). So, as ``mbrl-ros bringup`` does,
    get_state is asked first, again every RETRY s until answered: an answer comes only from a
    live process, and then the change_state request reaches it. Runs on a thread of the
    launch's executor; the launch waits for it (a completion future). Gives up quietly when
    the launch shuts down or a newer start of the process took over (``superseded()``);
    no answer within ANSWER_TIMEOUT ends the launch with an error naming the node.
    """
    from launch_ros.ros_adapters import get_ros_node
    ros_node = get_ros_node(context)
    name = node.node_name

    def stop() -> bool:
        return context.is_shutdown or superseded()

    def wait() -> None:
        try:
            client = ros_node.create_client(GetState, f"{name}/get_state")
        except Exception:
            if stop():
                return
            raise
        try:
            answered = wait_for_answer(client, GetState.Request(), stop, ANSWER_TIMEOUT, RETRY)
        except Exception:
            if stop():          # the launch's ROS node is being destroyed (shutting down)
                return
            raise
        finally:
            try:
                ros_node.destroy_client(client)
            except Exception:
                pass
        if answered:
            context.asyncio_loop.call_soon_threadsafe(context.emit_event_sync, configure)
        elif not stop():
            raise NodeFailure(f"node {name} did not answer get_state within "
                              f"{ANSWER_TIMEOUT:g} s of its start")

    context.add_completion_future(context.asyncio_loop.run_in_executor(None, wait))


def wait_for_answer(client, request, stop, timeout: float, retry: float) -> bool:
    """Call ``client`` until a call is answered (True); re-send after ``retry`` s without an
    answer, dropping the unanswered request. False when ``stop()`` or after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not stop():
        if not client.service_is_ready():
            time.sleep(0.1)
            continue
        answered = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: answered.set())
        if answered.wait(min(retry, max(0.0, end - time.monotonic()))) and not future.cancelled():
            return True
        client.remove_pending_request(future)
    return False


def _exited(process: Process, event, context):
    if context.is_shutdown:          # stopping anyway (Ctrl-C, another node failed)
        return None
    raise NodeFailure(f"node {process.full_name} ({process.executable}) exited with code "
                      f"{event.returncode}")


def _job_exited(process: Process, event, context):
    """The plan's job exited: a success shuts the launch down (``ros2 launch`` exits 0, the
    other nodes get SIGINT), a failure ends it with an error naming the node (exit 1)."""
    if context.is_shutdown or event.returncode != 0:
        return _exited(process, event, context)
    from launch.events import Shutdown
    return [EmitEvent(event=Shutdown(reason=f"{process.full_name} ({process.executable}) "
                                            "finished"))]


def _configure_failed(process: Process, context):
    if context.is_shutdown:
        return None
    raise NodeFailure(f"node {process.full_name} failed to configure (see its log above)")
