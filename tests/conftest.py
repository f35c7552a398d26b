"""Test-wide settings: DDS stays on loopback, a private ROS domain per run, no model hub."""

from __future__ import annotations

import os

# Every test process (and every child it starts) keeps DDS discovery on this machine and in a
# domain of its own, so parallel runs on one machine never see each other's topics.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
