"""Fixtures shared by the ROS tests: an rclpy context per module, tiny models built once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.models import make_tiny_model_dir


@pytest.fixture(scope="module")
def ros_context():
    rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 venv from scripts/setup.sh")
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random model in the released format (answers arbitrary but deterministic)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def endless_model_dir(tmp_path_factory) -> Path:
    """The tiny model that practically never stops before max_new_tokens (queues, cancel, BUSY)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("endless_model"), endless=True)
