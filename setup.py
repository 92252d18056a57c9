"""ament_python package: builds with colcon in a ROS 2 (Jazzy or newer) workspace and
installs with pip. launch/, config/ and the MJCF assets are installed into share/mbrl_ros."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mbrl_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    package_data={PACKAGE: ["sim/assets/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/assets", glob(f"{PACKAGE}/sim/assets/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="mbrl_ros developers",
    maintainer_email="mbrl-ros@example.org",
    description="Model-based reinforcement learning for robot arms on ROS 2: "
                "MuJoCo sim, rosbag2 logging, learned dynamics, MPC and guided policy search.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_node = mbrl_ros.ros.sim_node:main",
            "data_logger = mbrl_ros.ros.data_logger:main",
            "excitation = mbrl_ros.ros.excitation_node:main",
            "model_fitter = mbrl_ros.ros.model_fitter:main",
            "controller = mbrl_ros.ros.controller:main",
            "gps_trainer = mbrl_ros.ros.gps_trainer:main",
            "mbrl-ros = mbrl_ros.cli:main",
        ],
    },
)
