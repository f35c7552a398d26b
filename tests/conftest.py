"""Test-wide settings: DDS stays on loopback, a private ROS domain per run, no model hub."""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from pathlib import Path

# Test support (``tests.support``) lives beside the tests, not in the installed package: make the checkout
# importable here and in every child process the tests start.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def _claim_domain_id() -> int:
    """A ROS domain no other live test run on this machine uses (lock files hold the owner's pid).

    Shells that sourced .venv/bin/activate export ROS_DOMAIN_ID=42; two test runs (or a demo and a test
    run) in that domain would see each other's camera frames, so each run claims its own domain.
    """
    lock_dir = Path(tempfile.gettempdir())
    for domain in range(150, 230):  # Fast DDS supports ids up to 232; stay clear of the common 0..101
        lock = lock_dir / f"groma_ros_test_domain_{domain}.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
                os.kill(owner, 0)
                continue  # owner alive
            except (ValueError, ProcessLookupError, PermissionError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale lock of a run that died
                try:
                    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        atexit.register(lambda path=lock: path.unlink(missing_ok=True))
        return domain
    raise RuntimeError("no free ROS domain id for the tests (remove stale /tmp/groma_ros_test_domain_*.lock)")


# Every test process (and every child it starts) keeps DDS discovery on this machine and in a
# domain of its own, so parallel runs on one machine never see each other's topics.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
if "GROMA_TEST_ROS_DOMAIN_ID" in os.environ:
    os.environ["ROS_DOMAIN_ID"] = os.environ["GROMA_TEST_ROS_DOMAIN_ID"]
else:
    os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
