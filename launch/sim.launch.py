"""mbrl_ros in simulation: MuJoCo sim + data logger + model fitter + MPC controller.

    ros2 launch mbrl_ros sim.launch.py robot:=arm2 model:=mujoco planner:=ilqr
    ros2 launch mbrl_ros sim.launch.py robot:=arm7 model:=ensemble record:=true bag_dir:=bags
    ros2 launch mbrl_ros sim.launch.py excite:=true          # collect data, no controller
    ros2 launch mbrl_ros sim.launch.py --show-args           # every argument

The processes, their parameters (shipped files, this launch's values, then your
params_file, last) and the controller's lifecycle come from the bring-up plan
(mbrl_ros/bringup.py); `mbrl-ros bringup sim ...` starts the same without ros2 launch.
A node that exits or fails to configure ends the launch with a non-zero exit code.
"""
from mbrl_ros.ros.launch_actions import launch_description


def generate_launch_description():
    return launch_description("sim")
