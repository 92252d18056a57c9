"""One-way layers: every import between mbrl_ros modules follows the table below.

The test reads each module's imports (AST: module-level, function-level and TYPE_CHECKING
imports alike; ``from pkg import sub`` counts as importing ``pkg.sub``), maps both ends to a
layer and checks that the importer's layer may import the imported one. A layer may always
import itself. Read the table from the bottom up: the lower a layer, the fewer it may
import; nothing may import a layer above it, so the graph between layers has no cycle
(checked too).

``EXCEPTIONS`` lists the edges that break the table today, each with the work that removes
it. The goal (issue 13) is an empty list: when that work lands, delete its line -- the test
fails on an exception that no longer occurs, so the list cannot go stale.
"""
from __future__ import annotations

import ast
from pathlib import Path

import mbrl_ros

PKG = Path(mbrl_ros.__file__).parent

# Module prefix -> layer (the longest prefix wins).
LAYER_OF = {
    "mbrl_ros": "package",
    "mbrl_ros.sim": "sim",                        # MuJoCo simulator + shipped MJCFs
    "mbrl_ros.core": "base",
    "mbrl_ros.core.types": "base",
    "mbrl_ros.core.settings": "base",
    "mbrl_ros.core.threads": "base",
    "mbrl_ros.core.registry": "base",             # plugin table: module names, no imports
    "mbrl_ros.core.robot": "robot",               # RobotDescription from the MJCF
    "mbrl_ros.core.data": "data",                 # bags, alignment, replay buffer
    "mbrl_ros.core.models": "models",
    "mbrl_ros.core.costs": "costs",
    "mbrl_ros.core.policies": "policies",
    "mbrl_ros.core.lqr": "lqr",                   # Riccati backward pass, box QP (numba),
                                                  # the GPS C-step (kl_step)
    "mbrl_ros.core.store": "fitting",             # model artifacts
    "mbrl_ros.core.fitting": "fitting",
    "mbrl_ros.core.report": "reporting",
    "mbrl_ros.core.plots": "reporting",
    "mbrl_ros.core.planners": "planners",
    "mbrl_ros.core.control": "control",
    "mbrl_ros.core.algorithms": "algorithms",     # wiring only (GPS)
    "mbrl_ros.bringup": "bringup",                # the ROS-free launch plan
    "mbrl_ros.ros": "ros",
    "mbrl_ros.cli": "cli",
    "mbrl_ros.cli_gps": "cli",                    # the gps subcommand of the CLI
}

_CORE = {"base", "robot", "data", "models", "costs", "policies", "lqr", "fitting",
         "reporting", "planners", "control", "algorithms"}

# Layer -> the layers it may import (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    "package": set(),
    "sim": set(),                                 # a leaf: imports nothing of ours
    "base": set(),
    "robot": {"base", "sim"},                     # reads the MJCF through sim.layout.joint_layout
    "data": {"base"},
    # The mujoco family's dynamics are the simulator itself (MujocoSim steps them).
    "models": {"base", "robot", "sim"},
    "costs": {"base", "robot"},
    "fitting": {"base", "robot", "data", "models"},
    # The neural policy's trainer reports like a model fit and saves through the store.
    "policies": {"base", "robot", "models", "fitting"},
    "reporting": {"base", "robot", "costs", "models"},
    # Numerics shared by the planners; kl_step (the GPS C-step) works on a cost's
    # derivatives, the models' Linearization and linear-Gaussian controllers.
    "lqr": {"base", "costs", "models", "policies"},
    "planners": {"base", "robot", "costs", "models", "policies", "lqr"},
    # closed_loop.py runs controllers against the simulator (tests, benchmarks).
    "control": {"base", "robot", "sim", "data", "costs", "models", "policies", "fitting",
                "planners"},
    "algorithms": {"sim"} | (_CORE - {"algorithms"}),
    "bringup": {"base"},
    "ros": {"sim", "bringup"} | _CORE,
    "cli": {"package", "sim", "bringup", "ros"} | _CORE,
}

# (importer module, imported module): the work that removes the edge.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports_of(path: Path, module: str, root: Path) -> set[str]:
    """The mbrl_ros modules ``path`` (module ``module``) imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if _is_module(sub, root) else target)
    return {m for m in out if m == "mbrl_ros" or m.startswith("mbrl_ros.")}


def layer(module: str) -> str | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        hit = LAYER_OF.get(".".join(parts[:i]))
        if hit is not None:
            return hit
    return None


def violations(root: Path = PKG.parent) -> tuple[list[str], set[tuple[str, str]]]:
    """(problems, edges that break the table) over every module under ``root/mbrl_ros``."""
    problems, breaking = [], set()
    for path in sorted((root / "mbrl_ros").rglob("*.py")):
        mod = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        src = layer(mod)
        if src is None:
            problems.append(f"{mod}: no layer (add it to LAYER_OF)")
            continue
        for target in sorted(imports_of(path, mod, root)):
            dst = layer(target)
            if dst is None:
                problems.append(f"{mod} imports {target}, which has no layer")
            elif dst != src and dst not in MAY_IMPORT[src]:
                breaking.add((mod, target))
                if (mod, target) not in EXCEPTIONS:
                    problems.append(f"{mod} ({src}) imports {target} ({dst}): {src} may "
                                    f"import only {sorted(MAY_IMPORT[src]) or 'nothing'}")
    return problems, breaking


def test_every_import_follows_the_layer_table():
    problems, _ = violations()
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_every_listed_exception_still_occurs():
    # An exception whose edge is gone must leave the list (the goal is an empty list).
    _, breaking = violations()
    stale = [f"{a} -> {b} ({why})" for (a, b), why in EXCEPTIONS.items()
             if (a, b) not in breaking]
    assert not stale, "remove these from EXCEPTIONS:\n" + "\n".join(stale)


def test_the_table_is_one_way():
    assert set(MAY_IMPORT) == set(LAYER_OF.values())
    # Depth-first search for a cycle between layers.
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for m in MAY_IMPORT[n]:
            assert state.get(m) != 1, f"layer cycle: {' -> '.join(trail + [n, m])}"
            if m not in state:
                visit(m, trail + [n])
        state[n] = 2

    for n in MAY_IMPORT:
        if n not in state:
            visit(n, [])


def test_sim_is_a_leaf_and_core_never_imports_ros():
    assert MAY_IMPORT["sim"] == set()
    for name in _CORE | {"sim", "robot", "bringup"}:
        assert not {"ros", "cli"} & MAY_IMPORT[name], name


def test_checker_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "mbrl_ros"
    for d in ("sim", "core", "core/control"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "control" / "mpc.py").write_text("")
    (pkg / "core" / "types.py").write_text("")
    (pkg / "sim" / "env.py").write_text(
        "from ..core import types\n"
        "def f():\n    from mbrl_ros.core.control.mpc import X\n")
    problems, breaking = violations(tmp_path)
    assert breaking == {("mbrl_ros.sim.env", "mbrl_ros.core.types"),
                        ("mbrl_ros.sim.env", "mbrl_ros.core.control.mpc")}
    assert len(problems) == 2 and all("sim may import only nothing" in p for p in problems)


# The planner classes the nodes must never tell apart (issue 13: the Planning protocol).
PLANNING_CLASSES = {"MPCController", "PlanProcess", "PlanningBase", "Planning"}


def planner_type_checks(path: Path) -> list[str]:
    """``isinstance``/``issubclass``/``type()`` calls in ``path`` that ask about the planner
    a node holds: an argument mentions one of :data:`PLANNING_CLASSES` or the node's
    ``mpc`` attribute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass", "type")):
            continue
        names = {n.id for arg in node.args for n in ast.walk(arg) if isinstance(n, ast.Name)}
        attrs = {n.attr for arg in node.args for n in ast.walk(arg)
                 if isinstance(n, ast.Attribute)}
        if names & PLANNING_CLASSES or attrs & (PLANNING_CLASSES | {"mpc"}):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_nodes_never_ask_which_planner_they_hold():
    found = [hit for path in sorted((PKG / "ros").glob("*.py"))
             for hit in planner_type_checks(path)]
    assert not found, "planner type checks in nodes:\n" + "\n".join(found)


def test_planner_type_check_finder_sees_them(tmp_path):
    src = tmp_path / "node.py"
    src.write_text("def f(self):\n"
                   "    if isinstance(self.mpc, PlanProcess):\n        pass\n"
                   "    x = isinstance(self.mpc, object)\n"
                   "    y = isinstance(p, mpc.MPCController)\n"
                   "    z = isinstance(self.other, dict)\n")
    assert [h.split(":")[1] for h in planner_type_checks(src)] == ["2", "4", "5"]
