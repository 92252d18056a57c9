"""mbrl_ros on a real arm driven by ros2_control: logger + model fitter + MPC controller.

Expects the arm's ros2_control stack to run already: joint_state_broadcaster publishing
/joint_states and a forward command controller (effort_controllers/JointGroupEffortController
or forward_command_controller with interface 'effort') named ``controller_name``, whose
joints are the robot's actuated joints in the MJCF's order.

    ros2 launch mbrl_ros robot.launch.py robot:=/path/to/my_arm.xml controller_name:=effort_controller

Set the safety parameters first (README, "Running on a real arm"): pass them in
params_file. Same arguments as sim.launch.py, without the simulator; use_sim_time is false.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

ARGS = [
    ("robot", "arm7", "MJCF of the arm (joint names, limits, inertias must match the robot)"),
    ("controller_name", "effort_controller", "the ros2_control forward command controller"),
    ("model", "ensemble", "gp | ensemble | tvlg | linear (learned) | mujoco (the MJCF as model)"),
    ("planner", "ilqr", "ilqr | mppi | cem | casadi_mpc"),
    ("record", "true", "record /joint_states and the commands to bag_dir"),
    ("bag_dir", "bags", "directory for the bags"),
    ("excite", "false", "run the excitation controller instead of MPC (data collection)"),
    ("params_file", "", "your parameter file (safety limits!), applied last"),
]


def generate_launch_description():
    sim_launch = PathJoinSubstitution([FindPackageShare("mbrl_ros"), "launch", "sim.launch.py"])
    forwarded = {name: LaunchConfiguration(name) for name, _, _ in ARGS}
    return LaunchDescription(
        [DeclareLaunchArgument(n, default_value=d, description=h) for n, d, h in ARGS]
        + [IncludeLaunchDescription(
            PythonLaunchDescriptionSource(sim_launch),
            launch_arguments={**forwarded, "sim": "false", "use_sim_time": "false"}.items())])
