#!/usr/bin/env python3
"""Full-size loading: a 7B-shaped released fp32 ``pytorch_model.bin`` loaded to bf16 and converted (not a test).

1. Writes ``GromaConfig()``'s released key set (4.32 names, alias entries sharing their canonical storage) as
   one fp32 ``pytorch_model.bin`` of 29.5 GB without holding it in memory: ``torch.save`` of FakeTensors under
   ``torch.serialization.skip_data`` lays out the zip with empty data regions, then every storage is filled
   in place, 64 MB at a time, with N(0, 0.02) values (fixed seed).
2. Loads it to bf16 in a fresh process (``GromaForConditionalGeneration.from_pretrained``) and converts it
   (``python -m groma_ros.tools.convert SRC DST --dtype bf16``) in another, each sampled every 20 ms from
   here for RSS and anonymous memory (``/proc/PID/status``), and timed.
3. Loads the converted bf16 safetensors too, then deletes everything (``--keep`` keeps it).

Refuses to start without the disk (file + bf16 output + 10 %) and memory (bf16 weights + 2 GB) it needs.

    python benchmarks/load_7b.py --dir /work/load7b          # the 7B (needs ~50 GB disk, ~17 GB RAM)
    python benchmarks/load_7b.py --tiny --dir /tmp/load_tiny  # the same code path on the tiny config
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHUNK = 16 << 20  # elements per fill chunk (64 MB of fp32)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_released_fp32(directory: Path, config, seed: int = 0) -> Path:
    """config.json + a released-layout fp32 pytorch_model.bin, written storage by storage."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from groma_ros.model import GromaForConditionalGeneration, to_release_state_dict
    from groma_ros.model.checkpoint import build_empty

    directory.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    shapes = {k: v.shape for k, v in build_empty(GromaForConditionalGeneration, config).state_dict().items()}
    with FakeTensorMode():
        fake = {k: torch.empty(shape, dtype=torch.float32) for k, shape in shapes.items()}
    path = directory / "pytorch_model.bin"
    with torch.serialization.skip_data(materialize_fake_tensors=True):
        torch.save(to_release_state_dict(fake), path)
    layout = torch.load(path, map_location="meta", weights_only=True)
    regions = {}
    for tensor in layout.values():
        storage = tensor.untyped_storage()
        regions[int(storage._checkpoint_offset)] = storage.nbytes()
    g = torch.Generator().manual_seed(seed)
    written = 0
    with open(path, "r+b") as f:
        for offset, nbytes in sorted(regions.items()):
            for start in range(0, nbytes // 4, CHUNK):
                n = min(CHUNK, nbytes // 4 - start)
                values = torch.empty(n).normal_(0.0, 0.02, generator=g)
                os.pwrite(f.fileno(), values.numpy().data, offset + start * 4)
                written += n * 4
    log(f"wrote {path}: {path.stat().st_size / 1e9:.2f} GB, {len(layout)} keys, {len(regions)} storages")
    return path


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def run_measured(code: str, args: list[str]) -> dict:
    """Run ``python -c code args`` and sample its memory every 20 ms; the child prints a RESULT json line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    start: dict[str, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                now = _status(proc.pid)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                break
            start.setdefault("RssAnon", now.get("RssAnon", 0))
            for key in peak:
                peak[key] = max(peak[key], now.get(key, 0))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {err[-3000:]}")
    result = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))
    return {**result, "wall_s": wall, "peak_rss_bytes": max(peak["VmHWM"], result.get("vm_hwm", 0)),
            "peak_anon_bytes": peak["RssAnon"], "peak_file_bytes": peak["RssFile"]}


LOAD = r"""
import json, sys, time
import torch
from groma_ros.model import GromaForConditionalGeneration
from groma_ros.model.quantization import parameter_bytes
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
base = status("VmRSS"), status("RssAnon")
t0 = time.perf_counter()
model = GromaForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
seconds = time.perf_counter() - t0
print("RESULT " + json.dumps({"seconds": seconds, "weights_bytes": parameter_bytes(model), "base_rss": base[0],
                              "base_anon": base[1], "vm_hwm": status("VmHWM"), "dtype": str(model.dtype)}))
"""

CONVERT = r"""
import json, sys, time
import groma_ros.model.checkpoint  # noqa: F401  (imports before the baseline, as in LOAD)
from groma_ros.tools.convert import main
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
base = status("VmRSS"), status("RssAnon")
t0 = time.perf_counter()
code = main([sys.argv[1], sys.argv[2], "--dtype", "bf16"])
print("RESULT " + json.dumps({"seconds": time.perf_counter() - t0, "exit": code, "base_rss": base[0],
                              "base_anon": base[1], "vm_hwm": status("VmHWM")}))
"""


def check_resources(directory: Path, file_bytes: int, bf16_bytes: int, force: bool) -> dict:
    free_disk = shutil.disk_usage(directory if directory.exists() else directory.parent).free
    avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemAvailable"))
    need_disk = int((file_bytes + bf16_bytes) * 1.1)
    need_mem = bf16_bytes + (2 << 30)
    problems = []
    if free_disk < need_disk:
        problems.append(f"disk: {free_disk / 1e9:.1f} GB free, {need_disk / 1e9:.1f} GB needed")
    if avail < need_mem:
        problems.append(f"memory: {avail / 1e9:.1f} GB available, {need_mem / 1e9:.1f} GB needed")
    if problems and not force:
        raise SystemExit("not starting: " + "; ".join(problems) + " (--force to try anyway)")
    return {"free_disk_bytes": free_disk, "mem_available_bytes": avail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--dir", type=Path, required=True, help="work directory (created; emptied afterwards)")
    ap.add_argument("--tiny", action="store_true", help="the tiny test config instead of the 7B")
    ap.add_argument("--keep", action="store_true", help="keep the written and converted checkpoints")
    ap.add_argument("--force", action="store_true", help="start even if disk or memory look short")
    args = ap.parse_args(argv)
    from groma_ros.model import GromaConfig, GromaForConditionalGeneration
    from groma_ros.model.checkpoint import build_empty
    from tests.support.checkpoints import tiny_config

    config = tiny_config() if args.tiny else GromaConfig()
    state = build_empty(GromaForConditionalGeneration, config).state_dict()
    numel = sum(v.numel() for v in state.values())
    src, dst = args.dir / "released_fp32", args.dir / "converted_bf16"
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    report = {"config": "tiny_config" if args.tiny else "GromaConfig() (groma-7b layout)", "params": numel,
              "fp32_bytes": numel * 4, "bf16_bytes": numel * 2, "torch": torch.__version__,
              "machine": f"{os.cpu_count()} CPUs, {ram_gib:.1f} GiB RAM"}
    args.dir.mkdir(parents=True, exist_ok=True)
    report["resources_at_start"] = check_resources(args.dir, numel * 4, numel * 2, args.force)
    try:
        t0 = time.perf_counter()
        path = write_released_fp32(src, config)
        report["write"] = {"seconds": time.perf_counter() - t0, "file_bytes": path.stat().st_size}
        log("loading to bf16 ...")
        report["load_bf16"] = run_measured(LOAD, [str(src)])
        load = report["load_bf16"]
        log(f"load: {load['seconds']:.1f} s, peak anon {load['peak_anon_bytes'] / 1e9:.2f} GB, "
            f"peak RSS {load['peak_rss_bytes'] / 1e9:.2f} GB")
        log("converting to bf16 safetensors ...")
        report["convert_bf16"] = run_measured(CONVERT, [str(src), str(dst)])
        report["convert_bf16"]["output_bytes"] = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
        log(f"convert: {report['convert_bf16']['seconds']:.1f} s, peak anon "
            f"{report['convert_bf16']['peak_anon_bytes'] / 1e9:.2f} GB")
        report["load_converted_bf16"] = run_measured(LOAD, [str(dst)])
        for key in ("load_bf16", "convert_bf16", "load_converted_bf16"):
            r = report[key]
            r["anon_growth_over_bf16"] = (r["peak_anon_bytes"] - r["base_anon"]) / (numel * 2)
            r["rss_growth_over_bf16"] = (r["peak_rss_bytes"] - r["base_rss"]) / (numel * 2)
    finally:
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(dst, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
