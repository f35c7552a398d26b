"""The README's reference stays true: parameters, messages, the two commands, launch arguments, networking."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from groma_ros.ros.params import SPECS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_parameter_is_in_the_readme_table_with_its_default():
    for spec in SPECS:
        default = str(spec.default).lower() if isinstance(spec.default, bool) else spec.default
        shown = '""' if default == "" else str(default)
        if isinstance(spec.default, list):
            shown = "[" + ", ".join(f'"{v}"' for v in spec.default) + "]"
        assert f"| `{spec.name}` | `{shown}` |" in README, spec.name


def test_every_interface_is_listed():
    for path in sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "action").glob("*.action")):
        assert f"`{path.stem}`" in README or f"`{path.name}`" in README, path.name


def test_two_commands_and_ci_agree():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def _launch_arguments(name: str) -> list[str]:
    """Names declared in a launch file's ARGUMENTS table (read with ast: the launch packages need not be here)."""
    tree = ast.parse((ROOT / "launch" / name).read_text())
    [table] = [node.value for node in tree.body if isinstance(node, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "ARGUMENTS" for t in node.targets)]
    return [entry[0] for entry in ast.literal_eval(table)]


def test_launch_arguments_in_the_readme_exist_and_all_are_documented():
    declared = _launch_arguments("groma.launch.py")
    used = re.findall(r"ros2 launch groma_ros groma\.launch\.py((?: \w+:=\S+)+)", README)
    assert used
    for arguments in used:
        for name in re.findall(r"(\w+):=", arguments):
            assert name in declared, name
    section = README[README.index("**Launch files.**"):README.index("**Recorded data.**")]
    for name in declared:
        assert f"`{name}`" in section, name


def test_readme_says_how_to_reach_a_camera_on_another_host():
    section = README[README.index("**Reaching a camera on another host.**"):README.index("### Without ROS")]
    for setting in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET", "RMW_IMPLEMENTATION",
                    "ROS_STATIC_PEERS"):
        assert setting in section, setting


def test_parity_fixture_data_is_in_the_repository_and_described():
    data = ROOT / "tests" / "data" / "groma_parity"
    text = (data / "README.md").read_text()
    for name in ("expected.npz", "image.png", "meta.json", "prompts.json", "config.json", "weights_rule.tsv"):
        assert (data / name).is_file() and f"`{name}`" in text, name
