"""The README's main job (`make demo` → scripts/demo.py) runs end to end on the embedded model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")
pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]


def test_demo_grounds_spoken_commands_and_saves_pictures(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--scenes", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, env=dict(os.environ))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:] + (out / "node.log").read_text()[-3000:]
    assert log.count("speech  ->") >= 3 and log.count("groma   <- [OK]") == log.count("speech  ->"), log
    assert "IoU with ground truth" in log
    # the dialogue: every turn answered OK within one conversation, numbered 1, 2, ...
    turns = log.count("  user    ->")
    assert turns >= 2 and log.count("reply   <- [OK]") == turns, log
    assert all(f"turn {k} of 'demo-scene-0'" in log for k in range(1, turns + 1)), log
    pictures = sorted(out.glob("scene0_query*.png"))
    assert pictures, log
