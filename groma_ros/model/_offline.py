"""Weights come from local directories only: the model never reaches a hub, whatever the environment says.

Deformable attention and other transformers layers may try to fetch compiled kernels or files from the
Hugging Face Hub; on a robot (and in our CI) there is no network, and silently trying is worse than
failing. This forces offline mode, including in an already imported ``huggingface_hub``.
"""

from __future__ import annotations

import os
import sys


def enforce_offline() -> None:
    """Set the hub's offline switches (env and, if already imported, the module constants)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["USE_HUB_KERNELS"] = "NO"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
