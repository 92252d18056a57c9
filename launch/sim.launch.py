"""mbrl_ros in simulation: MuJoCo sim + data logger + model fitter + MPC controller.

    ros2 launch mbrl_ros sim.launch.py robot:=arm2 model:=mujoco planner:=ilqr
    ros2 launch mbrl_ros sim.launch.py robot:=arm7 model:=ensemble record:=true bag_dir:=bags
    ros2 launch mbrl_ros sim.launch.py excite:=true          # collect data, no controller

Arguments: robot (arm2 | arm7 | cartpole | path to an MJCF), model (mujoco = the known
model; gp | ensemble | tvlg | linear = learned by model_fitter from live data and handed
to the controller), planner (ilqr | mppi | cem | casadi_mpc), use_sim_time, record,
bag_dir, excite, params_file (extra parameters, applied last).
The controller is a lifecycle node: it is configured and activated here.
"""
import os

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, OpaqueFunction,
                            RegisterEventHandler)
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

ARGS = [
    ("robot", "arm2", "arm2 | arm7 | cartpole | path to an MJCF file"),
    ("model", "mujoco", "mujoco (known) | gp | ensemble | tvlg | linear (learned)"),
    ("planner", "ilqr", "ilqr | mppi | cem | casadi_mpc"),
    ("use_sim_time", "true", "nodes follow the simulator's /clock"),
    ("record", "true", "record /joint_states and the commands to bag_dir"),
    ("bag_dir", "bags", "directory for the bags"),
    ("excite", "false", "run the excitation controller instead of MPC (data collection)"),
    ("params_file", "", "extra parameter file applied after the shipped ones"),
    # Set by robot.launch.py, which includes this file for a real arm:
    ("sim", "true", "start the MuJoCo simulation (false: a real arm's driver is running)"),
    ("controller_name", "effort_controller", "forward command controller to command"),
]
PLANNERS = ["ilqr", "mppi", "cem", "casadi_mpc"]


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def config_files(share: str, names: list[str], extra: str) -> list[str]:
    """Existing shipped config files among ``names``, then the user's file."""
    files = [os.path.join(share, "config", n) for n in names]
    files = [f for f in files if os.path.exists(f)]
    return files + ([extra] if extra else [])


def robot_nodes(context):
    """The nodes for one robot, simulated or real (robot.launch.py includes this file)."""
    get = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    with_sim = _truthy(get("sim"))
    share = FindPackageShare("mbrl_ros").perform(context)
    robot, model, planner = get("robot"), get("model"), get("planner")
    sim_time = _truthy(get("use_sim_time"))
    robot_label = os.path.splitext(os.path.basename(robot))[0]
    robot_yaml = f"{robot_label}.yaml"
    extra = get("params_file")
    controller_name = get("controller_name")
    common = {"use_sim_time": sim_time}
    nodes = []
    if with_sim:
        nodes.append(Node(package="mbrl_ros", executable="sim_node", name="sim", output="screen",
                          parameters=config_files(share, ["sim.yaml", robot_yaml], extra)
                          + [{"model": robot, "controller_name": controller_name}]))
    if _truthy(get("record")):
        nodes.append(Node(package="mbrl_ros", executable="data_logger", name="data_logger",
                          output="screen",
                          parameters=config_files(share, ["data_logger.yaml"], extra)
                          + [{**common, "output_dir": get("bag_dir"),
                              "topics": ["/joint_states",
                                         f"/{controller_name}/commands"]}]))
    if model != "mujoco":
        nodes.append(Node(package="mbrl_ros", executable="model_fitter", name="model_fitter",
                          output="screen",
                          parameters=config_files(share, ["model_fitter.yaml"], extra)
                          + [{**common, "model": model, "robot": robot,
                              "command_topic": f"/{controller_name}/commands"}]))
    if _truthy(get("excite")):
        nodes.append(Node(package="mbrl_ros", executable="excitation", name="excitation",
                          output="screen",
                          parameters=config_files(share, ["excitation.yaml", robot_yaml], extra)
                          + [{**common, "model": robot, "controller_name": controller_name}]))
        return nodes
    controller = LifecycleNode(
        package="mbrl_ros", executable="controller", name="controller", namespace="",
        output="screen",
        parameters=config_files(share, ["controller.yaml", robot_yaml], extra)
        + [{**common, "robot": robot, "model": "mujoco" if model == "mujoco" else "",
            "active_planner": planner, "planner_plugins": PLANNERS,
            "controller_name": controller_name}])
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(controller),
        transition_id=Transition.TRANSITION_CONFIGURE))
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=controller, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(controller),
            transition_id=Transition.TRANSITION_ACTIVATE))]))
    return nodes + [controller, activate, configure]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(n, default_value=d, description=h) for n, d, h in ARGS]
        + [OpaqueFunction(function=robot_nodes)])
