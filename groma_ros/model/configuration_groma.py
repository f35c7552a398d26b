"""Groma configuration: reads the released ``config.json`` layout (transformers-4.32 era).

The released file nests three transformers configs: ``perceiver_cfg.vis_encoder_cfg`` (DINOv2),
``perceiver_cfg.ddetr_cfg`` (Deformable-DETR) and ``llm_cfg`` (LLaMA). They were diff-serialized against the
4.32 class defaults, so a field that is absent means "the 4.32 default". Where the 5.x default differs we
fill the 4.32 value in first (``LEGACY_DEFAULTS``), otherwise absent fields would silently change meaning.

Extra fields (``image_size``, ``region_*``, ``roi_output_size``, ``region_box_convention``) are ours. Their
defaults reproduce the release, and they are written back so our own checkpoints round-trip; a small model
changes them through the config alone (grid size, region levels and RoI scales are all derived).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import DeformableDetrConfig, Dinov2Config, LlamaConfig, PreTrainedConfig

from . import special_tokens
from .special_tokens import GROMA_TOKENS, parse_region_token, region_token

# 4.32 class defaults that differ from the transformers 5.x defaults (checked against meta.json config_full;
# Dinov2's patch_size was 16 in 4.32, which is why 4.32 wrote ``patch_size: 14`` explicitly).
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "dinov2": {"patch_size": 16},
    "deformable_detr": {},
    "llama": {},
}

BOX_CONVENTIONS = ("original", "corrected")

# the 14 fixed added tokens (ids vocab+0 .. vocab+13), then <r0> .. <r{n-1}>
SPECIAL_TOKENS = GROMA_TOKENS


# The released groma-7b-finetune sub-configs (as its config.json nests them): used where a sub-config is absent.
RELEASED_VISION = {
    "model_type": "dinov2",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 518,
}
RELEASED_DDETR = {
    "model_type": "deformable_detr",
    "d_model": 256,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "num_queries": 300,
    "two_stage_num_proposals": 300,
    "num_feature_levels": 1,
    "two_stage": True,
    "with_box_refine": True,
    "auxiliary_loss": True,
    "class_cost": 2,
    "cls_loss_coefficient": 2,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
}
RELEASED_LLM = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "vocab_size": 32000,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}


def _legacy_config(cls: type[PreTrainedConfig], value: Any) -> PreTrainedConfig:
    """Build a 5.x sub-config from a released dict, filling absent fields with 4.32 defaults."""
    if isinstance(value, PreTrainedConfig):
        return value
    value = dict(value or {})
    for key, default in LEGACY_DEFAULTS.get(cls.model_type, {}).items():
        value.setdefault(key, default)
    return cls(**value)


class GromaPerceiverConfig(PreTrainedConfig):
    """``perceiver_cfg``: the DINOv2 encoder + Deformable-DETR proposer (original ``CustomDDETRConfig``)."""

    model_type = "ddetr"

    vis_encoder_cfg: dict | PreTrainedConfig | None = None
    ddetr_cfg: dict | PreTrainedConfig | None = None
    vis_output_layer: int = -1
    zs_weight_path: str | None = None  # accepted for compatibility, unused by the original too

    def __post_init__(self, **kwargs):
        self.vis_encoder_cfg = _legacy_config(Dinov2Config, self.vis_encoder_cfg or RELEASED_VISION)
        self.ddetr_cfg = _legacy_config(DeformableDetrConfig, self.ddetr_cfg or RELEASED_DDETR)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["vis_encoder_cfg"] = self.vis_encoder_cfg.to_dict()
        out["ddetr_cfg"] = self.ddetr_cfg.to_dict()
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        out = super().to_diff_dict()
        out["vis_encoder_cfg"] = self.vis_encoder_cfg.to_dict()
        out["ddetr_cfg"] = self.ddetr_cfg.to_dict()
        return out


@dataclass(frozen=True)
class GromaTokenIds:
    """Ids of the 114 added tokens: ``[PAD]`` = V, ..., ``[grounding]`` = V+13, ``<rN>`` = V+14+N."""

    vocab: int
    num_regions: int

    @property
    def pad(self) -> int:
        return self.vocab

    @property
    def image(self) -> int:
        return self.by_name(special_tokens.IMAGE)

    @property
    def region(self) -> int:
        return self.by_name(special_tokens.REGION)

    @property
    def refer_box(self) -> int:
        return self.by_name(special_tokens.REFER_BOX)

    @property
    def ground_box(self) -> int:
        return self.by_name(special_tokens.GROUND_BOX)

    @property
    def refer_feat(self) -> int:
        return self.by_name(special_tokens.REFER_FEAT)

    @property
    def grounding(self) -> int:
        return self.by_name(special_tokens.GROUNDING)

    def by_name(self, name: str) -> int:
        """Id of a special token by its text, e.g. ``"<roi>"`` or ``"<r12>"``."""
        if name in SPECIAL_TOKENS:
            return self.vocab + SPECIAL_TOKENS.index(name)
        k = parse_region_token(name)
        if k is not None:
            return self.region_id(k)
        raise KeyError(name)

    def region_id(self, k: int) -> int:
        """Id of ``<r{k}>``."""
        if not 0 <= k < self.num_regions:
            raise ValueError(f"region index {k} out of range 0..{self.num_regions - 1}")
        return self.vocab + len(SPECIAL_TOKENS) + k

    def region_of(self, token_id: int) -> int | None:
        """Inverse of ``region_id``: k for an ``<rk>`` id, else None."""
        k = token_id - self.vocab - len(SPECIAL_TOKENS)
        return k if 0 <= k < self.num_regions else None

    def text_of(self, token_id: int) -> str:
        """Inverse of ``by_name``: the text of a Groma token id (``KeyError`` for any other id)."""
        k = token_id - self.vocab
        if 0 <= k < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[k]
        region = self.region_of(token_id)
        if region is None:
            raise KeyError(token_id)
        return region_token(region)

    def as_dict(self) -> dict[str, int]:
        names = list(SPECIAL_TOKENS) + [region_token(k) for k in range(self.num_regions)]
        return {name: self.vocab + i for i, name in enumerate(names)}


class GromaConfig(PreTrainedConfig):
    """Config of the whole Groma model, in the released ``config.json`` layout plus our region-encoder fields.

    ``GromaConfig()`` with no arguments is the released groma-7b layout.

    ``region_box_convention``: ``"original"`` feeds RoIAlign the normalized ``(cx, cy, w, h)·image_size``
    as if it were ``(x1, y1, x2, y2)``, with spatial scales 2× too large: the released weights depend on it;
    ``"corrected"`` uses real xyxy boxes and scales that match the feature maps (for newly trained models).
    """

    model_type = "groma"

    perceiver_cfg: dict | PreTrainedConfig | None = None
    llm_cfg: dict | PreTrainedConfig | None = None
    num_new_token: int = 114
    nms_thres: float = 0.6
    box_score_thres: float = 0.15
    max_region_num: int = 100
    vocab_size: int | None = None
    image_size: int = 448
    region_pos_dim: int = 256
    region_feat_dim: int = 1024
    region_out_dim: int = 4096
    region_gn_groups: int = 64
    roi_output_size: int = 14
    region_box_convention: str = "original"

    def __post_init__(self, **kwargs):
        if not isinstance(self.perceiver_cfg, GromaPerceiverConfig):
            pc = self.perceiver_cfg
            pc = pc.to_dict() if isinstance(pc, PreTrainedConfig) else dict(pc or {})
            self.perceiver_cfg = GromaPerceiverConfig(**pc)
        self.llm_cfg = _legacy_config(LlamaConfig, self.llm_cfg or RELEASED_LLM)
        super().__post_init__(**kwargs)
        self.vocab_size = self.llm_cfg.vocab_size + self.num_new_token
        self.validate()

    # -- derived quantities -------------------------------------------------------------------------------
    @property
    def vision_config(self) -> Dinov2Config:
        return self.perceiver_cfg.vis_encoder_cfg

    @property
    def ddetr_config(self) -> DeformableDetrConfig:
        return self.perceiver_cfg.ddetr_cfg

    @property
    def text_config(self) -> LlamaConfig:
        return self.llm_cfg

    @property
    def patch_size(self) -> int:
        p = self.vision_config.patch_size
        return int(p[0] if isinstance(p, (list, tuple)) else p)

    @property
    def grid_size(self) -> int:
        """Vision tokens per side: image_size // patch_size (32 for the release)."""
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        """LLM image tokens after the 2×2 merge: (grid/2)²."""
        return (self.grid_size // 2) ** 2

    @property
    def region_level_sizes(self) -> tuple[int, int, int]:
        """Feature-map sizes of the three region levels: 4×, 2×, 1× the grid (128/64/32 for the release)."""
        g = self.grid_size
        return (4 * g, 2 * g, g)

    @property
    def roi_spatial_scales(self) -> tuple[float, float, float]:
        """RoIAlign spatial scales per level.

        Original: 1/(14/8), 1/(14/4), 1/(14/2) — the strides were written for a 4×/2×/1× pyramid of patch 14
        but are 2× too large for the maps actually used. We keep the formula ``f / patch`` with f = 8, 4, 2
        (independent of the grid). Corrected: ``level_size / image_size`` per level.
        """
        if self.region_box_convention == "original":
            return tuple(f / self.patch_size for f in (8.0, 4.0, 2.0))
        return tuple(s / self.image_size for s in self.region_level_sizes)

    @property
    def token_ids(self) -> GromaTokenIds:
        return GromaTokenIds(
            vocab=self.llm_cfg.vocab_size, num_regions=self.num_new_token - len(SPECIAL_TOKENS)
        )

    def validate(self) -> None:
        """Fail early on configs the network cannot be built from."""
        errors = []
        if self.region_box_convention not in BOX_CONVENTIONS:
            errors.append(
                f"region_box_convention must be one of {BOX_CONVENTIONS}, got {self.region_box_convention!r}"
            )
        if self.region_out_dim != self.llm_cfg.hidden_size:
            errors.append(
                f"region_out_dim ({self.region_out_dim}) must equal the LLM hidden size "
                f"({self.llm_cfg.hidden_size})"
            )
        if self.image_size % self.patch_size:
            errors.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.grid_size % 2:
            errors.append(f"grid size {self.grid_size} must be even for the 2x2 token merge")
        if self.vision_config.hidden_size % self.region_gn_groups:
            errors.append(
                f"vision hidden size {self.vision_config.hidden_size} not divisible by region_gn_groups"
                f" {self.region_gn_groups}"
            )
        if self.vision_config.hidden_size % 4:
            errors.append("vision hidden size must be a multiple of 4 (region fusion shuffles quarters)")
        if self.num_new_token < len(SPECIAL_TOKENS) + 1:
            errors.append(f"num_new_token must be > {len(SPECIAL_TOKENS)}")
        if self.max_region_num > self.num_new_token - len(SPECIAL_TOKENS):
            errors.append("max_region_num exceeds the number of <rN> tokens")
        d = self.ddetr_config
        if d.num_feature_levels != 1 or not d.two_stage or not d.with_box_refine:
            errors.append(
                "only the released proposer layout is supported: 1 feature level, two_stage, with_box_refine"
            )
        if self.perceiver_cfg.vis_output_layer != -1:
            errors.append("only vis_output_layer=-1 is supported")
        if errors:
            raise ValueError("invalid GromaConfig:\n  " + "\n  ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["perceiver_cfg"] = self.perceiver_cfg.to_dict()
        out["llm_cfg"] = self.llm_cfg.to_dict()
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        out = super().to_diff_dict()
        out["perceiver_cfg"] = self.perceiver_cfg.to_dict()
        out["llm_cfg"] = self.llm_cfg.to_dict()
        for key in (
            "image_size",
            "region_pos_dim",
            "region_feat_dim",
            "region_out_dim",
            "region_gn_groups",
            "roi_output_size",
            "region_box_convention",
            "num_new_token",
            "nms_thres",
            "box_score_thres",
            "max_region_num",
        ):
            out[key] = getattr(self, key)
        return out
