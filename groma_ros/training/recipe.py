"""Sizes of the tiny Groma and the training hyper-parameters, in one place so the model card can cite them.

Why these sizes: the model must train on one CPU core within about an hour and run at interactive speed,
yet keep Groma's exact architecture and checkpoint format. 112 px input with patch 8 gives a 14x14 grid
(49 LLM image tokens after the 2x2 merge); a 64-wide ViT keeps the region encoder's five 3x3 fusion rounds
over 56/28/14 px maps affordable; the LLaMA is 192 x 4 layers as in the trial that preceded this recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from groma_ros.model.configuration_groma import GromaConfig
from groma_ros.synthetic.texts import TASKS

IMAGE_SIZE = 112
CAPTION_ORDERS = ("left_to_right", "regions")
PHRASE_POINTER_HEAD = 4  # the attention head that ``phrase_pointer_layers`` supervises
EXISTS_POINTER_HEAD = 5  # the attention head that ``exists_pointer_layers`` supervises
RELATION_TASK = "refer_relation"  # task-weight key: refer samples of kind "relation"
DIALOGUE_TASK = "dialogue"  # task-weight key: multi-turn dialogues (``synthetic.dialogue``)
REFERENT_HEAD = 2  # the attention head that ``referent_layers`` supervises
SCENE_SIZE = 128  # scenes are drawn at the generator's default size and resized by the engine's preprocess


def tiny_groma_config(vocab_size: int) -> GromaConfig:
    """The shipped model's config; ``vocab_size`` is the SentencePiece size from stage 0."""
    return GromaConfig(
        perceiver_cfg={
            "vis_encoder_cfg": {"model_type": "dinov2", "hidden_size": 64, "num_hidden_layers": 4,
                                "num_attention_heads": 4, "mlp_ratio": 4, "patch_size": 8,
                                "image_size": IMAGE_SIZE},
            "ddetr_cfg": {"model_type": "deformable_detr", "d_model": 64, "encoder_layers": 2,
                          "decoder_layers": 3, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
                          "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "encoder_n_points": 4,
                          "decoder_n_points": 4, "num_queries": 30, "two_stage_num_proposals": 30,
                          "num_feature_levels": 1, "two_stage": True, "with_box_refine": True,
                          "dropout": 0.0, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}},
        },
        llm_cfg={"model_type": "llama", "vocab_size": vocab_size, "hidden_size": 192, "intermediate_size": 512,
                 "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 6,
                 "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
                 "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"},
        image_size=IMAGE_SIZE, region_pos_dim=32, region_feat_dim=128, region_out_dim=192,
        region_gn_groups=8, roi_output_size=7, region_box_convention="corrected",
        nms_thres=0.6, box_score_thres=0.15, max_region_num=16,
    )


@dataclass
class Stage1Config:
    """Proposer + vision encoder + region encoder (attribute heads keep region tokens informative)."""

    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    max_steps: int = 100_000
    cost_class: float = 2.0
    cost_l1: float = 5.0
    cost_giou: float = 2.0
    loss_l1: float = 5.0
    loss_giou: float = 2.0
    loss_class: float = 2.0
    loss_attr: float = 1.0
    focal_alpha: float = 0.25
    region_aux_images: int = 4  # region-encoder attribute loss on this many images per batch (fusion convs cost)


@dataclass
class Stage2Config:
    """Region-encoder head (``updims``) + bridge + LLM + new tokens, proposer and feature maps frozen."""

    batch_size: int = 16
    scenes_per_batch: int = 4
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 100_000
    region_weight: float = 3.0  # loss weight of answer <rK> tokens
    list_weight: float = 0.3  # loss on the <rK> of the region list in the prompt (induction "copy" signal)
    contrast_weight: float = 0.5  # answer hidden state vs region hidden states, CE over the regions
    attn_weight: float = 0.5  # attention supervision of the induction circuit (see stage2.attention_losses)
    prev_token_layer: int = 0  # head 0 of this layer: region token -> its own <rK> (copies the index)
    pointer_layers: tuple[int, ...] = (2, 3)  # head 0 of these: answer position -> the target region token
    gather_layers: tuple[int, ...] = (0, 1)  # head 1 of these: answer position -> the words of its phrase
    # head 2 of these: answer position -> the anchor of "X left of Y". Off in the shipped run (implemented and
    # unit-checked after it had started; relations improved without it), e.g. (1,) to try.
    anchor_layers: tuple[int, ...] = ()
    # head 3 of these: answer position -> the anchor phrase's words of a binary relation; when set, head 1 of
    # ``gather_layers`` gathers only the target's words and the relation there. Off in the shipped base run.
    anchor_gather_layers: tuple[int, ...] = ()
    # Object order of the grounded captions trained on: "left_to_right" (the generator's) or "regions" (by
    # kept-region index: the next object is the next index, no position comparison; the caption F1 is order-free)
    caption_order: str = "left_to_right"
    # head ``PHRASE_POINTER_HEAD`` of these: in a grounded caption, every position that predicts a word of a phrase
    # (from its <p> to the word before </p>) attends to the region the phrase is then tied to. Why: the phrase comes
    # *before* its <rK>, so naming the object means finding the next region first; 13 of 29 caption errors on 80
    # val scenes were objects whose shape region QA read right. The shipped weights train with [1, 2] (MODEL_CARD.md).
    phrase_pointer_layers: tuple[int, ...] = ()
    # head ``exists_pointer_head`` of these: the position that answers "is there a red circle?" attends to the
    # regions showing a red circle, or to the first token (a "nothing" sink) when there is none; head 1 of
    # ``gather_layers`` brings the colour and shape words there. Why: trained on the answer word alone, the LLM
    # said "yes" to 235 of 240 such questions (50 % accuracy), though REC finds the same phrases 99 % of the time.
    # The shipped weights train with [2, 3] and head 0 (existence 92 % on test, MODEL_CARD.md); a fresh head learns
    # it far more slowly.
    exists_pointer_layers: tuple[int, ...] = ()
    exists_pointer_head: int = EXISTS_POINTER_HEAD  # 0 = share the REC pointer head (already a phrase-region matcher)
    # head ``REFERENT_HEAD`` of these: in a dialogue, the position that answers a follow-up ("the other one", "what
    # colour is it?") attends to the ``<rK>`` of the earlier answer that named the referent. Why: "it" is an index in
    # the history, and the referent's features sit at that region's token in the prompt; this head fetches the index,
    # the anchor head (``anchor_layers``, trained on these answers with the referent as anchor) then the features.
    referent_layers: tuple[int, ...] = ()
    # dialogues: a follow-up's answer position also gathers, with head 3 of ``anchor_gather_layers`` (which gathers
    # the anchor phrase of binary relations), the words that described the referent in the first query ("the red
    # circle"). Why: the anchor head then finds the referent by its description, a match it already makes for
    # "X left of the red circle", instead of by the ``<rK>`` index alone (an index match it learned slowly).
    referent_phrase: bool = False
    align_weight: float = 0.5  # region token vs the word embeddings of its colour/shape/size + box regression
    position_weight: float = 0.0  # region token vs "leftmost"/... embeddings, linear in its position (losses.py)
    curriculum_steps: int = 1500  # first steps: scenes with <= curriculum_objects objects
    curriculum_objects: int = 3
    num_scenes: int = 4000  # cached train scenes
    eval_scenes: int = 24  # val scenes of the periodic evaluation (48 at the end)
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "refer": 0.45, "refer_multi": 0.1, "grounded_caption": 0.12, "region_qa": 0.18, "vqa": 0.15})
    # keys: the text tasks, plus "refer_relation" (refer samples of kind "relation" only) and "dialogue"

    def __post_init__(self) -> None:
        if self.caption_order not in CAPTION_ORDERS:
            raise ValueError(f"caption_order must be one of {CAPTION_ORDERS}, got {self.caption_order!r}")
        known = {*TASKS, RELATION_TASK, DIALOGUE_TASK}
        if unknown := set(self.task_weights) - known:
            raise ValueError(f"unknown task_weights keys {sorted(unknown)}; known: {sorted(known)}")

    def as_dict(self) -> dict:
        return asdict(self)
