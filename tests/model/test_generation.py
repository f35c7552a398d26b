"""Greedy loop, preprocessing, KV-cache forking and the frame LRU: no model needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from groma_ros.engine.perception import FrameCache, Perception, PrefixState, clip_user_box, fork_cache
from groma_ros.engine.preprocess import ImageError, check_image, preprocess
from groma_ros.model.generation import greedy_decode
from tests.support.checkpoints import PARITY_FIXTURE

REPO = Path(__file__).resolve().parents[2]
FIXTURE = PARITY_FIXTURE
V, EOS = 10, 2


def scripted(tokens: list[int]):
    """first_logits + step fn that emit ``tokens`` in order; records the ids fed back."""
    fed: list[int] = []

    def logits_for(i: int) -> torch.Tensor:
        out = torch.zeros(V)
        out[tokens[i] if i < len(tokens) else EOS] = 1.0
        return out

    def step(tok: int) -> torch.Tensor:
        fed.append(tok)
        return logits_for(len(fed))

    return logits_for(0), step, fed


def test_stops_on_eos_without_extra_step():
    first, step, fed = scripted([5, 6, 7])
    out = greedy_decode(first, step, eos_token_id=EOS, max_new_tokens=10)
    assert out.token_ids == [5, 6, 7] and out.stopped_on_eos and not out.canceled
    assert out.num_generated == 4
    assert fed == [5, 6, 7]


def test_max_new_tokens_does_not_run_a_wasted_step():
    first, step, fed = scripted([5, 6, 7, 8])
    out = greedy_decode(first, step, eos_token_id=EOS, max_new_tokens=2)
    assert out.token_ids == [5, 6] and not out.stopped_on_eos
    assert fed == [5]  # the second token ends generation: no forward for it


def test_cancel_between_tokens_and_streaming():
    first, step, _ = scripted([3, 4, 5, 6, 7, 8])
    seen: list[int] = []
    out = greedy_decode(first, step, eos_token_id=EOS, max_new_tokens=10, on_token=seen.append,
                        should_cancel=lambda: len(seen) >= 2)
    assert out.canceled and out.token_ids == [3, 4] == seen


def test_keep_logits_and_first_index_on_ties():
    first = torch.tensor([0.0, 1.0, 1.0, 0.0])
    out = greedy_decode(first, lambda t: torch.tensor([0.0, 0.0, 1.0, 0.0]), eos_token_id=2, max_new_tokens=5,
                        keep_logits=True)
    assert out.token_ids == [1] and out.stopped_on_eos
    assert len(out.step_logits) == 2 and torch.equal(out.step_logits[0], first)


def test_fork_cache_shares_prefix_but_never_mutates_it():
    cache = DynamicCache()
    k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    cache.update(k.clone(), v.clone(), 0)
    forked = fork_cache(cache)
    forked.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), 0)
    assert forked.get_seq_length() == 8 and cache.get_seq_length() == 5
    assert torch.equal(cache.layers[0].keys, k) and torch.equal(cache.layers[0].values, v)
    assert torch.equal(forked.layers[0].keys[:, :, :5], k)


def test_check_image_rejects_bad_input():
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((1, 5, 3), np.uint8),
                [[1, 2]], np.zeros((2, 2, 2, 3), np.uint8)):
        with pytest.raises(ImageError):
            check_image(bad)  # type: ignore[arg-type]
    assert check_image(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)


def test_preprocess_resizes_and_normalizes():
    img = np.full((30, 50, 3), 128, np.uint8)
    x = preprocess(img, 28)
    assert x.shape == (1, 3, 28, 28) and x.dtype == torch.float32
    expect = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(x[0, :, 5, 5].numpy(), expect, atol=1e-6)
    assert preprocess(img, 28, "bicubic").shape == (1, 3, 28, 28)


@pytest.mark.skipif(not (FIXTURE / "expected.npz").is_file(), reason="parity fixture not available")
def test_preprocess_matches_parity_fixture_exactly():
    import cv2

    img = cv2.cvtColor(cv2.imread(str(FIXTURE / "image.png")), cv2.COLOR_BGR2RGB)
    x = preprocess(img, 448).double()
    digest = [x.sum().item(), (x**2).sum().item(), *x[0].mean(dim=(1, 2)).tolist()]
    exp = np.load(FIXTURE / "expected.npz")
    np.testing.assert_allclose(digest, exp["pixel_values_digest"], rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(x[0, :, ::64, ::64].float().numpy(), exp["pixel_values_sample"])


def test_clip_user_box():
    assert clip_user_box((-5, 2, 50, 80), (40, 30)) == (0.0, 2.0, 40.0, 30.0)
    for bad in ((1, 2, 3), (0, 0, float("nan"), 4), (50, 50, 60, 60), (10, 10, 10, 20), ("a", 0, 1, 1)):
        with pytest.raises(ValueError):
            clip_user_box(bad, (40, 30))


def _fake_perception(frame_id, nbytes_kv: int) -> Perception:
    cache = DynamicCache()
    n = nbytes_kv // 8
    cache.update(torch.zeros(1, 1, n, 1), torch.zeros(1, 1, n, 1), 0)
    base = PrefixState((), torch.zeros(1, 4), [], [], torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), cache)
    return Perception(frame_id, (8, 8), None, torch.zeros(1, 4), torch.zeros(1), base)


def test_frame_lru_evicts_by_count():
    lru = FrameCache(max_frames=2)
    for i in range(3):
        lru.put(_fake_perception(i, 64))
    assert lru.keys() == [1, 2]
    assert lru.get(1) is not None  # 1 becomes most recent
    lru.put(_fake_perception(3, 64))
    assert lru.keys() == [1, 3] and lru.get(2) is None
    lru.put(_fake_perception(None, 64))  # frame_id None is never cached
    assert len(lru) == 2


def test_frame_lru_evicts_by_bytes_but_keeps_newest():
    one = _fake_perception(0, 4000).nbytes()
    lru = FrameCache(max_frames=10, max_bytes=int(2.5 * one))
    for i in range(4):
        lru.put(_fake_perception(i, 4000))
    assert lru.keys() == [2, 3] and lru.nbytes() <= 2.5 * one
    lru.put(_fake_perception("big", 40000))  # alone over budget: still kept (it is the one in use)
    assert lru.keys() == ["big"]


def test_types_and_cli_import_without_torch():
    code = ("import sys, groma_ros.engine.types, groma_ros.engine, groma_ros.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
