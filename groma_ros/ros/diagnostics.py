"""The node's /diagnostics status (diagnostic_msgs, as diagnostic_aggregator and rqt_robot_monitor read it)."""

from __future__ import annotations

import os

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


def rss_mb() -> float:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def groma_status(node_name: str, state: str, active: bool, model_error: str | None,
                 values: dict[str, str]) -> DiagnosticArray:
    """One status named ``<node>: groma``: OK while active, WARN in any other state, ERROR with the reason
    once a model failed to load (it stays until a configure succeeds). ``values`` become its key/values;
    ``values["device"]`` is the hardware id."""
    level, message = (DiagnosticStatus.OK if active else DiagnosticStatus.WARN), state
    if model_error:
        level, message = DiagnosticStatus.ERROR, f"model failed to load: {model_error}"
    status = DiagnosticStatus(level=level, name=f"{node_name}: groma", message=message,
                              hardware_id=values.get("device", ""),
                              values=[KeyValue(key=k, value=v) for k, v in {"state": state, **values}.items()])
    return DiagnosticArray(status=[status])
