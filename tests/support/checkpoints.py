"""Build checkpoints in the released format for tests: fixture weights by rule, or tiny random models.

A released-format directory is ``config.json`` + ``pytorch_model.bin`` holding the transformers-4.32
``state_dict()`` of the original ``GromaModel`` (alias entries included), exactly what
``GromaForConditionalGeneration.from_pretrained`` must accept for the real groma-7b checkpoints.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from groma_ros.model.checkpoint import ALIAS_RE, build_empty, to_release_state_dict
from groma_ros.model.configuration_groma import GromaConfig
from groma_ros.model.modeling_groma import GromaForConditionalGeneration

# ------------------------------------------------------------------------------- parity fixture weights
# the original implementation's outputs for a tiny model, in the repository (GROMA_PARITY_DIR points elsewhere)
PARITY_FIXTURE = Path(os.environ.get("GROMA_PARITY_DIR", Path(__file__).resolve().parents[1] / "data" / "groma_parity"))


def rule_tensor(key: str, shape: tuple[int, ...], rules: list[dict], seed_offset: int = 0) -> torch.Tensor:
    """The parity fixture's weight rule (``tests/data/groma_parity/README.md``) for one key."""
    canonical = ALIAS_RE.sub(r"perceiver.ddetr_transformer.\1.", key)
    g = torch.Generator()
    g.manual_seed(zlib.crc32(canonical.encode("utf-8")) + seed_offset)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    for rule in rules:
        if re.search(rule["regex"], canonical):
            if rule["kind"] == "normal":
                a = rule["a"]
                a = torch.tensor(a, dtype=torch.float64) if isinstance(a, list) else a
                v = a + rule["b"] * z
            elif rule["kind"] == "fanin":
                v = z * (rule["b"] / math.sqrt(math.prod(shape[1:])))
            else:
                raise ValueError(f"unknown rule kind {rule['kind']}")
            return v.to(torch.float32)
    raise ValueError(f"no weight rule matches {key}")


def sha256_f32(t: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.numpy().astype("<f4")).tobytes()).hexdigest()


def fixture_state_dict(fixture_dir: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """All keys of the fixture (release names incl. aliases) from ``weights_rule.tsv`` + ``meta.json`` rules.

    With ``verify`` every tensor's SHA-256 is checked against the table (raises on the first mismatch).
    Alias keys share the canonical tensor, as in the original state dict.
    """
    fixture_dir = Path(fixture_dir)
    meta = json.loads((fixture_dir / "meta.json").read_text())
    rules, offset = meta["weight_rules"], int(meta.get("weight_seed_offset", 0))
    with open(fixture_dir / "weights_rule.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out: dict[str, torch.Tensor] = {}
    canon: dict[str, torch.Tensor] = {}
    for row in rows:
        shape = tuple(int(x) for x in row["shape"].split("x"))
        c = row["canonical_key"]
        if c not in canon:
            canon[c] = rule_tensor(c, shape, rules, offset)
            if verify and sha256_f32(canon[c]) != row["sha256_float32_le"]:
                raise AssertionError(f"weight rule does not reproduce {c} (SHA-256 mismatch)")
        out[row["key"]] = canon[c]
    return out


# ------------------------------------------------------------------------------------------ released format
def write_release_checkpoint(
    directory: Path, config: GromaConfig | dict, state_dict: dict[str, torch.Tensor]
) -> Path:
    """Write ``config.json`` + ``pytorch_model.bin`` (``state_dict`` must already use release names)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config if isinstance(config, dict) else config.to_dict()
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    torch.save(state_dict, directory / "pytorch_model.bin")
    return directory


def tiny_config(**overrides) -> GromaConfig:
    """A small config shaped like the planned embedded model (corrected box convention, small widths)."""
    cfg = {
        "perceiver_cfg": {
            "vis_encoder_cfg": {
                "model_type": "dinov2",
                "hidden_size": 64,
                "num_hidden_layers": 4,
                "num_attention_heads": 2,
                "patch_size": 8,
                "image_size": 128,
            },
            "ddetr_cfg": {
                "model_type": "deformable_detr",
                "d_model": 64,
                "encoder_layers": 1,
                "decoder_layers": 2,
                "encoder_ffn_dim": 128,
                "decoder_ffn_dim": 128,
                "num_queries": 30,
                "two_stage_num_proposals": 30,
                "num_feature_levels": 1,
                "two_stage": True,
                "with_box_refine": True,
                "id2label": {"0": "LABEL_0"},
            },
        },
        "llm_cfg": {
            "model_type": "llama",
            "vocab_size": 256,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        "image_size": 128,
        "region_pos_dim": 32,
        "region_feat_dim": 64,
        "region_out_dim": 128,
        "region_gn_groups": 16,
        "roi_output_size": 7,
        "region_box_convention": "corrected",
        "box_score_thres": 0.0,
    }
    cfg.update(overrides)
    return GromaConfig(**cfg)


def random_release_state_dict(config: GromaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for ``config`` under release names (with aliases), scaled like the fixture rule."""
    model = build_empty(GromaForConditionalGeneration, config)
    ours = {k: v.shape for k, v in model.state_dict().items()}
    rules = [
        {"regex": r"layer_scale[12]\.lambda1$", "kind": "normal", "a": 0.25, "b": 0.02},
        {
            "regex": r"(cls_token|mask_token|position_embeddings|level_embed|embed_tokens\.weight|"
            r"new_input_embs)",
            "kind": "normal",
            "a": 0.0,
            "b": 0.5,
        },
        {"regex": r"query_position_embeddings", "kind": "normal", "a": 0.0, "b": 1.0},
        {
            "regex": r"(norm1|norm2|layernorm|_norm|\.norm|\.gn|input_proj\.\d+\.1|"
            r"pos_embedd\.[25])\.weight$",
            "kind": "normal",
            "a": 1.0,
            "b": 0.05,
        },
        {
            "regex": r"bbox_embed\.\d+\.layers\.2\.bias$",
            "kind": "normal",
            "a": [0.0, 0.0, 1.0, 1.0],
            "b": 0.05,
        },
        {"regex": r"\.bias$", "kind": "normal", "a": 0.0, "b": 0.02},
        {"regex": r"\.weight$", "kind": "fanin", "a": 0.0, "b": 1.0},
    ]
    state = {k: rule_tensor(f"{k}", tuple(shape), rules, seed_offset=seed) for k, shape in ours.items()}
    return to_release_state_dict(state)


def make_random_checkpoint(directory: Path, config: GromaConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random model in the released format (config.json + pytorch_model.bin, 4.32 names).

    Default config: ``tiny_config()`` (loads and runs in well under a second on CPU).
    """
    config = tiny_config() if config is None else config
    return write_release_checkpoint(directory, config, random_release_state_dict(config, seed))
