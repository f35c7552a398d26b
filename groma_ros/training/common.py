"""Shared training plumbing: resumable checkpoints, wall-clock budgets, logging, LR schedule."""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic save (write + rename) so a kill mid-write never corrupts the resume point."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def require_checkpoint(path: Path, what: str) -> dict[str, Any]:
    """``load_checkpoint`` for a checkpoint the run cannot go on without: a missing one names ``what`` and path."""
    state = load_checkpoint(path)
    if state is None:
        raise FileNotFoundError(f"{what} missing: {path}")
    return state


def restore(state: dict[str, Any], modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> None:
    """Resume from a ``save_checkpoint`` state: each module from its key, the optimizer, the RNGs."""
    for key, module in modules.items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["opt"])
    set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def cosine_lr(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


class Budget:
    """Wall-clock budget of one stage (``--max-minutes``), counted from construction, plus a periodic timer."""

    def __init__(self, minutes: float) -> None:
        self.start = time.monotonic()
        self.seconds = minutes * 60.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fraction(self) -> float:
        return min(1.0, self.elapsed() / self.seconds) if self.seconds > 0 else 1.0

    def exhausted(self) -> bool:
        return self.elapsed() >= self.seconds


class Every:
    """True once every ``seconds`` (checkpoints every few minutes, evaluations)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            return True
        return False


def log_json(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (the training curves the model card summarizes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.strftime("%H:%M:%S"), **record}) + "\n")
