"""Synthetic scenes -> model inputs and targets, in the exact formats the engine uses at inference.

Pixels go through the engine's ``preprocess`` (same resize and normalisation); prompts through the engine's
``PromptBuilder`` and tokenizer calls (``encode(PREFIX) + encode(suffix, add_bos=False)``), so a model
trained here answers the very token sequences the engine, CLI and ROS node send.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from groma_ros.engine.preprocess import preprocess
from groma_ros.engine.prompts import PREFIX, PromptBuilder
from groma_ros.engine.types import Task
from groma_ros.model.configuration_groma import GromaTokenIds
from groma_ros.synthetic.scenes import COLORS, SHAPES, SIZES, Scene, SceneConfig, generate_scene, split_seeds
from groma_ros.synthetic.texts import TextSample, render

COLOR_NAMES = tuple(COLORS)
SIZE_NAMES = tuple(SIZES)
REFER_PLACEHOLDER = "{}"  # what the evaluation passes to the engine for a region-QA box


@dataclass
class SceneTensors:
    """One scene as tensors: normalized pixels, boxes (normalized cx, cy, w, h) and attribute labels."""

    seed: int
    pixels: torch.Tensor  # [3, S, S]
    boxes: torch.Tensor  # [N, 4] cx, cy, w, h in [0, 1]
    color: torch.Tensor  # [N]
    shape: torch.Tensor  # [N]
    size: torch.Tensor  # [N]

    def to(self, device: torch.device | str) -> SceneTensors:
        return SceneTensors(self.seed, *(t.to(device) for t in (self.pixels, self.boxes, self.color, self.shape,
                                                                 self.size)))


def scene_boxes_cxcywh(scene: Scene) -> torch.Tensor:
    """Object boxes normalized by the image size, as cx, cy, w, h (the model's box format)."""
    h, w = scene.image.shape[:2]
    b = torch.as_tensor(scene.boxes, dtype=torch.float32) / torch.tensor([w, h, w, h], dtype=torch.float32)
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


def scene_tensors(scene: Scene, image_size: int) -> SceneTensors:
    objs = scene.objects
    return SceneTensors(
        seed=scene.seed,
        pixels=preprocess(scene.image, image_size)[0],
        boxes=scene_boxes_cxcywh(scene),
        color=torch.tensor([COLOR_NAMES.index(o.color) for o in objs], dtype=torch.long),
        shape=torch.tensor([SHAPES.index(o.shape) for o in objs], dtype=torch.long),
        size=torch.tensor([SIZE_NAMES.index(o.size) for o in objs], dtype=torch.long),
    )


def train_scene(index: int, max_objects: int | None = None) -> Scene:
    """Train scene ``index``; with ``max_objects`` a simpler scene of the same seed (curriculum)."""
    seed = split_seeds("train", index + 1)[index]
    cfg = SceneConfig() if max_objects is None else SceneConfig(max_objects=max_objects)
    return generate_scene(seed, cfg)


# ---------------------------------------------------------------------------------- prompts

def engine_query(sample: TextSample) -> tuple[Task, str, int]:
    """(task, query, number of user boxes) exactly as the evaluation hands the sample to ``GromaEngine.ask``."""
    task = {"refer": Task.REFER, "refer_multi": Task.REFER, "grounded_caption": Task.GROUNDED_CAPTION,
            "region_qa": Task.REGION_QA, "vqa": Task.VQA}[sample.task]
    query = sample.query
    if task == Task.REGION_QA:
        query = query.replace("{refer0}", REFER_PLACEHOLDER)
    return task, query, len(sample.query_objects)


@dataclass
class EncodedSample:
    """Unexpanded ids (as the engine's tokenizer calls give them) and which ids are answer tokens."""

    ids: list[int]  # BOS + prefix + suffix + answer + </s>; <refer_box> still unreplaced
    answer_start: int  # index of the first answer id


@dataclass
class EncodedDialogue:
    """Unexpanded ids of a multi-turn conversation and where each turn's answer lies."""

    ids: list[int]  # BOS + prefix + (suffix + answer + </s>) per turn
    answers: list[tuple[int, int]]  # [start, end) of each turn's answer ids, its </s> included


class PromptEncoder:
    """Turns a ``TextSample`` + object->region map into ids, via the engine's prompt builder."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.builder = PromptBuilder()
        self._prefix: list[int] | None = None

    def encode(self, sample: TextSample, object_to_region: dict[int, int]) -> EncodedSample:
        enc = self.encode_dialogue([sample], object_to_region)
        return EncodedSample(enc.ids, enc.answers[0][0])

    def encode_dialogue(self, turns: list[TextSample], object_to_region: dict[int, int]) -> EncodedDialogue:
        """The conversation as the engine continues it: each turn's suffix (tokenized on its own, as the engine
        does) after the previous answer's ``</s>`` (conv_llava style 'two')."""
        if self._prefix is None:
            self._prefix = self.tok.encode(PREFIX)
        ids, answers = list(self._prefix), []
        for sample in turns:
            task, query, nboxes = engine_query(sample)
            built = self.builder.build(task, query, num_boxes=nboxes)
            ids += self.tok.encode(built.suffix, add_bos=False)
            _, answer = render(sample, object_to_region)
            # The original tokenizes "ASSISTANT: {answer}</s>" as one string; the space before the answer is
            # SentencePiece's "▁" (tags strip it), which ``continuation=True`` reproduces for the answer alone.
            answer_ids = self.tok.encode(" " + answer + "</s>", add_bos=False, continuation=True)
            answers.append((len(ids), len(ids) + len(answer_ids)))
            ids += answer_ids
        return EncodedDialogue(ids, answers)


def expand_ids(ids: list[int], t: GromaTokenIds, num_image_tokens: int, num_regions: int,
               refer_regions: list[int]) -> tuple[list[int], int]:
    """``GromaForConditionalGeneration.expand_input_ids`` for lists: returns (ids, offset added before the
    suffix), with ``<refer_box>`` -> ``<r k>`` for ``refer_regions`` in order."""
    out: list[int] = []
    refer = iter(refer_regions)
    for tok in ids:
        if tok == t.image:
            out.extend([t.image] * num_image_tokens)
        elif tok == t.region:
            for k in range(num_regions):
                out.extend((t.region_id(k), t.region))
        elif tok == t.refer_box:
            out.append(t.region_id(next(refer)))
        else:
            out.append(tok)
    return out, len(out) - len(ids)


def attribute_names() -> dict[str, tuple[str, ...]]:
    return {"color": COLOR_NAMES, "shape": SHAPES, "size": SIZE_NAMES}


def stack_pixels(items: list[SceneTensors]) -> torch.Tensor:
    return torch.stack([s.pixels for s in items])


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
