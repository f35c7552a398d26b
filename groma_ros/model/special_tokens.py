"""Groma's token texts: the one list that the config, the tokenizer, the prompts and the parser read.

Released order matters: the 14 Groma tokens get ids ``vocab + 0 .. vocab + 13`` and ``<r0> .. <r{n-1}>`` follow
(groma/constants.py DEFAULT_TOKENS, as train.py adds them). Torch-free.
"""

from __future__ import annotations

import re

# short name (as groma/constants.py calls it) -> token text, in release order
GROMA_TOKEN_NAMES: dict[str, str] = {
    "pad": "[PAD]",
    "sep": "<sep>",
    "boi": "<img>",
    "eoi": "</img>",
    "bor": "<roi>",
    "eor": "</roi>",
    "boe": "<p>",
    "eoe": "</p>",
    "image": "<image>",
    "region": "<region>",
    "rbox": "<refer_box>",
    "gbox": "<ground_box>",
    "rfeat": "<refer_feat>",
    "ground": "[grounding]",
}
GROMA_TOKENS: tuple[str, ...] = tuple(GROMA_TOKEN_NAMES.values())
LLAMA_TOKENS: tuple[str, ...] = ("<s>", "</s>", "<unk>")  # already in the LLaMA vocabulary
NUM_REGION_TOKENS = 100  # <r0> .. <r99> in the released model

IMAGE = GROMA_TOKEN_NAMES["image"]
REGION = GROMA_TOKEN_NAMES["region"]
REFER_BOX = GROMA_TOKEN_NAMES["rbox"]
GROUND_BOX = GROMA_TOKEN_NAMES["gbox"]
REFER_FEAT = GROMA_TOKEN_NAMES["rfeat"]
GROUNDING = GROMA_TOKEN_NAMES["ground"]
ROI_OPEN, ROI_CLOSE = GROMA_TOKEN_NAMES["bor"], GROMA_TOKEN_NAMES["eor"]
PHRASE_OPEN, PHRASE_CLOSE = GROMA_TOKEN_NAMES["boe"], GROMA_TOKEN_NAMES["eoe"]


def region_token(k: int) -> str:
    """``<r{k}>``: the text of the k-th region token."""
    return f"<r{k}>"


def region_tokens(n: int = NUM_REGION_TOKENS) -> tuple[str, ...]:
    return tuple(region_token(k) for k in range(n))


_REGION_TOKEN_RE = re.compile(r"<r(0|[1-9]\d*)>")


def parse_region_token(text: str) -> int | None:
    """k for ``<r{k}>`` (no leading zeros), else None."""
    m = _REGION_TOKEN_RE.fullmatch(text)
    return int(m.group(1)) if m else None


# every text that is one token with a meaning (user input must never carry one into the model)
RESERVED_RE = re.compile("|".join(re.escape(t) for t in sorted(GROMA_TOKENS + LLAMA_TOKENS, key=len, reverse=True))
                         + r"|<r\d+>")


def strip_reserved(text: str) -> str:
    """``text`` with every Groma/LLaMA control token removed and whitespace collapsed."""
    return " ".join(RESERVED_RE.sub(" ", text).split())
