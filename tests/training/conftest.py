"""Shared fixtures: a small tokenizer trained on a few synthetic scenes and an untrained tiny Groma."""

from __future__ import annotations

import pytest
import torch

from groma_ros.model.modeling_groma import GromaForConditionalGeneration
from groma_ros.training.recipe import tiny_groma_config
from groma_ros.training.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=400, corpus_scenes=30)


@pytest.fixture(scope="session")
def model(tokenizer):
    torch.manual_seed(0)
    return GromaForConditionalGeneration(tiny_groma_config(tokenizer.vocab_size)).eval()
