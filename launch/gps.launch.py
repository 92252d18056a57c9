"""Guided policy search (MDGPS) through the nodes as separate processes: lockstep MuJoCo
sim + controller (executes each sample) + data logger (one bag episode per sample) + the
gps_trainer, whose exit ends the launch.

    ros2 launch mbrl_ros gps.launch.py robot:=arm7
    ros2 launch mbrl_ros gps.launch.py robot:=arm2 iterations:=1 out:=/tmp/gps reset:=move
    ros2 launch mbrl_ros gps.launch.py robot:=arm2 timing:=realtime reset:=move   # runs on
    ros2 launch mbrl_ros gps.launch.py --show-args           # every argument

The trainer reads the GPS run configuration (config/gps_<robot>.yaml or config:=FILE) and
writes out/metrics.json, out/gps.png, checkpoints (resume:=true continues) and the policy
artifacts. The processes and their parameters (shipped files, this launch's values, then
your params_file, last) come from the bring-up plan (mbrl_ros/bringup.py);
`mbrl-ros bringup gps ...` starts the same without ros2 launch. A node that exits or fails
to configure ends the launch with a non-zero exit code, as does a failed trainer.
"""
from mbrl_ros.ros.launch_actions import launch_description


def generate_launch_description():
    return launch_description("gps")
