"""Loading and converting stream tensor by tensor: peak memory ~ the model in the target dtype, not the file.

A 62 M-parameter checkpoint in the released fp32 ``pytorch_model.bin`` layout (tiny vision/proposer, an LLM of
8 x 1024-wide layers; 248 MB) is loaded to bf16 and converted in fresh subprocesses that report their peak RSS
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``) and peak anonymous memory (sampled).

Bounds, as ratios to the bf16 weights (124 MB here):
- load, peak RSS growth <= 1.3: the bf16 weights (1.0), plus the one fp32 source tensor mapped at a time and its
  copy in flight (the largest is 8 MB, 0.07), plus allocator and Python slack (measured 1.13 in total).
  Reading the whole file, as ``torch.load(mmap=True)`` does when every tensor is cast, peaks at 3.1: the fp32
  pages (2.0) stay mapped beside the bf16 copy;
- convert, peak RSS growth <= 0.35: one tensor in flight, nothing assembled (the bf16 output is never held);
  measured 0.24, of which most is allocator slack (freed tensor buffers glibc keeps). The old converter built
  the whole model and then serialised it whole: above 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groma_ros.model import GromaForConditionalGeneration, to_release_state_dict
from groma_ros.model.checkpoint import build_empty
from tests.support.checkpoints import tiny_config, write_release_checkpoint

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, threading, time
import torch
torch.set_num_threads(1)
from groma_ros.model import GromaForConditionalGeneration
from groma_ros.model.checkpoint import convert_checkpoint
from groma_ros.model.quantization import parameter_bytes

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

action, src, dst = sys.argv[1:4]
peak_anon = 0
stop = threading.Event()
def sample():
    global peak_anon
    while not stop.is_set():
        peak_anon = max(peak_anon, status()["RssAnon"])
        time.sleep(0.002)
before = status()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := current RSS
thread = threading.Thread(target=sample, daemon=True)
thread.start()
if action == "load":
    model = GromaForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16)
    weights = parameter_bytes(model)
else:
    convert_checkpoint(src, dst, torch.bfloat16, max_shard_bytes=64 << 20)
    weights = 0
stop.set()
thread.join()
after = status()
print("RESULT " + json.dumps({"rss_growth": after["VmHWM"] - before["VmRSS"],
                              "anon_growth": peak_anon - before["RssAnon"], "weights": weights}))
"""


def wide_config():
    llm = tiny_config().llm_cfg.to_dict()
    llm.update(hidden_size=1024, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=8)
    return tiny_config(llm_cfg=llm, region_out_dim=1024)


@pytest.fixture(scope="module")
def released_fp32(tmp_path_factory) -> Path:
    config = wide_config()
    model = build_empty(GromaForConditionalGeneration, config)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.empty(v.shape).normal_(0.0, 0.02, generator=g) for k, v in model.state_dict().items()}
    return write_release_checkpoint(tmp_path_factory.mktemp("wide"), config, to_release_state_dict(state))


def _measure(action: str, src: Path, dst: Path | None = None) -> dict:
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable here: peak RSS cannot be reset")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, action, str(src), str(dst or "")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_fp32_bin_loads_to_bf16_in_about_the_bf16_size(released_fp32):
    bf16_bytes = sum(v.numel() * 2 for v in build_empty(GromaForConditionalGeneration, wide_config())
                     .state_dict().values())
    assert (released_fp32 / "pytorch_model.bin").stat().st_size > 1.95 * bf16_bytes  # fp32 on disk
    got = _measure("load", released_fp32)
    assert got["weights"] == pytest.approx(bf16_bytes, rel=0.01)
    ratio = got["rss_growth"] / bf16_bytes
    print(f"load: peak RSS growth {got['rss_growth'] / 1e6:.0f} MB = {ratio:.2f} x bf16, "
          f"anon {got['anon_growth'] / 1e6:.0f} MB")
    assert 0.95 <= ratio <= 1.3


def test_converter_streams_with_one_tensor_in_flight(released_fp32, tmp_path):
    bf16_bytes = sum(v.numel() * 2 for v in build_empty(GromaForConditionalGeneration, wide_config())
                     .state_dict().values())
    got = _measure("convert", released_fp32, tmp_path / "bf16")
    ratio = got["rss_growth"] / bf16_bytes
    print(f"convert: peak RSS growth {got['rss_growth'] / 1e6:.0f} MB = {ratio:.2f} x bf16")
    assert ratio <= 0.35
    shards = sorted((tmp_path / "bf16").glob("model-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    # the output is complete and exact: every tensor equals the fp32 source rounded to bf16
    from safetensors import safe_open

    from groma_ros.model.checkpoint import ALIAS_RE, release_to_ours

    source = torch.load(released_fp32 / "pytorch_model.bin", weights_only=True)
    expected = {release_to_ours(k): v for k, v in source.items() if not ALIAS_RE.match(k)}
    written = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            written.update({key: f.get_tensor(key) for key in f.keys()})
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(written[key], value.to(torch.bfloat16)), key


OOM_CHILD = r"""
import os, resource, sys
import torch
torch.set_num_threads(1)
from groma_ros.model import CheckpointError, CheckpointMemoryError, GromaForConditionalGeneration
src = sys.argv[1]
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
size = os.path.getsize(os.path.join(src, "pytorch_model.bin"))
limit = vm + size + size // 8  # room to map the file, not to hold its bf16 copy (size / 2)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    GromaForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16)
    print("RESULT loaded")
except CheckpointError as err:
    kind = "memory" if isinstance(err, CheckpointMemoryError) else type(err).__name__
    print("RESULT " + kind + " " + str(err).replace(chr(10), " "))
"""


def test_out_of_memory_is_reported_as_such_not_as_a_refusal(released_fp32):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", OOM_CHILD, str(released_fp32)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    kind, _, message = line.removeprefix("RESULT ").partition(" ")
    assert kind == "memory", line
    assert message.startswith(f"out of memory loading {released_fp32} as bfloat16 on cpu: the weights need about")
    assert "refusing" not in message and "can't allocate memory" in message


def test_a_file_larger_than_memory_maps_copy_on_write(tmp_path):
    """The released 7B .bin (29.5 GB) is larger than a 24 GB machine: its private map must not be charged
    against memory (a plain private writable map of it is refused with ENOMEM), and writes stay private."""
    from groma_ros.model.weight_files import MappedFile

    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal"))
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(2 * total)  # sparse: no disk, no memory
    mapped = MappedFile(path)
    assert mapped.size == 2 * total
    view = mapped.view(total, 4096, torch.float32, (1024,))
    view.add_(1.0)
    assert view.sum() == 1024
    with open(path, "rb") as f:
        f.seek(total)
        assert f.read(16) == bytes(16)  # the file itself is untouched
