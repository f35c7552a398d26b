"""The wheel carries what a robot runs, and the training code only when asked for (GROMA_INSTALL_TRAINING)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("groma_ros/training/", "groma_ros/synthetic/", "groma_ros/train.py", "groma_ros/evaluate.py")
PRODUCT = ("groma_ros/engine/engine.py", "groma_ros/model/modeling_groma.py", "groma_ros/ros/node.py",
           "groma_ros/cli.py", "groma_ros/tools/convert.py", "groma_ros/assets/default_model/model.safetensors")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The checkout's files as a clean clone has them (the build writes build/ and egg-info into its tree)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    dst = tmp_path_factory.mktemp("src")
    for name in files:
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    return dst


def wheel_files(source: Path, out: Path, **env: str) -> list[str]:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", ".", "--no-deps", "--no-build-isolation",
                    "-w", str(out)], cwd=source, check=True, env={**os.environ, **env}, timeout=300)
    [wheel] = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_carries_the_product_only(source, tmp_path):
    names = wheel_files(source, tmp_path, GROMA_INSTALL_TRAINING="")
    assert all(p in names for p in PRODUCT), [p for p in PRODUCT if p not in names]
    assert not [n for n in names if n.startswith(TRAINING) or n.startswith(("tests/", "benchmarks/"))]


def test_the_training_code_comes_with_the_option(source, tmp_path):
    names = wheel_files(source, tmp_path, GROMA_INSTALL_TRAINING="1")
    assert all(p in names for p in PRODUCT)
    assert all(any(n.startswith(t) for n in names) for t in TRAINING)
