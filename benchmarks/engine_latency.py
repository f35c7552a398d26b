#!/usr/bin/env python3
"""First query on a frame vs follow-up queries on the same frame, per stage (not a test).

The first query pays for perception (preprocess, vision encoder, proposer, region encoder) and the prompt
prefix prefill; a follow-up only prefills its own suffix on the cached prefix and decodes. All queries are
REFER with the same ``--max-new-tokens`` (a short budget, as a REC answer is ~4 tokens; the tiny random
model never emits ``</s>``, so it decodes exactly that many); the generated counts are printed so the ratio
can be read against answer lengths. Goal on CPU: follow-up >= 5x faster.

Region encoder: both implementations (``GromaRegionEncoder.implementation``: ``fast``, the default, and
``reference``, the direct transcription) run in the same process on the same frames, alternating frame by
frame, so their ratio comes from one run; the stage table is the fast one's. Goal on CPU: region >= 2x faster.

    python benchmarks/engine_latency.py                       # embedded model, else a tiny random one
    python benchmarks/engine_latency.py --model DIR --reps 10 --plot latency.png
    python benchmarks/engine_latency.py --region fast         # fast region encoder only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("preprocess_ms", "vision_ms", "proposer_ms", "region_ms", "prefix_prefill_ms", "query_prefill_ms",
          "decode_ms")
FIRST_QUERY = "where is the red mug?"
FOLLOW_UPS = ("and the spoon?", "find the blue cup", "where is the small yellow triangle?",
              "locate the white plate")
def scene(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // width, yy * 255 // height, (xx ^ yy) & 255], -1).astype(np.uint8)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        img[y0 : y0 + height // 5, x0 : x0 + width // 5] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def median_timings(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = (*STAGES, "total_ms")
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def run(args: argparse.Namespace) -> int:
    import torch

    from groma_ros.engine import GromaEngine
    from groma_ros.engine.loading import DEFAULT_MODEL_DIR, DEFAULT_MODEL_FILES

    tmp = None
    model = args.model
    if model is None and all((DEFAULT_MODEL_DIR / f).is_file() for f in DEFAULT_MODEL_FILES):
        model = str(DEFAULT_MODEL_DIR)
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="groma_bench_")
        from tests.support.models import make_tiny_model_dir

        # endless: </s> never wins, so every query decodes exactly --max-new-tokens tokens
        model = str(make_tiny_model_dir(Path(tmp.name) / "tiny_random", endless=True))
        label = "tiny random model"
    else:
        label = Path(model).name
    engine = GromaEngine.from_pretrained(model, device=args.device, dtype=args.dtype, num_threads=args.threads,
                                         cache_frames=2)
    cfg = engine.model.config
    print(f"model: {label} ({sum(p.numel() for p in engine.model.parameters()) / 1e6:.1f} M params, "
          f"image {cfg.image_size}, LLM hidden {cfg.llm_cfg.hidden_size} x {cfg.llm_cfg.num_hidden_layers} layers)")
    print(f"device: {args.device} {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"image {args.width}x{args.height}, {args.reps} reps x (1 first + {args.followups} follow-ups), "
          f"max_new_tokens {args.max_new_tokens}")

    def ask(image, query, frame):
        return engine.ask(image, query, task="refer", frame_id=frame, max_new_tokens=args.max_new_tokens)

    encoders = {"fast": engine.model.region_encoder}
    if args.region in ("both", "reference"):
        encoders["reference"] = copy.deepcopy(engine.model.region_encoder)
        encoders["reference"].set_implementation("reference")
    if args.region == "reference":
        del encoders["fast"]
    first_rows: dict[str, list[dict[str, float]]] = {name: [] for name in encoders}
    follow_rows: dict[str, list[dict[str, float]]] = {name: [] for name in encoders}
    prefix_len = 0
    tokens: list[int] = []
    follow_tokens: list[int] = []
    for rep in range(args.reps + args.warmup):
        image = scene(args.width, args.height, seed=rep)
        for name, encoder in encoders.items():  # alternate per frame: the same load for both
            engine.model.region_encoder = encoder
            frame = ("bench", name, rep)
            t0 = time.perf_counter()
            first = ask(image, FIRST_QUERY, frame)
            wall = (time.perf_counter() - t0) * 1000
            assert not first.cached_prefix
            rows = []
            for i in range(args.followups):
                rows.append(ask(image, FOLLOW_UPS[i % len(FOLLOW_UPS)], frame))
            assert all(a.cached_prefix for a in rows)
            if rep < args.warmup:
                continue
            perception = engine.frames.get(frame)
            split = {"fuse_ms": perception.region_ms, "tokens_ms": perception.base.region_ms}
            first_rows[name].append({**vars(first.timings), "wall_ms": wall, **split})
            follow_rows[name].extend(vars(a.timings) for a in rows)
            prefix_len = first.prompt_tokens
            tokens.append(first.completion_tokens)
            follow_tokens.extend(a.completion_tokens for a in rows)
    engine.model.region_encoder = next(iter(encoders.values()))

    shown = next(iter(encoders))
    f, u = median_timings(first_rows[shown]), median_timings(follow_rows[shown])
    print(f"\nprompt ~{prefix_len} tokens; generated tokens per query (median): first "
          f"{statistics.median(tokens):g}, follow-up {statistics.median(follow_tokens):g}; medians in ms "
          f"({shown} region encoder):")
    print(f"{'stage':<20}{'first':>10}{'follow-up':>12}")
    for k in (*STAGES, "total_ms"):
        print(f"{k.removesuffix('_ms'):<20}{f[k]:>10.2f}{u[k]:>12.2f}")
    ratio = f["total_ms"] / max(u["total_ms"], 1e-9)
    print(f"\nfollow-up speed-up: {ratio:.1f}x (first {f['total_ms']:.1f} ms / follow-up {u['total_ms']:.1f} ms); "
          f"goal >= 5x: {'met' if ratio >= 5 else 'NOT met'}")
    if len(encoders) == 2:
        ref = median_timings(first_rows["reference"])
        speedup = ref["region_ms"] / max(f["region_ms"], 1e-9)

        def part(name: str, key: str) -> float:
            return statistics.median(r[key] for r in first_rows[name])

        print(f"region encoder, first query (median of {args.reps} frames each, alternating): reference "
              f"{ref['region_ms']:.2f} ms, fast {f['region_ms']:.2f} ms -> {speedup:.2f}x; goal >= 2x: "
              f"{'met' if speedup >= 2 else 'NOT met'} (map fusion {part('reference', 'fuse_ms'):.2f} -> "
              f"{part('fast', 'fuse_ms'):.2f} ms, region tokens {part('reference', 'tokens_ms'):.2f} -> "
              f"{part('fast', 'tokens_ms'):.2f} ms); first query total {ref['total_ms']:.1f} -> {f['total_ms']:.1f} ms")
    if args.plot:
        plot(args.plot, f, u, f"{label} on {args.device} ({args.dtype}), medians of {args.reps} reps", ratio)
        print(f"plot written to {args.plot}")
    engine.release()
    if tmp is not None:
        tmp.cleanup()
    return 0


def plot(path: str, first: dict[str, float], follow: dict[str, float], title: str, ratio: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = plt.get_cmap("tab10").colors
    for row, data in enumerate((follow, first)):
        left = 0.0
        for i, stage in enumerate(STAGES):
            v = data[stage]
            ax.barh(row, v, left=left, color=colors[i], label=stage.removesuffix("_ms") if row == 0 else None)
            left += v
        ax.text(left, row, f" {data['total_ms']:.1f} ms", va="center")
    ax.set_yticks([0, 1], ["follow-up", "first query"])
    ax.set_xlabel("milliseconds (median)")
    ax.set_title(f"{title}\nfollow-up {ratio:.1f}x faster", fontsize=9)
    ax.set_xlim(0, first["total_ms"] * 1.25)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (default: embedded model if present, else a tiny random one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--reps", type=int, default=7, help="frames measured (median over them)")
    p.add_argument("--warmup", type=int, default=2, help="frames run first and not measured")
    p.add_argument("--followups", type=int, default=3, help="follow-up queries per frame")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--plot", help="write a PNG bar plot of the stages here")
    p.add_argument("--region", choices=("both", "fast", "reference"), default="both",
                   help="region encoder implementation(s) to run; both = side by side, alternating per frame")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
