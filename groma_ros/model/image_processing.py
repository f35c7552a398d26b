"""Image pre-processing of the release (PIL-free): resize to a square, rescale 1/255, ImageNet normalize.

The original resizes with PIL bicubic; here cv2 ``INTER_CUBIC`` is used, which is close but not bit-equal
(a no-op for images that already have the model's size). Numerics otherwise match ``BitImageProcessor``:
``float32(u8 * (1/255))`` computed in float64, then ``(x - mean) / std`` in float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3] (alpha dropped, grey expanded)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def preprocess_rgb(image: np.ndarray, size: int = 448) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> float32 pixel_values [1, 3, size, size]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    if image.shape[:2] != (size, size):
        import cv2

        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
    x = (image.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
