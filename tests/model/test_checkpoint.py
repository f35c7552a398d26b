"""Checkpoint layout, loading errors, save/load round trip, precisions."""

import json
import pickle

import pytest
import torch

from groma_ros.model import (
    CheckpointError,
    CheckpointRefusedError,
    GromaConfig,
    GromaForConditionalGeneration,
    to_release_state_dict,
)
from groma_ros.model.checkpoint import build_empty, read_checkpoint
from tests.support.checkpoints import make_random_checkpoint, random_release_state_dict, tiny_config

torch.set_num_threads(2)


def released_7b_keys() -> dict[str, tuple[int, ...]]:
    """The groma-7b state_dict (4.32 names, incl. aliases) written out from its key patterns."""
    D, d, H, V, FF, N = 1024, 256, 4096, 32000, 11008, 114
    k: dict[str, tuple[int, ...]] = {}

    def lin(name, out, inp, bias=True):
        k[f"{name}.weight"] = (out, inp)
        if bias:
            k[f"{name}.bias"] = (out,)

    def norm(name, n):
        k[f"{name}.weight"] = (n,)
        k[f"{name}.bias"] = (n,)

    v = "perceiver.vis_encoder."
    k.update(
        {
            v + "embeddings.cls_token": (1, 1, D),
            v + "embeddings.mask_token": (1, D),
            v + "embeddings.position_embeddings": (1, 1370, D),
            v + "embeddings.patch_embeddings.projection.weight": (D, 3, 14, 14),
            v + "embeddings.patch_embeddings.projection.bias": (D,),
        }
    )
    for i in range(24):
        p = f"{v}encoder.layer.{i}."
        norm(p + "norm1", D)
        for q in ("query", "key", "value"):
            lin(p + f"attention.attention.{q}", D, D)
        lin(p + "attention.output.dense", D, D)
        k[p + "layer_scale1.lambda1"] = (D,)
        norm(p + "norm2", D)
        lin(p + "mlp.fc1", 4 * D, D)
        lin(p + "mlp.fc2", D, 4 * D)
        k[p + "layer_scale2.lambda1"] = (D,)
    norm(v + "layernorm", D)
    k["perceiver.input_proj.0.0.weight"] = (d, D, 1, 1)
    k["perceiver.input_proj.0.0.bias"] = (d,)
    norm("perceiver.input_proj.0.1", d)
    t = "perceiver.ddetr_transformer."
    k[t + "level_embed"] = (1, d)
    k[t + "query_position_embeddings.weight"] = (300, d)
    lin(t + "enc_output", d, d)
    norm(t + "enc_output_norm", d)
    lin(t + "pos_trans", 2 * d, 2 * d)
    norm(t + "pos_trans_norm", 2 * d)

    def msda(p):
        lin(p + ".sampling_offsets", 64, d)
        lin(p + ".attention_weights", 32, d)
        lin(p + ".value_proj", d, d)
        lin(p + ".output_proj", d, d)

    for i in range(6):
        p = f"{t}encoder.layers.{i}."
        msda(p + "self_attn")
        norm(p + "self_attn_layer_norm", d)
        lin(p + "fc1", 1024, d)
        lin(p + "fc2", d, 1024)
        norm(p + "final_layer_norm", d)
    for i in range(6):
        p = f"{t}decoder.layers.{i}."
        for q in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(p + f"self_attn.{q}", d, d)
        norm(p + "self_attn_layer_norm", d)
        msda(p + "encoder_attn")
        norm(p + "encoder_attn_layer_norm", d)
        lin(p + "fc1", 1024, d)
        lin(p + "fc2", d, 1024)
        norm(p + "final_layer_norm", d)
    for prefix in (t, t + "decoder."):
        lin(prefix + "class_embed_enc", 1, d)
        for i in range(6):
            lin(prefix + f"class_embed_coco.{i}", 1, d)
            lin(prefix + f"class_embed_sa1b.{i}", 1, d)
        for i in range(7):
            lin(prefix + f"bbox_embed.{i}.layers.0", 256, d)
            lin(prefix + f"bbox_embed.{i}.layers.1", 256, 256)
            lin(prefix + f"bbox_embed.{i}.layers.2", 4, 256)
    k["llm.model.embed_tokens.weight"] = (V, H)
    for i in range(32):
        p = f"llm.model.layers.{i}."
        for q in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin(p + f"self_attn.{q}", H, H, bias=False)
        lin(p + "mlp.gate_proj", FF, H, bias=False)
        lin(p + "mlp.up_proj", FF, H, bias=False)
        lin(p + "mlp.down_proj", H, FF, bias=False)
        k[p + "input_layernorm.weight"] = (H,)
        k[p + "post_attention_layernorm.weight"] = (H,)
    k["llm.model.norm.weight"] = (H,)
    k["llm.lm_head.weight"] = (V, H)
    lin("img_txt_bridge.0", H, 4 * D)
    lin("img_txt_bridge.2", H, H)
    r = "region_encoder."
    for i in range(3):
        k[f"{r}mlvl_fuse.input_conv.{i}.weight"] = (D, D + 2, 1, 1)
        k[f"{r}mlvl_fuse.input_conv.{i}.bias"] = (D,)
        k[f"{r}roi_align.pconvs.{i}.weight"] = (D, D, 3, 3)
        k[f"{r}roi_align.pconvs.{i}.bias"] = (D,)
    for i in range(5):
        k[f"{r}mlvl_fuse.fuse_convs.{i}.conv.weight"] = (D, D, 3, 3)
        norm(f"{r}mlvl_fuse.fuse_convs.{i}.gn", D)
    lin(r + "roi_align.pos_embedd.0", 256, 4)
    norm(r + "roi_align.pos_embedd.2", 256)
    lin(r + "roi_align.pos_embedd.3", 1024, 256)
    norm(r + "roi_align.pos_embedd.5", 1024)
    lin(r + "roi_align.flatten_linear", 1024, D * 14 * 14)
    lin(r + "roi_align.updims", H, 1024)
    k["extra_lm_head.weight"] = (N, H)
    k["new_input_embs.weight"] = (N, H)
    return k


def test_7b_config_matches_released_key_list():
    model = build_empty(GromaForConditionalGeneration, GromaConfig())
    ours = model.state_dict()
    release = to_release_state_dict(ours)
    expected = released_7b_keys()
    assert len(expected) == 1177
    assert sorted(release) == sorted(expected)
    assert {k: tuple(v.shape) for k, v in release.items()} == expected
    assert sum(v.numel() for v in ours.values()) == 7_377_311_657
    assert sum(p.numel() for p in model.parameters()) == 7_377_311_657


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("tiny"))


def _write(tmp_path, state):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(tiny_config().to_json_string())
    torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


def _error(path) -> str:
    with pytest.raises(CheckpointError) as err:
        GromaForConditionalGeneration.from_pretrained(path)
    return str(err.value)


def test_tampered_checkpoints_fail_loudly(tiny_dir, tmp_path):
    base = torch.load(tiny_dir / "pytorch_model.bin", weights_only=True)
    assert len(base) > 100

    s = dict(base)
    del s["img_txt_bridge.0.bias"]
    msg = _error(_write(tmp_path / "missing", s))
    assert "missing keys (1)" in msg and "img_txt_bridge.0.bias" in msg

    s = dict(base, **{"foo.bar.weight": torch.zeros(2)})
    msg = _error(_write(tmp_path / "extra", s))
    assert "unexpected keys (1)" in msg and "foo.bar.weight" in msg

    s = dict(base)
    s["extra_lm_head.weight"] = torch.zeros(3, 3)
    msg = _error(_write(tmp_path / "shape", s))
    assert "shape mismatches" in msg and "extra_lm_head.weight" in msg

    s = dict(base)
    key = "perceiver.ddetr_transformer.decoder.bbox_embed.0.layers.0.weight"
    s[key] = s[key] + 1
    msg = _error(_write(tmp_path / "alias", s))
    assert "alias" in msg and key in msg


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(tiny_config().to_json_string())
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"a": Evil()}, f, protocol=2)
    assert "refusing to load" in _error(tmp_path)
    torch.save({"a": torch.zeros(1), "b": "text"}, tmp_path / "pytorch_model.bin")
    msg = _error(tmp_path)
    assert "non-tensor" in msg and "b" in msg


def _run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, model.config.image_size, model.config.image_size, generator=g)
    t = model.token_ids
    ids = torch.tensor([[1, 5, t.image, 6, t.region, 7, 8]])
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.5, 0.4], [0.5, 0.5, 1.0, 1.0]])
    return model(pixels.to(model.dtype), ids, region_boxes=boxes).logits


def test_save_load_round_trip(tiny_dir, tmp_path):
    model = GromaForConditionalGeneration.from_pretrained(tiny_dir)
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_bytes=1 << 20)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ref = _run(model)
    for sub in ("single", "sharded"):
        again = GromaForConditionalGeneration.from_pretrained(tmp_path / sub)
        skip = ("dtype", "architectures")
        assert {k: v for k, v in again.config.to_dict().items() if k not in skip} == {
            k: v for k, v in model.config.to_dict().items() if k not in skip
        }
        for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
            assert k1 == k2 and torch.equal(v1, v2)
        assert torch.equal(_run(again), ref)
    raw = read_checkpoint(tmp_path / "single")
    assert not any(".decoder.bbox_embed." in k for k in raw)  # our naming: no alias keys
    cfg = json.loads((tmp_path / "single" / "config.json").read_text())
    assert cfg["region_box_convention"] == "corrected" and cfg["image_size"] == 128


def test_bf16_and_fp16_load_on_cpu(tiny_dir):
    ref = _run(GromaForConditionalGeneration.from_pretrained(tiny_dir))
    for dtype in (torch.bfloat16, torch.float16):
        model = GromaForConditionalGeneration.from_pretrained(tiny_dir, dtype=dtype)
        assert all(p.dtype == dtype for p in model.parameters())
        logits = _run(model)
        assert logits.dtype == dtype and torch.isfinite(logits).all()
        assert (logits.float() - ref).abs().max() < 0.5


def test_unknown_quantization_is_refused_before_reading(tiny_dir):
    for bad in ("4bit", "nf4", "int3"):
        with pytest.raises(ValueError, match="quantization must be one of none, int8, int4"):
            GromaForConditionalGeneration.from_pretrained(tiny_dir, quantization=bad)


@pytest.mark.parametrize("content,reason", [
    ("half", "PytorchStreamReader failed reading zip archive"),
    ("text", "truncated, corrupt or not a weight file"),
    ("empty", "truncated, corrupt or not a weight file"),
])
def test_unreadable_bin_says_so_and_is_no_refusal(tiny_dir, tmp_path, content, reason):
    data = (tiny_dir / "pytorch_model.bin").read_bytes()
    blob = {"half": data[: len(data) // 2], "text": b"hello world " * 64, "empty": b""}[content]
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(blob)
    with pytest.raises(CheckpointError) as err:
        GromaForConditionalGeneration.from_pretrained(tmp_path)
    assert type(err.value) is CheckpointError
    assert str(err.value).startswith(f"cannot read {tmp_path / 'pytorch_model.bin'}: ") and reason in str(err.value)


def test_bad_safetensors_header_is_named(tiny_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((9).to_bytes(8, "little") + b"{nonsense")
    with pytest.raises(CheckpointError, match="the safetensors header is not JSON"):
        GromaForConditionalGeneration.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="runs past the end of the file"):
        GromaForConditionalGeneration.from_pretrained(tmp_path)


def test_refusals_have_their_own_type(tmp_path):
    (tmp_path / "config.json").write_text(tiny_config().to_json_string())
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"a": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointRefusedError):
        GromaForConditionalGeneration.from_pretrained(tmp_path)


def test_our_writer_and_reader_interoperate_with_the_safetensors_library(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from groma_ros.model.weight_files import read_safetensors, write_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"a.weight": torch.randn(3, 5, generator=g).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64),
               "c.scalar": torch.tensor(2.5), "d.empty": torch.zeros(0, 4, dtype=torch.float16),
               "e.mask": torch.tensor([True, False, True])}
    write_safetensors(tmp_path / "ours.safetensors", [(k, v.shape, v.dtype) for k, v in tensors.items()],
                      tensors.__getitem__, {"format": "pt"})
    with safe_open(str(tmp_path / "ours.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(tensors) and f.metadata() == {"format": "pt"}
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v) and f.get_tensor(k).dtype == v.dtype, k
    save_file(tensors, str(tmp_path / "theirs.safetensors"))
    read, _ = read_safetensors(tmp_path / "theirs.safetensors")
    assert sorted(read) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(read[k], v) and read[k].dtype == v.dtype, k
    with pytest.raises(ValueError, match="produced"):
        write_safetensors(tmp_path / "bad.safetensors", [("x", (2,), torch.float32)], lambda k: torch.zeros(3))
    assert not (tmp_path / "bad.safetensors").exists() and not list(tmp_path.glob("*.partial"))


def test_loaded_tensors_are_private_copies_never_writing_the_file(tiny_dir, tmp_path):
    """Weights loaded as they are stored map the file copy-on-write: changing the model leaves the file alone."""
    before = (tiny_dir / "pytorch_model.bin").read_bytes()
    model = GromaForConditionalGeneration.from_pretrained(tiny_dir)
    model.llm.lm_head.weight.data.add_(1.0)
    assert (tiny_dir / "pytorch_model.bin").read_bytes() == before
    again = GromaForConditionalGeneration.from_pretrained(tiny_dir)
    assert not torch.equal(again.llm.lm_head.weight, model.llm.lm_head.weight)


def test_release_names_round_trip_through_state_dict():
    state = random_release_state_dict(tiny_config(), seed=3)
    assert any(k.startswith("perceiver.ddetr_transformer.decoder.bbox_embed.") for k in state)
    assert any(".attention.attention.query." in k for k in state)
    assert any(".self_attn.out_proj." in k for k in state)
