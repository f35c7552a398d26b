"""Export a training checkpoint in the released format (config.json + fp16 safetensors + tokenizer).

Why: a run exports its best *quick-eval* state on its own; a later state (e.g. the last one, chosen on a larger val
evaluation) needs this step to become a model directory. Config and tokenizer come from the run's own export.

    python -m groma_ros.training.export_checkpoint runs/<run>/stage2/ckpt.pt --like runs/<run>/export \
        --out runs/<run>/export_final
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.model.tokenization_groma import GromaTokenizer

from . import common
from .stage2 import export_model


def export_checkpoint(checkpoint: Path, like: Path, out: Path) -> int | None:
    """Write ``checkpoint`` (a stage checkpoint with ``model``, or a bare state dict) to ``out``; returns its step."""
    state = common.require_checkpoint(checkpoint, "checkpoint")
    model = GromaForConditionalGeneration.from_pretrained(like, dtype=torch.float32)
    model.load_state_dict(state["model"] if "model" in state else state)
    export_model(model, GromaTokenizer.from_pretrained(like), out)
    return state.get("step")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="e.g. runs/x/stage2/ckpt.pt or runs/x/stage2/best.pt")
    p.add_argument("--like", type=Path, required=True, help="an exported model dir of the same run (config, tokenizer)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    step = export_checkpoint(args.checkpoint, args.like, args.out)
    print(f"exported {args.checkpoint} (step {step}) to {args.out}")


if __name__ == "__main__":
    main()
