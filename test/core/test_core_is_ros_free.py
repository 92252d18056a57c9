"""The core and the sim stay free of ROS: nodes are thin adapters over them."""
import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import mbrl_ros

ROS_MODULES = {"rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "std_srvs",
               "geometry_msgs", "trajectory_msgs", "builtin_interfaces", "rosgraph_msgs",
               "diagnostic_msgs", "visualization_msgs", "lifecycle_msgs", "launch",
               "launch_ros", "rosidl_runtime_py", "ament_index_python"}
PKG = Path(mbrl_ros.__file__).parent
FREE = [PKG / "core", PKG / "sim"]


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module.split(".")[0]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                yield node.lineno, str(node.args[0].value).split(".")[0]


def test_no_ros_import_statements():
    files = [f for d in FREE for f in d.rglob("*.py")]
    assert len(files) > 5
    bad = [f"{f.relative_to(PKG.parent)}:{line} imports {mod}"
           for f in files for line, mod in _imports(f) if mod in ROS_MODULES]
    assert not bad, "ROS imported in the ROS-free core:\n" + "\n".join(bad)


def test_checker_catches_a_ros_import(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import numpy\nfrom sensor_msgs.msg import JointState\n")
    assert ("sensor_msgs" in {m for _, m in _imports(f)})


def test_importing_every_core_module_loads_no_ros():
    mods = [m.name for d in ("core", "sim")
            for m in pkgutil.walk_packages([str(PKG / d)], prefix=f"mbrl_ros.{d}.")]
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ROS_MODULES)!r})\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"ROS modules loaded by the core: {out.stdout}"
