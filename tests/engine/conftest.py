"""Engine test fixtures: one tiny random Groma in the released format + a tiny SentencePiece tokenizer.

Session-scoped so the whole engine suite trains/writes/loads it once (a second or two on CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.models import make_tiny_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_groma"))


@pytest.fixture(scope="session")
def engine(model_dir):
    from groma_ros.engine import GromaEngine

    return GromaEngine.from_pretrained(str(model_dir), num_threads=1, progress=False)


def make_image(w: int = 96, h: int = 72, seed: int = 0) -> np.ndarray:
    """A small RGB test image with a few flat shapes on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1).astype(np.uint8)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    return make_image()
