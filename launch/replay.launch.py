"""Fit models offline from recorded bags (no robot, no simulator).

    ros2 launch mbrl_ros replay.launch.py bags:="['bags/run1_0000', 'bags/run2_0000']" model:=gp

The model_fitter loads the bags, fits once at start and keeps serving the model: its
announcement on /model_fitter/model is latched, so a controller started later picks it
up. Refit with ``ros2 service call /model_fitter/fit std_srvs/srv/Trigger``.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGS = [
    ("bags", "['bags']", "YAML list of bag directories or .mcap files"),
    ("model", "ensemble", "gp | ensemble | tvlg | linear | mujoco"),
    ("robot", "", "robot label (the MJCF for model:=mujoco)"),
    ("store_dir", "models", "artifact store root"),
    ("params_file", PathJoinSubstitution([FindPackageShare("mbrl_ros"), "config",
                                          "model_fitter.yaml"]), "model_fitter parameters"),
]


def generate_launch_description():
    fitter = Node(
        package="mbrl_ros", executable="model_fitter", name="model_fitter", output="screen",
        # The bags argument is YAML: launch_ros parses a substituted value as YAML.
        parameters=[LaunchConfiguration("params_file"), {
            "bags": LaunchConfiguration("bags"), "model": LaunchConfiguration("model"),
            "robot": LaunchConfiguration("robot"), "store_dir": LaunchConfiguration("store_dir"),
            "live": False, "fit_every": 0, "fit_on_start": True}])
    return LaunchDescription(
        [DeclareLaunchArgument(n, default_value=d, description=h) for n, d, h in ARGS]
        + [fitter])
