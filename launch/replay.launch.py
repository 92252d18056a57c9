"""Fit models offline from recorded bags (no robot, no simulator).

    ros2 launch mbrl_ros replay.launch.py bags:="['bags/run1_0000', 'bags/run2_0000']" model:=gp

The model_fitter loads the bags, fits once at start and keeps serving the model: its
announcement on model_fitter/model is latched, so a controller started later picks it
up. Refit with ``ros2 service call /model_fitter/fit std_srvs/srv/Trigger``. Its
parameters: config/model_fitter.yaml, config/<robot>.yaml, this launch's values, then
your params_file (the bring-up plan, mbrl_ros/bringup.py; `mbrl-ros bringup replay ...`
starts the same without ros2 launch).
"""
from mbrl_ros.ros.launch_actions import launch_description


def generate_launch_description():
    return launch_description("replay")
