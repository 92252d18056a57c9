"""mbrl_ros on a real arm driven by ros2_control: logger + model fitter + MPC controller.

Expects the arm's ros2_control stack to run already: joint_state_broadcaster publishing
joint_states and a forward command controller (effort_controllers/JointGroupEffortController
or forward_command_controller with interface 'effort') named ``controller_name``, whose
joints are the robot's actuated joints in the MJCF's order, both in ``namespace``.

    ros2 launch mbrl_ros robot.launch.py robot:=/path/to/my_arm.xml params_file:=safety.yaml
    ros2 launch mbrl_ros robot.launch.py activate:=false   # configure only; activate by hand

Set the safety parameters first (README, "Running on a real arm"): pass them in
params_file, which applies last. The processes come from the bring-up plan
(mbrl_ros/bringup.py); `mbrl-ros bringup robot ...` starts the same without ros2 launch.
A node that exits or fails to configure ends the launch with a non-zero exit code, unless
respawn:=true restarts it.
"""
from mbrl_ros.ros.launch_actions import launch_description


def generate_launch_description():
    return launch_description("robot")
