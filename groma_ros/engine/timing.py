"""Wall-clock timing of model stages that run inside one model call (perception's proposer, region encoder)."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock reading covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Times named submodules during one call via forward hooks; ``ms`` sums each name's calls."""

    def __init__(self, device: torch.device, stages: dict[str, list[torch.nn.Module]]) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self._t0: dict[str, float] = {}
        self._handles = []
        for name, modules in stages.items():
            for m in modules:
                self._handles.append(m.register_forward_pre_hook(self._start(name)))
                self._handles.append(m.register_forward_hook(self._stop(name)))

    def _start(self, name: str):
        def hook(*_):
            sync(self.device)
            self._t0[name] = time.perf_counter()

        return hook

    def _stop(self, name: str):
        def hook(*_):
            sync(self.device)
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - self._t0.pop(name)) * 1000.0

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
