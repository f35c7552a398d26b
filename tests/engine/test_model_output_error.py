"""A model that outputs NaN gives one clear ``ModelOutputError`` from the engine, which the node answers as
MODEL_ERROR (never BAD_REQUEST, never an IndexError from region selection)."""

from __future__ import annotations

import copy

import pytest
import torch

from groma_ros.engine import GromaEngine, ModelOutputError
from groma_ros.model import ModelOutputError as ModelPackageError


@pytest.fixture(scope="module")
def broken_engine(engine):
    model = copy.deepcopy(engine.model)
    with torch.no_grad():
        model.perceiver.ddetr_transformer.class_embed_sa1b[-1].bias.fill_(float("nan"))
    return GromaEngine(model, engine.tokenizer)


def test_engine_raises_model_output_error_and_caches_nothing(broken_engine, image):
    assert ModelOutputError is ModelPackageError and not issubclass(ModelOutputError, ValueError)
    for task in ("refer", "detect", "vqa"):
        with pytest.raises(ModelOutputError, match="non-finite values"):
            broken_engine.ask(image, "where is the mug?", task=task, frame_id="f")
    assert len(broken_engine.frames) == 0  # a failed perception is not cached


def test_the_healthy_engine_still_answers(engine, image):
    assert engine.ask(image, "where is the mug?", task="refer", max_new_tokens=2).completion_tokens >= 1


def test_node_answers_model_error(broken_engine, image):
    from groma_ros.engine.types import Status
    from groma_ros.ros.node import _status_of

    with pytest.raises(ModelOutputError) as err:
        broken_engine.ask(image, "where is the mug?", task="refer")
    status, text = _status_of(err.value)
    assert status == Status.MODEL_ERROR and text.startswith("ModelOutputError: the region proposer produced non-finite")
