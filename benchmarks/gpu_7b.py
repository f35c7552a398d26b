#!/usr/bin/env python3
"""The 7B-shaped Groma on a GPU with random weights: REC first vs follow-up, decode vs the HBM bound, int4, memory.

No checkpoint download: the released layout (``GromaConfig()``, 7.38 B parameters) is built on the meta
device, materialised straight on the GPU in bf16 (no 30 GB fp32 detour) and filled with random weights.
Random weights give the real shapes and therefore the real cost; ``lm_head``'s ``</s>`` row is zeroed so
decoding always runs to ``max_new_tokens``.

Tokenizer: a SentencePiece BPE trained on a few prompt sentences, padded with user-defined pieces to
exactly LLaMA's 32,000 ids (+ the 114 Groma tokens), so prompt lengths are close to, not equal to, LLaMA's.

bf16 is measured with each of the engine's decode modes (``dynamic``, ``static``, ``compiled``; see
``groma_ros.engine.decoding``) on the same model; with ``compiled`` on CUDA the perception graphs are compiled
too (``GromaForConditionalGeneration.compile_perception``: image graph, region tokens, prefix prefill). Then the
same weights quantized to int4 through torchao (tinygemm, 4-bit packed) with ``--int4-decode`` (default
``compiled``). A REC answer is 4 tokens (``<roi><rN></roi></s>``; ``--rec-tokens``). The KV buffer of the
static decoders is ``--kv-tokens`` long (the LLM's 4096 would add 1.6 GB for nothing: prompts are ~630 tokens).
The prefix prefill is also timed directly, eager vs compiled, on the first frame's prefix embeddings.

Targets (one H200 or H100): first REC <= 50 ms, follow-up <= 20 ms, bf16 decode <= 1.5x (LLM weight
bytes / HBM bandwidth), int4 decode <= 2 ms/token, peak memory bf16 <= 16 GB, int4 weights <= 6 GB.
One command, prints JSON on stdout (progress on stderr), < 8 minutes (``--budget-s`` skips what no longer fits):

    python benchmarks/gpu_7b.py                 # cuda, bf16 (three decode modes) + int4
    python benchmarks/gpu_7b.py --tiny          # same code path, small config, CPU (what the test runs)
    python benchmarks/gpu_7b.py --estimate      # only the int4 memory estimate of the 7B (no GPU needed)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# HBM bandwidth (GB/s) by device name, for the decode bound; --hbm-gbps overrides
HBM_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0,
            "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0}
QUERIES = ("where is the red mug?", "find the blue cup", "locate the white plate", "where is the spoon?",
           "where is the small yellow triangle?", "find the green bottle")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_tokenizer(vocab: int, directory: Path):
    """SentencePiece with exactly ``vocab`` ids: a small BPE plus user-defined filler pieces."""
    from groma_ros.model.tokenization_groma import GromaTokenizer, train_sentencepiece
    from tests.support.models import _CORPUS

    base = 400 if vocab > 1000 else vocab
    fillers = [f"<unused{i}>" for i in range(vocab - base)]
    for _ in range(3):
        path = train_sentencepiece(_CORPUS * 20, vocab, directory / "tokenizer.model", user_defined_symbols=fillers)
        tok = GromaTokenizer.from_model_file(path)
        if tok.vocab_size == vocab:
            return tok
        fillers += [f"<unused{len(fillers) + i}>" for i in range(vocab - tok.vocab_size)]
    raise RuntimeError(f"could not build a {vocab}-piece tokenizer (got {tok.vocab_size})")


@torch.no_grad()
def build_model(config, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Meta → empty on ``device`` in ``dtype`` → random init in place (never a full-size fp32 copy)."""
    from groma_ros.model import GromaForConditionalGeneration
    from groma_ros.model.checkpoint import _materialize_buffers, build_empty

    model = build_empty(GromaForConditionalGeneration, config).to(dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.normal_(0.0, (0.5 if "embed" in name or "position" in name else 1.0) / max(1, fan_in) ** 0.5,
                      generator=gen)
        elif name.endswith("bias"):
            p.normal_(0.0, 0.02, generator=gen)
        else:  # norms, layer scales, level embeddings
            p.fill_(1.0)
    _materialize_buffers(model, device)
    model.llm.lm_head.weight[2].zero_()  # LLaMA </s>: never the argmax, so decoding runs to max_new_tokens
    return model.eval().requires_grad_(False)


def llm_weight_bytes(model) -> int:
    """Bytes read per decoded token: the LLaMA layers + final norm + lm_head (+ extra head), quantized ones as
    stored."""
    from groma_ros.model.quantization import parameter_bytes

    return sum(parameter_bytes(m) for m in (model.llm.model.layers, model.llm.model.norm, model.llm.lm_head,
                                            model.extra_lm_head))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scene(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 120)), int(rng.integers(0, height - 120))
        img[y : y + 100, x : x + 110] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def measure(engine, device: torch.device, reps: int, decode_tokens: int, rec_tokens: int = 4) -> dict:
    """First REC query on new frames vs follow-ups on one frame, plus a long decode for ms/token."""
    from groma_ros.engine.types import Task

    def ask(frame: str, query: str, image: np.ndarray, n: int = rec_tokens, task: Task = Task.REFER):
        sync(device)
        t0 = time.perf_counter()
        answer = engine.ask(image, query, task=task, frame_id=frame, max_new_tokens=n)
        sync(device)
        return answer, (time.perf_counter() - t0) * 1000.0

    ask("warm", QUERIES[0], scene(seed=99))  # CUDA context, kernels, allocator
    ask("warm", QUERIES[1], scene(seed=99))
    firsts, follows = [], []
    for r in range(reps):
        image = scene(seed=r)
        firsts.append(ask(f"frame{r}", QUERIES[0], image))
        for q in QUERIES[1:]:
            follows.append(ask(f"frame{r}", q, image))
    stamps: list[float] = []

    def stamp() -> bool:  # polled once before every token: the gaps are the decode steps
        stamps.append(time.perf_counter())
        return False

    sync(device)
    long_answer = engine.ask(scene(seed=0), "describe the image in detail", task=Task.VQA, frame_id="frame0",
                             max_new_tokens=decode_tokens, should_cancel=stamp)
    sync(device)
    gaps = [(b - a) * 1000.0 for a, b in zip(stamps[1:], stamps[2:], strict=False)]

    def med(rows, key):
        return statistics.median(getattr(a.timings, key) for a, _ in rows)

    steps = max(1, long_answer.completion_tokens - 1)
    return {
        "first_rec_ms": statistics.median(ms for _, ms in firsts),
        "followup_rec_ms": statistics.median(ms for _, ms in follows),
        "first_over_followup": statistics.median(ms for _, ms in firsts) / statistics.median(ms for _, ms in follows),
        "stages_first_ms": {k: med(firsts, k) for k in ("preprocess_ms", "vision_ms", "proposer_ms", "region_ms",
                                                          "prefix_prefill_ms", "query_prefill_ms", "decode_ms")},
        "vision_proposer_region_ms": med(firsts, "vision_ms") + med(firsts, "proposer_ms") + med(firsts, "region_ms"),
        "prefix_prefill_ms": med(firsts, "prefix_prefill_ms"),
        "followup_query_prefill_ms": med(follows, "query_prefill_ms"),
        "rec_completion_tokens": statistics.median(a.completion_tokens for a, _ in firsts + follows),
        "prompt_tokens": firsts[0][0].prompt_tokens,
        "regions": len(firsts[0][0].regions),
        "decode_ms_per_token": long_answer.timings.decode_ms / steps,
        "decode_tokens": long_answer.completion_tokens,
        "decode_step_ms": {"median": statistics.median(gaps) if gaps else None, "first": gaps[:3], "last": gaps[-3:],
                           "max": max(gaps, default=None)},
    }


def int4_memory_estimate(config, kv_tokens: int, group: int = 128) -> dict:
    """Bytes of the 7B with int4 LLM linears (tinygemm layout: 4 bits per weight + a bf16 scale and zero point
    per group of ``group`` inputs), everything else in bf16, plus the static KV buffer. No GPU needed."""
    from groma_ros.model import GromaForConditionalGeneration
    from groma_ros.model.checkpoint import build_empty
    from groma_ros.model.quantization import quantizable_weights

    model = build_empty(GromaForConditionalGeneration, config)
    state = model.state_dict()
    quantized = set(quantizable_weights(model))
    linear = sum(state[k].numel() for k in quantized)
    rest = sum(v.numel() for k, v in state.items() if k not in quantized)
    if config.llm_cfg.tie_word_embeddings:
        rest -= state["llm.lm_head.weight"].numel()
    llm = config.llm_cfg
    head_dim = getattr(llm, "head_dim", None) or llm.hidden_size // llm.num_attention_heads
    out = {
        "int4_linear_bytes": linear // 2 + linear // group * 2 * 2,
        "rest_bf16_bytes": rest * 2,
        "kv_buffer_bytes": 2 * llm.num_hidden_layers * kv_tokens * llm.num_key_value_heads * head_dim * 2,
        "kv_tokens": kv_tokens,
    }
    out["weights_bytes"] = out["int4_linear_bytes"] + out["rest_bf16_bytes"]
    out["weights_plus_kv_bytes"] = out["weights_bytes"] + out["kv_buffer_bytes"]
    out["weights_gb"] = out["weights_bytes"] / 1e9
    return out


def time_prefix_prefill(engine, device: torch.device, reps: int = 5) -> dict:
    """The first frame's prefix (image + region tokens) prefilled eagerly and through the compiled graph."""
    model = engine.model
    frame = next(iter(engine.frames.keys()), None)
    perception = engine.frames.get(frame) if frame is not None else None
    if perception is None:
        return {}
    state = perception.base
    embeds = model.build_inputs_embeds(state.prefix_ids, perception.vision.image_tokens[0], state.region_tokens)
    compiled = model.compiled_perception

    def run() -> float:
        sync(device)
        t0 = time.perf_counter()
        model.prefill_prefix(embeds)
        sync(device)
        return (time.perf_counter() - t0) * 1000.0

    out = {"prefix_tokens": int(embeds.shape[1])}
    try:
        model.compiled_perception = None
        out["eager_ms"] = statistics.median(run() for _ in range(reps))
        if compiled is not None:
            model.compiled_perception = compiled
            run()  # compiles this bucket if the engine has not used it
            out["compiled_ms"] = statistics.median(run() for _ in range(reps))
    finally:
        model.compiled_perception = compiled
    return out


def run_variant(config, tokenizer, device: torch.device, dtype: torch.dtype, quant: str | None, modes: list[str],
                args, deadline: float) -> list[dict]:
    """Build the model once (quantized with ``quant``), then measure it with each decode mode (one engine each)."""
    from groma_ros.engine import GromaEngine
    from groma_ros.model.quantization import parameter_bytes, quantize_llm_

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model = build_model(config, device, dtype)
    if quant:
        quantize_llm_(model, quant)
    build_s = time.perf_counter() - t0
    sync(device)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = llm_weight_bytes(model)
    name = quant or str(dtype).removeprefix("torch.")
    log(f"[{name}] built {params / 1e9:.2f} B params ({parameter_bytes(model) / 1e9:.2f} GB) in {build_s:.1f} s")
    results = []
    for mode in modes:
        if time.perf_counter() > deadline:
            results.append({"variant": name, "decode": mode, "skipped": "time budget (--budget-s) spent"})
            continue
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        compile_perception = mode == "compiled" and device.type == "cuda" and not args.no_compile_perception
        if compile_perception:
            model.compile_perception(warm_up=False)  # graphs compile on the warm-up queries below
        engine = GromaEngine(model, tokenizer, model_id="groma-7b-random" if not args.tiny else "groma-tiny-random",
                             cache_frames=2, decode=mode)
        try:
            out = {"variant": name, "decode": mode, "params": params, "build_s": build_s,
                   "weights_bytes": parameter_bytes(model), "llm_weight_bytes": weight_bytes,
                   "perception_compiled": compile_perception,
                   **measure(engine, device, args.reps, args.decode_tokens, args.rec_tokens)}
            out["prefix_prefill_direct"] = time_prefix_prefill(engine, device)
        except Exception as err:  # one mode failing (e.g. compilation) must not cost the others' numbers
            log(f"[{name} {mode}] failed: {type(err).__name__}: {err}")
            results.append({"variant": name, "decode": mode, "error": f"{type(err).__name__}: {err}"[:2000]})
            continue
        finally:
            engine.frames.clear()
            del engine
            model.uncompile_perception()
            gc.collect()
        out["measure_s"] = time.perf_counter() - t0
        log(f"[{name} {mode}] first {out['first_rec_ms']:.1f} ms, follow-up {out['followup_rec_ms']:.1f} ms, "
            f"decode {out['decode_ms_per_token']:.2f} ms/token ({out['measure_s']:.0f} s)")
        if device.type == "cuda":
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            gpu = torch.cuda.get_device_name(device)
            gbps = args.hbm_gbps or next((v for k, v in HBM_GBPS.items() if k in gpu), None)
            if gbps:
                bound = weight_bytes / (gbps * 1e9) * 1000.0
                out.update(hbm_gbps=gbps, decode_bound_ms=bound,
                           decode_over_bound=out["decode_ms_per_token"] / bound)
        else:
            import resource

            out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results.append(out)
    del model
    gc.collect()
    return results


def targets(result: dict) -> dict:
    """Issue 21's targets read off the report (None where the number is missing)."""
    def best(key: str, rows: list[dict]):
        values = [v[key] for v in rows if key in v]
        return min(values) if values else None

    bf16 = [v for v in result["variants"] if "error" not in v and "skipped" not in v]
    compiled = [v for v in bf16 if v["decode"] == "compiled"] or bf16
    int4 = [v for v in result.get("int4", []) if "error" not in v and "skipped" not in v]
    first, follow = best("first_rec_ms", compiled), best("followup_rec_ms", compiled)
    over, peak = best("decode_over_bound", compiled), best("peak_memory_gb", bf16)
    int4_decode = best("decode_ms_per_token", int4)
    estimate = result.get("int4_memory_estimate", {}).get("weights_gb")

    def check(value, limit):
        return None if value is None else value <= limit

    return {"first_rec_le_50ms": check(first, 50), "followup_rec_le_20ms": check(follow, 20),
            "bf16_decode_le_1.5x_bound": check(over, 1.5), "int4_decode_le_2ms": check(int4_decode, 2.0),
            "bf16_peak_memory_le_16gb": check(peak, 16.0), "int4_weights_le_6gb": check(estimate, 6.0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--tiny", action="store_true", help="small config on CPU: proves the code path anywhere")
    ap.add_argument("--estimate", action="store_true", help="print the 7B int4 memory estimate and exit")
    ap.add_argument("--device", help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--reps", type=int, default=5, help="frames for the first-query median (5 follow-ups each)")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rec-tokens", type=int, default=4,
                    help="tokens per REC answer: <roi><rN></roi></s> is 4 (the original evaluates REC with "
                         "max_new_tokens=3); random weights never stop early, so every answer has exactly this many")
    ap.add_argument("--decode", default="dynamic,static,compiled",
                    help="bf16 decode modes to measure, comma-separated (see groma_ros.engine.decoding)")
    ap.add_argument("--int4-decode", default="compiled", help="decode modes for int4 (empty: skip int4)")
    ap.add_argument("--kv-tokens", type=int, default=1024,
                    help="static KV buffer length (sets the LLM's max_position_embeddings for this run)")
    ap.add_argument("--no-compile-perception", action="store_true",
                    help="keep perception eager in the compiled mode (to separate the decode's share)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip variants that start after this many seconds")
    ap.add_argument("--hbm-gbps", type=float, help="memory bandwidth for the decode bound (default: by GPU name)")
    args = ap.parse_args(argv)
    from groma_ros.model import GromaConfig
    from tests.support.checkpoints import tiny_config

    if args.estimate:
        print(json.dumps({"int4_memory_estimate": int4_memory_estimate(GromaConfig(), args.kv_tokens)}, indent=2))
        return 0
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device; run on a GPU machine or use --tiny"}))
        return 2
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    if args.tiny:
        llm = tiny_config().llm_cfg.to_dict()
        llm["vocab_size"] = 320
        config = tiny_config(llm_cfg=llm)
        args.reps, args.decode_tokens = min(args.reps, 2), min(args.decode_tokens, 16)
        int4_modes = ["dynamic"] if args.int4_decode else []  # CPU int4: the code path, not its speed
    else:
        config = GromaConfig()
        int4_modes = [m for m in args.int4_decode.split(",") if m]
    config.llm_cfg.max_position_embeddings = min(config.llm_cfg.max_position_embeddings, args.kv_tokens)
    with tempfile.TemporaryDirectory(prefix="groma_gpu7b_") as tmp:
        t0 = time.perf_counter()
        tokenizer = build_tokenizer(config.llm_cfg.vocab_size, Path(tmp))
        tok_s = time.perf_counter() - t0
    log(f"tokenizer: {tokenizer.vocab_size}+{len(tokenizer) - tokenizer.vocab_size} ids in {tok_s:.1f} s")
    dtype = getattr(torch, args.dtype)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": "tiny_config (CPU smoke run)" if args.tiny else "GromaConfig() = released groma-7b layout",
        "tokenizer": f"SentencePiece BPE on prompt sentences, padded to {tokenizer.vocab_size} pieces (stand-in "
                     "for LLaMA's; prompt lengths differ slightly)",
        "weights": "random, built on meta then materialised on the device (lm_head </s> row zeroed)",
        "kv_tokens": config.llm_cfg.max_position_embeddings,
        "torch": torch.__version__, "variants": [], "int4": [],
        "int4_memory_estimate": int4_memory_estimate(GromaConfig(), args.kv_tokens),
    }
    result["variants"] = run_variant(config, tokenizer, device, dtype, None, args.decode.split(","), args, deadline)
    if int4_modes:
        result["int4"] = run_variant(config, tokenizer, device, torch.bfloat16, "int4", int4_modes, args, deadline)
    if not args.tiny:
        result["targets"] = targets(result)
    result["total_s"] = time.perf_counter() - t_start
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
