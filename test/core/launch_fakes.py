"""Stand-ins for the parts of `launch` and `launch_ros` the launch files use, for CI.

The launch framework is not installable here (see ENVIRONMENT.md). These classes take the
same keyword arguments as the real ones (launch 3.7, launch_ros 0.28: signatures copied
from ros2/launch and ros2/launch_ros, so a misspelt or unsupported keyword fails here as
it would under ros2 launch) and record them, so a test can run a launch file's
``generate_launch_description()`` and its OpaqueFunction and inspect what it would start.
"""
from __future__ import annotations

import sys
import types
from typing import Any

# Keywords launch_ros' Node passes on to ExecuteProcess / ExecuteLocal.
_EXECUTE_KWARGS = {"output", "respawn", "respawn_delay", "respawn_max_retries", "on_exit",
                   "emulate_tty", "sigterm_timeout", "sigkill_timeout", "cwd", "env",
                   "additional_env", "shell", "prefix", "log_cmd", "cached_output",
                   "output_format", "condition"}


class LaunchDescription:
    def __init__(self, initial_entities=None, *, deprecated_reason=None):
        self.entities = list(initial_entities or [])


class DeclareLaunchArgument:
    def __init__(self, name, *, default_value=None, description=None, choices=None,
                 condition=None):
        self.name, self.default_value = name, default_value
        self.description, self.choices = description, choices


class OpaqueFunction:
    def __init__(self, *, function, args=None, kwargs=None, condition=None):
        assert callable(function)
        self.function, self.args, self.kwargs = function, list(args or []), dict(kwargs or {})

    def execute(self, context):
        return self.function(context, *self.args, **self.kwargs)


class EmitEvent:
    def __init__(self, *, event, condition=None):
        self.event = event


class RegisterEventHandler:
    def __init__(self, event_handler, *, condition=None):
        self.event_handler = event_handler


class OnProcessExit:
    def __init__(self, *, target_action=None, on_exit, handle_once=False):
        self.target_action, self.on_exit = target_action, on_exit


class OnShutdown:
    def __init__(self, *, on_shutdown, **kwargs):
        self.on_shutdown = on_shutdown


class OnProcessStart:
    def __init__(self, *, target_action=None, on_start, handle_once=False):
        self.target_action, self.on_start = target_action, on_start


class LaunchConfiguration:
    def __init__(self, variable_name, *, default=None):
        self.name = variable_name

    def perform(self, context):
        return context.launch_configurations[self.name]


def matches_action(target_action):
    return lambda action: action is target_action


class Node:
    @property
    def node_name(self) -> str:
        """The fully qualified name launch_ros resolves when executing the action."""
        ns = (self.namespace or "").strip("/")
        return f"/{ns}/{self.name}" if ns else f"/{self.name}"

    def __init__(self, *, executable, package=None, name=None, namespace=None, exec_name=None,
                 parameters=None, remappings=None, ros_arguments=None, arguments=None,
                 **kwargs):
        unknown = set(kwargs) - _EXECUTE_KWARGS
        if unknown:
            raise TypeError(f"Node() got unexpected keyword arguments {sorted(unknown)}")
        self.executable, self.package, self.name, self.namespace = (executable, package, name,
                                                                    namespace)
        self.parameters, self.remappings = parameters, remappings
        self.ros_arguments, self.arguments, self.kwargs = ros_arguments, arguments, kwargs


class LifecycleNode(Node):
    def __init__(self, *, name, namespace, **kwargs):
        super().__init__(name=name, namespace=namespace, **kwargs)


class OnStateTransition:
    def __init__(self, *, entities, target_lifecycle_node=None, transition=None,
                 start_state=None, goal_state=None, matcher=None, handle_once=False):
        if not isinstance(target_lifecycle_node, (LifecycleNode, type(None))):
            raise RuntimeError("OnStateTransition requires a 'LifecycleNode' action as the "
                               "target")
        self.entities, self.target = entities, target_lifecycle_node
        self.transition, self.start_state, self.goal_state = transition, start_state, goal_state
        self.custom_matcher = matcher

    def matches(self, event) -> bool:
        """As the real handler: the custom matcher alone, else every given condition."""
        if self.custom_matcher is not None:
            return self.custom_matcher(event)
        return (isinstance(event, StateTransition)
                and (self.target is None or event.action == self.target)
                and (self.transition is None or event.transition == self.transition)
                and (self.start_state is None or event.start_state == self.start_state)
                and (self.goal_state is None or event.goal_state == self.goal_state))


class ChangeState:
    def __init__(self, *, lifecycle_node_matcher, transition_id):
        self.lifecycle_node_matcher, self.transition_id = lifecycle_node_matcher, transition_id


class StateTransition:
    """launch_ros.events.lifecycle.StateTransition (the attributes handlers read)."""

    def __init__(self, *, action, start_state, goal_state, transition=""):
        self.action, self.start_state, self.goal_state = action, start_state, goal_state
        self.transition = transition


class FindPackageShare:
    share = ""           # set by the test: the directory holding config/

    def __init__(self, package):
        self.package = package

    def perform(self, context):
        return FindPackageShare.share


class ProcessStarted:
    """launch.events.process.ProcessStarted (the attribute handlers read)."""

    def __init__(self, pid: int = 1234):
        self.pid = pid


class Loop:
    """The launch's asyncio loop as actions use it: ``run_in_executor`` runs the function
    at once (as if its thread finished before the test looks), ``call_soon_threadsafe``
    calls at once."""

    def run_in_executor(self, executor, function, *args):
        import concurrent.futures
        future = concurrent.futures.Future()
        try:
            future.set_result(function(*args))
        except Exception as e:                    # the launch service would re-raise it
            future.set_exception(e)
        return future

    def call_soon_threadsafe(self, callback, *args):
        callback(*args)


class Client:
    """An rclpy service client whose calls are answered as ``answers`` says, call by call
    (True: answered; False: never answered, like a request sent to a dead process's
    endpoint the graph still lists)."""

    def __init__(self, srv_type, name: str, answers: list[bool]):
        self.srv_type, self.name, self.answers = srv_type, name, answers
        self.requests, self.removed = [], []

    def service_is_ready(self) -> bool:
        return True

    def call_async(self, request):
        from rclpy.task import Future
        future = Future()
        self.requests.append(request)
        if self.answers.pop(0) if self.answers else False:
            future.set_result(self.srv_type.Response())
        return future

    def remove_pending_request(self, future) -> None:
        self.removed.append(future)


class RosNode:
    """launch_ros' node of the launch (``get_ros_node``): hands out scripted clients."""

    def __init__(self, answers: list[bool] | None = None):
        self.answers = list(answers if answers is not None else [True])
        self.clients: list[Client] = []
        self.destroyed: list[Client] = []

    def create_client(self, srv_type, name):
        self.clients.append(Client(srv_type, name, self.answers))
        return self.clients[-1]

    def destroy_client(self, client) -> None:
        self.destroyed.append(client)


def get_ros_node(context):
    return context.ros_node


class Context:
    """LaunchContext: the argument values, whether the launch is shutting down, the
    launch's loop and ROS node; records the events emitted and the futures it waits on."""

    def __init__(self, configurations: dict[str, str], is_shutdown: bool = False,
                 ros_node: RosNode | None = None):
        self.launch_configurations = dict(configurations)
        self.is_shutdown = is_shutdown
        self.asyncio_loop = Loop()
        self.ros_node = ros_node or RosNode()
        self.emitted: list = []
        self.completion_futures: list = []

    def emit_event_sync(self, event) -> None:
        self.emitted.append(event)

    def add_completion_future(self, future) -> None:
        self.completion_futures.append(future)


def modules() -> dict[str, types.ModuleType]:
    """The fake ``launch``/``launch_ros`` module tree, for ``sys.modules``."""
    def module(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m
    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                 EmitEvent=EmitEvent, OpaqueFunction=OpaqueFunction,
                                 RegisterEventHandler=RegisterEventHandler),
        "launch.event_handlers": module("launch.event_handlers", OnProcessExit=OnProcessExit,
                                        OnProcessStart=OnProcessStart, OnShutdown=OnShutdown),
        "launch.events": module("launch.events", matches_action=matches_action),
        "launch.substitutions": module("launch.substitutions",
                                       LaunchConfiguration=LaunchConfiguration),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=Node,
                                     LifecycleNode=LifecycleNode),
        "launch_ros.ros_adapters": module("launch_ros.ros_adapters",
                                          get_ros_node=get_ros_node),
        "launch_ros.event_handlers": module("launch_ros.event_handlers",
                                            OnStateTransition=OnStateTransition),
        "launch_ros.events": module("launch_ros.events"),
        "launch_ros.events.lifecycle": module("launch_ros.events.lifecycle",
                                              ChangeState=ChangeState,
                                              StateTransition=StateTransition),
        "launch_ros.substitutions": module("launch_ros.substitutions",
                                           FindPackageShare=FindPackageShare),
    }


def install(monkeypatch) -> None:
    """Put the fakes into sys.modules (undone by monkeypatch) and forget a launch_actions
    module imported against other modules."""
    for name, m in modules().items():
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.delitem(sys.modules, "mbrl_ros.ros.launch_actions", raising=False)
