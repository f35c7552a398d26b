"""Nothing forced on users: `source .venv/bin/activate` leaves DDS discovery and the domain as the shell has them.

The block that scripts/setup.sh puts into the venv's activate script is rendered from scripts/venv_env.sh and
sourced in a real bash; the set-up's own rewriting code (taken from setup.sh) replaces a block an earlier set-up
wrote, which exported ROS_DOMAIN_ID=42 and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST for everyone.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ros_tools

ROOT = Path(__file__).resolve().parents[1]
SETUP = (ROOT / "scripts" / "setup.sh").read_text()
TEMPLATE = (ROOT / "scripts" / "venv_env.sh").read_text()
DDS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS")
EARLIER_BLOCK = """
# --- groma_ros environment (added by scripts/setup.sh) ---
export AMENT_PREFIX_PATH="/opt/v${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
# Keep DDS discovery on this machine unless the user chose otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-42}
# Never reach a model hub: weights come from local directories.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"""


def sourced(script: Path, times: int = 1, **preset: str) -> dict[str, str]:
    """The environment after sourcing ``script`` ``times`` times in a bash that starts with only ``preset``."""
    line = "; ".join([f"source {script}"] * times) + "; env"
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", line], env={"PATH": "/usr/bin:/bin", **preset},
                          capture_output=True, text=True, check=True)
    return dict(row.split("=", 1) for row in done.stdout.splitlines() if "=" in row)


def rendered_block(tmp_path: Path, venv: str = "/opt/v") -> Path:
    path = tmp_path / "venv_env.sh"
    path.write_text(TEMPLATE.replace("@VENV@", venv))
    return path


def test_activation_leaves_dds_settings_alone(tmp_path):
    block = rendered_block(tmp_path)
    fresh = sourced(block)
    assert not set(DDS) & set(fresh), {k: fresh[k] for k in DDS if k in fresh}
    assert fresh["AMENT_PREFIX_PATH"] == "/opt/v"
    assert fresh["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert fresh["HF_HUB_OFFLINE"] == fresh["TRANSFORMERS_OFFLINE"] == "1"
    robot = sourced(block, times=2, ROS_DOMAIN_ID="0", ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET",
                    ROS_STATIC_PEERS="192.168.1.20", AMENT_PREFIX_PATH="/opt/ros/jazzy", RMW_IMPLEMENTATION="x")
    assert (robot["ROS_DOMAIN_ID"], robot["ROS_AUTOMATIC_DISCOVERY_RANGE"], robot["ROS_STATIC_PEERS"]) == (
        "0", "SUBNET", "192.168.1.20")
    assert robot["AMENT_PREFIX_PATH"] == "/opt/v:/opt/ros/jazzy"  # once, however often activate is sourced
    assert robot["RMW_IMPLEMENTATION"] == "x"


def test_setup_replaces_an_earlier_block_and_is_idempotent(tmp_path):
    [rewrite] = re.findall(r"<<'PYACT'\n(.*?)\nPYACT\n", SETUP, re.S)
    assert 'sed "s|@VENV@|$VENV|g" scripts/venv_env.sh' in SETUP
    activate = tmp_path / "activate"
    activate.write_text("# the venv's own activate\nexport VIRTUAL_ENV=/opt/v\n" + EARLIER_BLOCK)
    block = TEMPLATE.replace("@VENV@", "/opt/v")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", rewrite, str(activate), block], check=True)
    text = activate.read_text()
    assert text.startswith("# the venv's own activate\nexport VIRTUAL_ENV=/opt/v\n")
    assert not re.search(r"^\s*export (ROS_DOMAIN_ID|ROS_AUTOMATIC_DISCOVERY_RANGE)", text, re.M), text
    assert text.count("groma_ros environment (added by scripts/setup.sh)") == 1
    assert block.strip() in text and "${ROS_DOMAIN_ID:-42}" not in text and ":-LOCALHOST}" not in text
    env = sourced(activate, ROS_DOMAIN_ID="0")
    assert env["ROS_DOMAIN_ID"] == "0" and "ROS_AUTOMATIC_DISCOVERY_RANGE" not in env


def test_missing_ros_tools_are_named_in_the_skip_reason(monkeypatch):
    monkeypatch.setitem(ros_tools.TOOL_REQUIREMENTS, "imaginary", (("no-such-ros2-command",), ("no_such_module",)))
    monkeypatch.setitem(ros_tools.TOOL_REQUIREMENTS, "present", (("bash",), ("json",)))
    assert ros_tools.missing_tools("present") == []
    assert ros_tools.skip_reason("present") == ""
    reason = ros_tools.skip_reason("imaginary", "present")
    assert reason.startswith("needs imaginary, present: missing `no-such-ros2-command` on PATH, Python module "
                             "no_such_module; ros2 tools: `bash shared/ros_tools/install.sh .venv`"), reason
    monkeypatch.setitem(ros_tools.TOOL_REQUIREMENTS, "colcon", (("no-such-colcon",), ()))
    assert ros_tools.skip_reason("colcon", "present") == (
        "needs colcon, present: missing `no-such-colcon` on PATH; colcon: `pip install -r requirements/dev.txt` "
        "(scripts/setup.sh does)")
