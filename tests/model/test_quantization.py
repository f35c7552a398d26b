"""Weight-only int8 / int4 LLM linears through torchao, on the CPU, against bf16 on the parity fixture's prompts.

The fixture model (tests/data/groma_parity: one 4096-wide LLaMA layer, random weights with sharpened q/k) is the
hardest case for quantization: nothing in it was trained to tolerate noise. Findings that set the bounds:
- int8 keeps bf16's greedy tokens on all three prompts (10 tokens each); step logits move by <= 0.08 (logit
  scale ~4), bound 0.2;
- int4 (groups of 128, scale + zero point) rounds each weight to 16 levels, a 10 % error on every linear's
  output (int8: 0.9 %). On this model that moves the first-step logits by up to 0.70 (scale ~4) and changes the
  greedy tokens after 0-3 equal ones, so int4 is held to (a) exactly the computation its rounding implies: the
  same tokens and logits (<= 0.05) as bf16 with every quantized weight replaced by its dequantized value, and
  (b) a first-step logit shift <= 1.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from groma_ros.model import GromaForConditionalGeneration
from groma_ros.model.quantization import is_quantized, parameter_bytes, quantizable_weights, quantize_weight
from tests.support.checkpoints import PARITY_FIXTURE

torch.set_num_threads(2)
FIXTURE = PARITY_FIXTURE


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    if not (FIXTURE / "expected.npz").is_file():
        pytest.fail(f"parity fixture missing: {FIXTURE} (set GROMA_PARITY_DIR to the groma_parity folder)")
    from tests.support.checkpoints import fixture_state_dict, write_release_checkpoint

    return write_release_checkpoint(tmp_path_factory.mktemp("fixture"),
                                    json.loads((FIXTURE / "config.json").read_text()),
                                    fixture_state_dict(FIXTURE, verify=False))


@pytest.fixture(scope="module")
def pixels():
    from groma_ros.engine.preprocess import preprocess, read_rgb

    return preprocess(read_rgb(FIXTURE / "image.png"), 448).to(torch.bfloat16)


def _greedy(model, pixels, vision, steps: int = 10) -> list[tuple[list[int], torch.Tensor]]:
    """Greedy tokens for each fixture prompt on one perception (it is not quantized: the same for all)."""
    prompts = json.loads((FIXTURE / "prompts.json").read_text())["prompts"]
    out = []
    for prompt in prompts:
        user = prompt.get("refer_boxes_cxcywh")
        user = torch.tensor(user) if user else None
        gen = model.generate_greedy(pixels, torch.tensor(prompt["input_ids"])[None], user, max_new_tokens=steps,
                                    vision=vision)
        out.append((gen.tokens.tolist(), gen.step_logits.float()))
    return out


@pytest.fixture(scope="module")
def bf16_model(fixture_dir):
    return GromaForConditionalGeneration.from_pretrained(fixture_dir, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def vision(bf16_model, pixels):
    return bf16_model.encode_image(pixels)


@pytest.fixture(scope="module")
def bf16_run(bf16_model, pixels, vision):
    return _greedy(bf16_model, pixels, vision)


@pytest.fixture(scope="module")
def quantized(fixture_dir):
    return {mode: GromaForConditionalGeneration.from_pretrained(fixture_dir, dtype=torch.bfloat16, quantization=mode)
            for mode in ("int8", "int4")}


def _agreeing_prefix(a: list[int], b: list[int]) -> int:
    """Steps whose logits are comparable: up to and including the first differing token."""
    n = 0
    while n < min(len(a), len(b)) and (n == 0 or a[n - 1] == b[n - 1]):
        n += 1
    return n


def test_int8_keeps_the_bf16_tokens(quantized, pixels, vision, bf16_run):
    model = quantized["int8"]
    assert is_quantized(model)
    for (tokens, logits), (ref_tokens, ref_logits) in zip(_greedy(model, pixels, vision), bf16_run, strict=True):
        assert tokens == ref_tokens and len(tokens) == 10
        assert (logits - ref_logits).abs().max() <= 0.2


def test_int4_computes_what_its_rounding_implies(fixture_dir, quantized, pixels, vision, bf16_run):
    rounded = GromaForConditionalGeneration.from_pretrained(fixture_dir, dtype=torch.bfloat16)
    keys = quantizable_weights(rounded)
    assert len(keys) == 7 * rounded.config.llm_cfg.num_hidden_layers
    with torch.no_grad():
        for key in keys:
            weight = rounded.get_parameter(key)
            weight.copy_(quantize_weight(weight.detach().clone(), "int4").dequantize())
    got, want = _greedy(quantized["int4"], pixels, vision, steps=5), _greedy(rounded, pixels, vision, steps=5)
    for (tokens, logits), (ref_tokens, ref_logits) in zip(got, want, strict=True):
        assert tokens == ref_tokens
        assert (logits - ref_logits).abs().max() <= 0.05
    for (tokens, logits), (ref_tokens, ref_logits) in zip(got, bf16_run, strict=True):
        n = _agreeing_prefix(tokens, ref_tokens)
        print(f"int4 vs bf16: first-step max |dlogit| {(logits[0] - ref_logits[0]).abs().max():.2f}, "
              f"{n - 1} leading tokens equal")
        assert (logits[0] - ref_logits[0]).abs().max() <= 1.5


def test_only_llm_linears_are_quantized_and_memory_shrinks(bf16_model, quantized):
    bf16 = bf16_model
    keys = set(quantizable_weights(bf16))
    linear_bytes = sum(bf16.get_parameter(k).numel() for k in keys)  # elements = int8 bytes
    for model in quantized.values():
        for name, param in model.named_parameters():
            assert (type(param.data) is not torch.Tensor) == (name in keys), name
            if name not in keys:
                assert param.dtype == torch.bfloat16 and torch.equal(param, bf16.get_parameter(name)), name
        saved = parameter_bytes(bf16) - parameter_bytes(model)
        # the linears go from 2 bytes to 1 (CPU int4 also stores one value per byte) plus scales/zero points
        assert 0.9 * linear_bytes <= saved <= linear_bytes
        with pytest.raises(ValueError, match="quantized model cannot be saved"):
            model.save_pretrained(Path("/nonexistent"))


def test_engine_runs_quantized_and_checks_the_setting(tmp_path):
    from groma_ros.engine import GromaEngine
    from tests.support.models import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "tiny")
    image = np.zeros((64, 64, 3), np.uint8)
    for mode in ("int8", "int4", "none", None):
        engine = GromaEngine.from_pretrained(str(model_dir), dtype="bfloat16", quantization=mode, progress=False,
                                             num_threads=1)
        assert is_quantized(engine.model) == (mode in ("int8", "int4"))
        assert engine.ask(image, "where is the mug?", task="refer", max_new_tokens=3).completion_tokens >= 1
    with pytest.raises(ValueError, match="quantization must be one of none, int8, int4; got 'int2'"):
        GromaEngine.from_pretrained(str(model_dir), quantization="int2", progress=False)
