"""Convert a Groma checkpoint directory (released ``pytorch_model.bin`` or ours) to safetensors.

``python -m groma_ros.tools.convert SRC DST --dtype bf16`` checks every key as the model's loader does, then
casts and writes one tensor at a time (the source is mapped, never read whole), so converting the 29.5 GB
fp32 7B needs about one tensor of memory. Writes ``DST/config.json`` + ``model*.safetensors`` in our naming;
tokenizer / generation / preprocessor files are copied along.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from groma_ros.model.precision import ALIASES, PRECISIONS, torch_dtype

COPY_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
)


def convert(src: Path, dst: Path, dtype: str = "bf16", max_shard_gb: float = 5.0) -> Path:
    from groma_ros.model.checkpoint import convert_checkpoint

    if Path(dst).resolve() == Path(src).resolve():
        raise ValueError("destination must differ from the source directory")
    convert_checkpoint(Path(src), Path(dst), torch_dtype(dtype), max_shard_bytes=int(max_shard_gb * (1 << 30)))
    for name in COPY_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
    return Path(dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--dtype", choices=(*PRECISIONS, *ALIASES), default="bf16")
    parser.add_argument("--max-shard-gb", type=float, default=5.0)
    args = parser.parse_args(argv)
    from groma_ros.model import CheckpointError

    try:
        out = convert(args.src, args.dst, args.dtype, args.max_shard_gb)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
