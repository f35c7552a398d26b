"""The LLM decoding modes by name (see ``decoding``); torch-free, so ROS parameter validation imports it cheaply."""

from __future__ import annotations

from typing import Literal, get_args

DecodeMode = Literal["auto", "dynamic", "static", "compiled"]
DECODE_MODES: tuple[str, ...] = get_args(DecodeMode)
