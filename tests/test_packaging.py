"""The wheel carries what a robot runs, and the training code only when asked for (GROMA_INSTALL_TRAINING)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
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


def build_wheel(source: Path, out: Path, **env: str) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", ".", "--no-deps", "--no-build-isolation",
                    "-w", str(out)], cwd=source, check=True, env={**os.environ, **env}, timeout=300)
    [wheel] = out.glob("*.whl")
    return wheel


def wheel_files(source: Path, out: Path, **env: str) -> list[str]:
    return zipfile.ZipFile(build_wheel(source, out, **env)).namelist()


def test_the_wheel_carries_the_product_only(source, tmp_path):
    names = wheel_files(source, tmp_path, GROMA_INSTALL_TRAINING="")
    assert all(p in names for p in PRODUCT), [p for p in PRODUCT if p not in names]
    assert not [n for n in names if n.startswith(TRAINING) or n.startswith(("tests/", "benchmarks/"))]


def test_the_training_code_comes_with_the_option(source, tmp_path):
    names = wheel_files(source, tmp_path, GROMA_INSTALL_TRAINING="1")
    assert all(p in names for p in PRODUCT)
    assert all(any(n.startswith(t) for n in names) for t in TRAINING)


INSTALLED_CHECK = """
import importlib, sys
import cv2, numpy as np
import groma_ros
assert sys.argv[1] not in groma_ros.__path__, groma_ros.__path__  # not the checkout
for name in ("groma_ros.training", "groma_ros.synthetic", "groma_ros.train", "tests"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{name} is importable from the installed product")
image = np.zeros((120, 160, 3), np.uint8)
image[30:90, 40:100] = (0, 0, 255)
cv2.imwrite("scene.png", image)
from groma_ros.cli import main
sys.exit(main(["detect", "scene.png", "--threads", "1"]))
"""


def test_the_installed_product_runs_without_the_checkout(source, tmp_path):
    """Installed from the wheel alone (no checkout on the path, no .pth of the editable install): the CLI runs
    the embedded model, and nothing of training or the tests is there to import. It builds after the training
    wheel in the same tree (tests run in file order), so a build/ left with training in it must not leak."""
    target = tmp_path / "site"
    wheel = build_wheel(source, tmp_path / "wheel", GROMA_INSTALL_TRAINING="")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}
    run = subprocess.run([sys.executable, "-S", "-c", INSTALLED_CHECK, str(ROOT / "groma_ros")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "score" in run.stdout or "box" in run.stdout, run.stdout
