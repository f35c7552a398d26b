"""Synthetic scenes, task texts and metrics for training and evaluating the embedded tiny Groma.

``scenes``: seeded images of coloured shapes with exact boxes; ``texts``: samples for every task with
object-level placeholders; ``metrics``: numpy metrics and the evaluation table.
VOCABULARY.md lists every word used.
"""

from .metrics import EvalAccumulator, box_iou
from .scenes import Scene, SceneConfig, SceneObject, generate_scene, split_seeds
from .texts import TextConfig, TextSample, corpus_texts, generate_samples, render, resolve

__all__ = [
    "EvalAccumulator", "Scene", "SceneConfig", "SceneObject", "TextConfig", "TextSample", "box_iou",
    "corpus_texts", "generate_samples", "generate_scene", "render", "resolve", "split_seeds",
]
