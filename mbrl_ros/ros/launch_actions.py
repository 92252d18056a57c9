"""Translate a bring-up plan (:mod:`mbrl_ros.bringup`) into ROS 2 launch actions.

``launch/<kind>.launch.py`` is ``launch_description('<kind>')``: it declares exactly the
arguments of that kind and, at launch time, starts the plan's processes:

- each process as a ``launch_ros`` ``Node`` (``LifecycleNode`` when it has lifecycle
  transitions) with the plan's name, namespace, remappings and ``--log-level``, and
  ``parameters=`` the plan's files in order: shipped files, the launch's own values (a
  file written from the plan, the same bytes ``mbrl-ros bringup`` passes), then the user's
  ``params_file``;
- a lifecycle node is configured each time its process starts (so a respawned one is
  too), and activated after a successful configure when the plan says so;
- a node that exits (unless it respawns) or fails to configure ends the launch with a
  non-zero exit code naming the node. A ``Shutdown`` action would exit 0:
  ``LaunchService.run()`` returns 1 only when an exception escapes an action or event
  handler, so the handlers raise :class:`NodeFailure` and the launch service shuts down
  with that message as the reason.

Imported only by the launch files (needs ``launch`` and ``launch_ros``).
"""
from __future__ import annotations

import tempfile

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnProcessStart
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState, StateTransition
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from mbrl_ros.bringup import ARGUMENTS, PACKAGE, RESPAWN_DELAY, BringupError, Process, plan

_TRANSITION_IDS = {"configure": Transition.TRANSITION_CONFIGURE,
                   "activate": Transition.TRANSITION_ACTIVATE}


class NodeFailure(RuntimeError):
    """A node of the launch exited or failed to configure; the launch exits non-zero."""


def launch_description(kind: str) -> LaunchDescription:
    """The launch description of ``kind`` (``sim``, ``robot``, ``replay``)."""
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                               choices=list(a.choices) or None)
         for a in ARGUMENTS[kind]]
        + [OpaqueFunction(function=_plan_actions, args=[kind])])


def _plan_actions(context, kind: str) -> list:
    values = {a.name: LaunchConfiguration(a.name).perform(context) for a in ARGUMENTS[kind]}
    try:
        the_plan = plan(kind, values, FindPackageShare(PACKAGE).perform(context))
    except (BringupError, FileNotFoundError) as e:
        raise NodeFailure(str(e)) from None
    actions = []
    for process in the_plan.processes:
        actions += _process_actions(process)
    return actions


def _overrides_file(process: Process) -> str:
    with tempfile.NamedTemporaryFile("w", prefix=f"mbrl_{process.name}_", suffix=".yaml",
                                     delete=False) as f:
        f.write(process.overrides_yaml())
        return f.name


def _process_actions(process: Process) -> list:
    node_class = LifecycleNode if process.transitions else Node
    node = node_class(
        package=PACKAGE, executable=process.executable, name=process.name,
        namespace=process.namespace, output="screen",
        parameters=process.parameter_files(_overrides_file(process)),
        remappings=list(process.remappings),
        ros_arguments=["--log-level", process.log_level],
        respawn=process.respawn, respawn_delay=RESPAWN_DELAY if process.respawn else None)
    handlers = []
    if not process.respawn:
        handlers.append(OnProcessExit(target_action=node,
                                      on_exit=lambda event, context: _exited(process, event,
                                                                             context)))
    if process.transitions:
        def change(transition: str) -> EmitEvent:
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                               transition_id=_TRANSITION_IDS[transition]))
        handlers.append(OnProcessStart(target_action=node, on_start=[change("configure")]))
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


def _exited(process: Process, event, context):
    if context.is_shutdown:          # stopping anyway (Ctrl-C, another node failed)
        return None
    raise NodeFailure(f"node {process.full_name} ({process.executable}) exited with code "
                      f"{event.returncode}")


def _configure_failed(process: Process, context):
    if context.is_shutdown:
        return None
    raise NodeFailure(f"node {process.full_name} failed to configure (see its log above)")
